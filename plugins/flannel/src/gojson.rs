//! JSON written byte for byte as Go's encoding/json writes what flannel's plugin marshals,
//! so the scratch file we save for a container is the one flannel's Go plugin saves for
//! the same input: a map's keys sorted, a struct's fields in declaration order, compact,
//! `<`, `>`, `&`, U+2028 and U+2029 escaped, and a number read into `interface{}` (a
//! float64 in Go) printed as Go prints a float64. Numbers that Go keeps as integers (the
//! MTU, a route's fields) stay integers here.

use serde_json::{Map, Number, Value};

/// `v` with every number made a float64, as Go's json.Unmarshal into `interface{}` does
/// (so 9007199254740993 prints as 9007199254740992, as flannel writes it).
pub fn as_go_floats(v: Value) -> Value {
    match v {
        Value::Number(n) => n
            .as_f64()
            .and_then(Number::from_f64)
            .map_or(Value::Null, Value::Number),
        Value::Array(items) => Value::Array(items.into_iter().map(as_go_floats).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, as_go_floats(v))).collect())
        }
        other => other,
    }
}

/// A value to write: JSON, or a Go struct (fields in their order, empty ones already left
/// out by the caller as `omitempty` does).
pub enum Go<'a> {
    Json(&'a Value),
    Map(Vec<(&'a str, Go<'a>)>),
    Struct(Vec<(&'static str, Value)>),
    List(Vec<Go<'a>>),
}

pub fn marshal(v: &Go) -> Vec<u8> {
    let mut out = String::new();
    write(&mut out, v);
    out.into_bytes()
}

fn write(out: &mut String, v: &Go) {
    match v {
        Go::Json(v) => write_json(out, v),
        Go::Map(entries) => {
            let mut sorted: Vec<&(&str, Go)> = entries.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            write_members(out, sorted.into_iter().map(|(k, v)| (*k, v)), write);
        }
        Go::Struct(fields) => {
            write_members(out, fields.iter().map(|(k, v)| (*k, v)), write_json);
        }
        Go::List(items) => write_list(out, items, write),
    }
}

fn write_list<T>(out: &mut String, items: &[T], item: fn(&mut String, &T)) {
    out.push('[');
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        item(out, v);
    }
    out.push(']');
}

fn write_members<'a, T: 'a + ?Sized>(
    out: &mut String,
    members: impl Iterator<Item = (&'a str, &'a T)>,
    value: fn(&mut String, &T),
) {
    out.push('{');
    for (i, (k, v)) in members.enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, k);
        out.push(':');
        value(out, v);
    }
    out.push('}');
}

fn write_json(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => write_list(out, items, write_json),
        Value::Object(map) => write_object(out, map),
    }
}

/// serde_json's map is sorted already unless a crate turns on preserve_order: sort anyway.
fn write_object(out: &mut String, map: &Map<String, Value>) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    write_members(
        out,
        keys.into_iter().map(|k| (k.as_str(), &map[k])),
        write_json,
    );
}

fn write_number(out: &mut String, n: &Number) {
    if let Some(i) = n.as_i64() {
        out.push_str(&i.to_string());
    } else if let Some(u) = n.as_u64() {
        out.push_str(&u.to_string());
    } else if let Some(f) = n.as_f64() {
        out.push_str(&go_float(f));
    }
}

/// A float64 as encoding/json prints it: the shortest representation that reads back,
/// fixed-point from 1e-6 up to 1e21, else exponent form with a sign and at least one
/// exponent digit after any minus (`1e+21`, `1e-7`).
fn go_float(f: f64) -> String {
    let abs = f.abs();
    if abs == 0.0 || (1e-6..1e21).contains(&abs) {
        return format!("{f}");
    }
    let e = format!("{f:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    match exp.strip_prefix('-') {
        Some(neg) => format!("{mantissa}e-{neg}"),
        None if exp.len() < 2 => format!("{mantissa}e+0{exp}"),
        None => format!("{mantissa}e+{exp}"),
    }
}

fn write_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{0}'..='\u{1f}' => {
                let b = c as u8;
                out.push_str("\\u00");
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 0xf) as usize] as char);
            }
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn go(v: Value) -> String {
        String::from_utf8(marshal(&Go::Json(&as_go_floats(v)))).unwrap()
    }

    #[test]
    fn as_go_marshals_a_decoded_map() {
        assert_eq!(
            go(json!({"z": 1, "a": [true, null, "x"], "m": {"b": 2.5, "a": {}}})),
            r#"{"a":[true,null,"x"],"m":{"a":{},"b":2.5},"z":1}"#
        );
        assert_eq!(
            go(json!("<a href=\"x\">&\u{2028}\n\u{1}\u{8}\u{7f}é")),
            r#""\u003ca href=\"x\"\u003e\u0026\u2028\n\u0001\b"#.to_string() + "\u{7f}é\""
        );
    }

    #[test]
    fn numbers_as_go_prints_float64() {
        for (n, want) in [
            (json!(1450), "1450"),
            (json!(-0.5), "-0.5"),
            (json!(0.000001), "0.000001"),
            (json!(0.0000001), "1e-7"),
            (json!(1.5e-10), "1.5e-10"),
            (json!(1e20), "100000000000000000000"),
            (json!(1e21), "1e+21"),
            (json!(123456789e30), "1.23456789e+38"),
            (json!(9007199254740993u64), "9007199254740992"),
            (json!(u64::MAX), "18446744073709552000"),
        ] {
            assert_eq!(go(n.clone()), want, "{n}");
        }
        // integers Go keeps as int stay exact
        assert_eq!(
            String::from_utf8(marshal(&Go::Json(&json!(i64::MAX)))).unwrap(),
            "9223372036854775807"
        );
    }

    #[test]
    fn structs_keep_their_field_order_maps_sort() {
        let list = Go::List(vec![Go::Struct(vec![
            ("dst", json!("10.0.0.0/8")),
            ("gw", json!("10.0.0.1")),
            ("mtu", json!(1400)),
        ])]);
        let inner = json!({"y": 1});
        let v = Go::Map(vec![("routes", list), ("b", Go::Json(&inner))]);
        assert_eq!(
            String::from_utf8(marshal(&v)).unwrap(),
            r#"{"b":{"y":1},"routes":[{"dst":"10.0.0.0/8","gw":"10.0.0.1","mtu":1400}]}"#
        );
    }
}
