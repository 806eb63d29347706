//! Go's encoding/gob, as much of it as net/rpc needs: the reference's plugin and daemon
//! speak gob over their unix socket. Values are read into a generic tree (any type the
//! other side defines, fields matched by name as gob does) and written from the same
//! tree along a [`Schema`] we declare. Interfaces and complex numbers are refused.

use std::collections::HashMap;
use std::io::{Read, Write};

/// The largest gob message we read: a CNI config is at most 1 MiB.
const MAX_MESSAGE: u64 = 4 << 20;
/// Nesting deeper than this is not a CNI value.
const MAX_DEPTH: usize = 32;

/// A decoded gob value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    /// A string or a []byte (the same on the wire), or the payload of a type that
    /// marshals itself.
    Bytes(Vec<u8>),
    Struct(Vec<(String, Value)>),
    Slice(Vec<Value>),
    Map(Vec<(Value, Value)>),
}

impl Value {
    /// A field of a struct by name; `None` when absent (gob leaves zero values out).
    pub fn field(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Struct(fs) => fs.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A string field ("" when absent, as Go's zero value).
    pub fn str(&self, name: &str) -> String {
        match self.field(name) {
            Some(Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        }
    }

    pub fn bytes(&self, name: &str) -> Vec<u8> {
        match self.field(name) {
            Some(Value::Bytes(b)) => b.clone(),
            _ => Vec::new(),
        }
    }

    pub fn uint(&self, name: &str) -> u64 {
        match self.field(name) {
            Some(Value::Uint(u)) => *u,
            _ => 0,
        }
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        match self.field(name) {
            Some(Value::Int(i)) => Some(*i),
            _ => None,
        }
    }

    pub fn slice(&self, name: &str) -> &[Value] {
        match self.field(name) {
            Some(Value::Slice(v)) => v,
            _ => &[],
        }
    }

    pub fn string(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    fn is_zero(&self) -> bool {
        match self {
            Value::Bool(b) => !b,
            Value::Int(i) => *i == 0,
            Value::Uint(u) => *u == 0,
            Value::Float(f) => *f == 0.0,
            Value::Bytes(b) => b.is_empty(),
            Value::Slice(v) => v.is_empty(),
            Value::Map(v) => v.is_empty(),
            Value::Struct(_) => false,
        }
    }
}

#[derive(Debug)]
pub struct Error(pub String);

/// At most this many elements of a slice or map are reserved before they are read: a
/// count is a claim, and nested self-referencing types would multiply it.
const PREALLOCATED: usize = 1024;

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gob: {}", self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, Error> {
    Err(Error(msg.into()))
}

// Go's predefined type ids.
const T_BOOL: i64 = 1;
const T_INT: i64 = 2;
const T_UINT: i64 = 3;
const T_FLOAT: i64 = 4;
const T_BYTES: i64 = 5;
const T_STRING: i64 = 6;
const T_WIRE_TYPE: i64 = 16;
/// gobEncoderType has no id on the wire (it is only ever a field of wireType).
const T_GOB_ENCODER_TYPE: i64 = -1;
/// Ids we give our own types: above Go's predefined ones.
const FIRST_USER_ID: i64 = 65;

/// A type as the other side described it.
#[derive(Debug, Clone)]
enum WireType {
    Struct(Vec<(String, i64)>),
    Slice(i64),
    Array(i64),
    Map(i64, i64),
    /// Marshals itself (GobEncoder, BinaryMarshaler, TextMarshaler): a byte string.
    External,
}

/// The types every gob stream knows without being told: those that describe types.
fn bootstrap() -> HashMap<i64, WireType> {
    let s = |fs: &[(&str, i64)]| {
        WireType::Struct(fs.iter().map(|(n, t)| (n.to_string(), *t)).collect())
    };
    let g = T_GOB_ENCODER_TYPE;
    HashMap::from([
        (
            T_WIRE_TYPE,
            s(&[
                ("ArrayT", 17),
                ("SliceT", 19),
                ("StructT", 20),
                ("MapT", 23),
                ("GobEncoderT", g),
                ("BinaryMarshalerT", g),
                ("TextMarshalerT", g),
            ]),
        ),
        (
            17,
            s(&[("CommonType", 18), ("Elem", T_INT), ("Len", T_INT)]),
        ),
        (18, s(&[("Name", T_STRING), ("Id", T_INT)])),
        (19, s(&[("CommonType", 18), ("Elem", T_INT)])),
        (20, s(&[("CommonType", 18), ("Field", 22)])),
        (21, s(&[("Name", T_STRING), ("Id", T_INT)])),
        (22, WireType::Slice(21)),
        (
            23,
            s(&[("CommonType", 18), ("Key", T_INT), ("Elem", T_INT)]),
        ),
        (g, s(&[("CommonType", 18)])),
    ])
}

/// Reads gob values from one stream (the types it defines stay known for its life).
pub struct Decoder<R> {
    r: R,
    types: HashMap<i64, WireType>,
}

impl<R: Read> Decoder<R> {
    pub fn new(r: R) -> Self {
        Decoder {
            r,
            types: bootstrap(),
        }
    }

    /// The next value, after the type definitions that precede it.
    pub fn decode(&mut self) -> Result<Value, Error> {
        loop {
            let len = read_stream_uint(&mut self.r)?;
            if len == 0 || len > MAX_MESSAGE {
                return err(format!("message of {len} bytes"));
            }
            let mut buf = vec![0; len as usize];
            self.r
                .read_exact(&mut buf)
                .map_err(|e| Error(format!("reading a message: {e}")))?;
            let mut m = Msg { b: &buf, at: 0 };
            let id = m.int()?;
            if id < 0 {
                let w = m.value(&self.types, T_WIRE_TYPE, 0)?;
                let t = wire_type(&w)?;
                let id = id
                    .checked_neg()
                    .ok_or_else(|| Error(format!("type id {id}")))?;
                if id <= 23 {
                    return err(format!("redefinition of predefined type {id}"));
                }
                self.types.insert(id, t);
                continue;
            }
            if !matches!(self.types.get(&id), Some(WireType::Struct(_))) {
                // A value that is not a struct comes as the field 0 of a singleton.
                if m.uint()? != 0 {
                    return err("non-zero delta for singleton");
                }
            }
            return m.value(&self.types, id, 0);
        }
    }
}

/// Converts the generic reading of a wireType into a type.
fn wire_type(w: &Value) -> Result<WireType, Error> {
    let elem = |v: &Value| v.int("Elem").unwrap_or(0);
    if let Some(s) = w.field("StructT") {
        let fields = s
            .slice("Field")
            .iter()
            .map(|f| (f.str("Name"), f.int("Id").unwrap_or(0)))
            .collect();
        return Ok(WireType::Struct(fields));
    }
    if let Some(s) = w.field("SliceT") {
        return Ok(WireType::Slice(elem(s)));
    }
    if let Some(a) = w.field("ArrayT") {
        return Ok(WireType::Array(elem(a)));
    }
    if let Some(m) = w.field("MapT") {
        return Ok(WireType::Map(m.int("Key").unwrap_or(0), elem(m)));
    }
    if ["GobEncoderT", "BinaryMarshalerT", "TextMarshalerT"]
        .iter()
        .any(|k| w.field(k).is_some())
    {
        return Ok(WireType::External);
    }
    err("empty type definition")
}

/// One message's bytes being read.
struct Msg<'a> {
    b: &'a [u8],
    at: usize,
}

impl Msg<'_> {
    fn byte(&mut self) -> Result<u8, Error> {
        let b = *self
            .b
            .get(self.at)
            .ok_or(Error("message too short".into()))?;
        self.at += 1;
        Ok(b)
    }

    fn uint(&mut self) -> Result<u64, Error> {
        let first = self.byte()?;
        if first < 0x80 {
            return Ok(first as u64);
        }
        let n = (!first).wrapping_add(1) as usize;
        if n > 8 {
            return err(format!("integer of {n} bytes"));
        }
        let mut x = 0u64;
        for _ in 0..n {
            x = x << 8 | self.byte()? as u64;
        }
        Ok(x)
    }

    fn int(&mut self) -> Result<i64, Error> {
        let u = self.uint()?;
        Ok(if u & 1 == 1 {
            !(u >> 1) as i64
        } else {
            (u >> 1) as i64
        })
    }

    fn bytes(&mut self) -> Result<Vec<u8>, Error> {
        let n = self.uint()?;
        let end = self
            .at
            .checked_add(n as usize)
            .filter(|e| *e <= self.b.len() && n <= MAX_MESSAGE)
            .ok_or(Error("byte string past the message".into()))?;
        let v = self.b[self.at..end].to_vec();
        self.at = end;
        Ok(v)
    }

    /// A count of elements; each takes at least one byte, so no more than remain.
    fn count(&mut self) -> Result<usize, Error> {
        let n = self.uint()?;
        if n > (self.b.len() - self.at) as u64 {
            return err(format!("{n} elements in a short message"));
        }
        Ok(n as usize)
    }

    fn value(
        &mut self,
        types: &HashMap<i64, WireType>,
        id: i64,
        depth: usize,
    ) -> Result<Value, Error> {
        if depth > MAX_DEPTH {
            return err("value nested too deep");
        }
        Ok(match id {
            T_BOOL => Value::Bool(self.uint()? != 0),
            T_INT => Value::Int(self.int()?),
            T_UINT => Value::Uint(self.uint()?),
            T_FLOAT => Value::Float(f64::from_bits(self.uint()?.swap_bytes())),
            T_BYTES | T_STRING => Value::Bytes(self.bytes()?),
            _ => match types.get(&id) {
                None => return err(format!("unknown type id {id}")),
                Some(WireType::External) => Value::Bytes(self.bytes()?),
                Some(WireType::Slice(elem)) | Some(WireType::Array(elem)) => {
                    let n = self.count()?;
                    let mut v = Vec::with_capacity(n.min(PREALLOCATED));
                    for _ in 0..n {
                        v.push(self.value(types, *elem, depth + 1)?);
                    }
                    Value::Slice(v)
                }
                Some(WireType::Map(k, e)) => {
                    let n = self.count()?;
                    let mut v = Vec::with_capacity(n.min(PREALLOCATED));
                    for _ in 0..n {
                        let key = self.value(types, *k, depth + 1)?;
                        v.push((key, self.value(types, *e, depth + 1)?));
                    }
                    Value::Map(v)
                }
                Some(WireType::Struct(fields)) => {
                    let mut out = Vec::new();
                    let mut field: i64 = -1;
                    loop {
                        let delta = self.uint()?;
                        if delta == 0 {
                            break;
                        }
                        field = field.saturating_add(delta.min(i64::MAX as u64) as i64);
                        let Some((name, t)) =
                            usize::try_from(field).ok().and_then(|i| fields.get(i))
                        else {
                            return err(format!("field {field} of a struct with {}", fields.len()));
                        };
                        out.push((name.clone(), self.value(types, *t, depth + 1)?));
                    }
                    Value::Struct(out)
                }
            },
        })
    }
}

/// Reads the length that starts a message, byte by byte from the stream.
fn read_stream_uint(r: &mut impl Read) -> Result<u64, Error> {
    let mut one = [0u8; 1];
    let mut next = |r: &mut dyn Read| -> Result<u8, Error> {
        r.read_exact(&mut one)
            .map_err(|e| Error(format!("reading a message length: {e}")))?;
        Ok(one[0])
    };
    let first = next(r)?;
    if first < 0x80 {
        return Ok(first as u64);
    }
    let n = (!first).wrapping_add(1);
    if n > 8 {
        return err(format!("message length of {n} bytes"));
    }
    let mut x = 0u64;
    for _ in 0..n {
        x = x << 8 | next(r)? as u64;
    }
    Ok(x)
}

/// The shape of a value we send.
#[derive(Debug, Clone)]
pub enum Schema {
    Int,
    Uint,
    Bytes,
    String,
    Struct(&'static str, Vec<(&'static str, Schema)>),
    Slice(Box<Schema>),
}

impl Schema {
    fn key(&self) -> String {
        match self {
            Schema::Struct(n, _) => n.to_string(),
            Schema::Slice(e) => format!("[]{}", e.key()),
            other => format!("{other:?}"),
        }
    }
}

/// Writes gob values on one stream, defining each of our types the first time it is used.
pub struct Encoder<W> {
    w: W,
    ids: HashMap<String, i64>,
    next: i64,
}

impl<W: Write> Encoder<W> {
    pub fn new(w: W) -> Self {
        Encoder {
            w,
            ids: HashMap::new(),
            next: FIRST_USER_ID,
        }
    }

    pub fn encode(&mut self, schema: &Schema, v: &Value) -> Result<(), Error> {
        let id = self.type_id(schema)?;
        let mut m = Vec::new();
        put_int(&mut m, id);
        if !matches!(schema, Schema::Struct(..)) {
            put_uint(&mut m, 0);
        }
        put_value(&mut m, schema, v)?;
        self.message(&m)
    }

    pub fn flush(&mut self) -> Result<(), Error> {
        self.w.flush().map_err(|e| Error(format!("writing: {e}")))
    }

    fn message(&mut self, m: &[u8]) -> Result<(), Error> {
        let mut out = Vec::with_capacity(m.len() + 9);
        put_uint(&mut out, m.len() as u64);
        out.extend_from_slice(m);
        self.w
            .write_all(&out)
            .map_err(|e| Error(format!("writing: {e}")))
    }

    /// The id of a schema, sending its definition (after those of its parts) when new.
    fn type_id(&mut self, s: &Schema) -> Result<i64, Error> {
        match s {
            Schema::Int => return Ok(T_INT),
            Schema::Uint => return Ok(T_UINT),
            Schema::Bytes => return Ok(T_BYTES),
            Schema::String => return Ok(T_STRING),
            _ => {}
        }
        let key = s.key();
        if let Some(id) = self.ids.get(&key) {
            return Ok(*id);
        }
        let id = self.next;
        self.next += 1;
        self.ids.insert(key.clone(), id);
        let common = |name: &str| {
            Value::Struct(vec![
                ("Name".into(), Value::string(name)),
                ("Id".into(), Value::Int(id)),
            ])
        };
        let (slot, body) = match s {
            Schema::Slice(elem) => {
                let e = self.type_id(elem)?;
                (
                    "SliceT",
                    Value::Struct(vec![
                        ("CommonType".into(), common(&key)),
                        ("Elem".into(), Value::Int(e)),
                    ]),
                )
            }
            Schema::Struct(name, fields) => {
                let mut fs = Vec::new();
                for (fname, fschema) in fields {
                    let fid = self.type_id(fschema)?;
                    fs.push(Value::Struct(vec![
                        ("Name".into(), Value::string(fname)),
                        ("Id".into(), Value::Int(fid)),
                    ]));
                }
                (
                    "StructT",
                    Value::Struct(vec![
                        ("CommonType".into(), common(name)),
                        ("Field".into(), Value::Slice(fs)),
                    ]),
                )
            }
            _ => unreachable!("basic types returned above"),
        };
        let mut m = Vec::new();
        put_int(&mut m, -id);
        put_value(
            &mut m,
            &wire_type_schema(),
            &Value::Struct(vec![(slot.into(), body)]),
        )?;
        self.message(&m)?;
        Ok(id)
    }
}

/// wireType's own shape, to write type definitions with the value writer.
fn wire_type_schema() -> Schema {
    let common = || {
        (
            "CommonType",
            Schema::Struct(
                "CommonType",
                vec![("Name", Schema::String), ("Id", Schema::Int)],
            ),
        )
    };
    let field = Schema::Struct(
        "fieldType",
        vec![("Name", Schema::String), ("Id", Schema::Int)],
    );
    Schema::Struct(
        "wireType",
        vec![
            ("ArrayT", Schema::Struct("arrayType", vec![])),
            (
                "SliceT",
                Schema::Struct("sliceType", vec![common(), ("Elem", Schema::Int)]),
            ),
            (
                "StructT",
                Schema::Struct(
                    "structType",
                    vec![common(), ("Field", Schema::Slice(Box::new(field)))],
                ),
            ),
            ("MapT", Schema::Struct("mapType", vec![])),
            (
                "GobEncoderT",
                Schema::Struct("gobEncoderType", vec![common()]),
            ),
            (
                "BinaryMarshalerT",
                Schema::Struct("gobEncoderType", vec![common()]),
            ),
            (
                "TextMarshalerT",
                Schema::Struct("gobEncoderType", vec![common()]),
            ),
        ],
    )
}

fn put_uint(out: &mut Vec<u8>, x: u64) {
    if x < 0x80 {
        out.push(x as u8);
        return;
    }
    let bytes = x.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    out.push((skip as u8).wrapping_sub(8));
    out.extend_from_slice(&bytes[skip..]);
}

fn put_int(out: &mut Vec<u8>, i: i64) {
    let u = if i < 0 {
        (!(i as u64)) << 1 | 1
    } else {
        (i as u64) << 1
    };
    put_uint(out, u);
}

/// Writes `v` as `s` says; a struct's absent or zero fields are left out, as gob does.
fn put_value(out: &mut Vec<u8>, s: &Schema, v: &Value) -> Result<(), Error> {
    match (s, v) {
        (Schema::Int, Value::Int(i)) => put_int(out, *i),
        (Schema::Uint, Value::Uint(u)) => put_uint(out, *u),
        (Schema::Bytes | Schema::String, Value::Bytes(b)) => {
            put_uint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
        (Schema::Slice(e), Value::Slice(items)) => {
            put_uint(out, items.len() as u64);
            for i in items {
                put_value(out, e, i)?;
            }
        }
        (Schema::Struct(_, fields), Value::Struct(_)) => {
            let mut last: i64 = -1;
            for (i, (name, fs)) in fields.iter().enumerate() {
                match v.field(name) {
                    Some(fv) if !fv.is_zero() => {
                        put_uint(out, (i as i64 - last) as u64);
                        put_value(out, fs, fv)?;
                        last = i as i64;
                    }
                    _ => {}
                }
            }
            put_uint(out, 0);
        }
        _ => return err(format!("a {v:?} does not fit {}", s.key())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_schema() -> Schema {
        Schema::Struct(
            "Request",
            vec![("ServiceMethod", Schema::String), ("Seq", Schema::Uint)],
        )
    }

    #[test]
    fn what_we_write_reads_back() {
        let ip = Schema::Bytes;
        let s = Schema::Struct(
            "Outer",
            vec![
                ("Name", Schema::String),
                ("N", Schema::Int),
                ("IPs", Schema::Slice(Box::new(ip))),
                ("Raw", Schema::Bytes),
            ],
        );
        let v = Value::Struct(vec![
            ("Name".into(), Value::string("x")),
            ("N".into(), Value::Int(-300)),
            (
                "IPs".into(),
                Value::Slice(vec![Value::string("10.0.0.1"), Value::string("::1")]),
            ),
            ("Raw".into(), Value::Bytes(vec![0; 200])),
        ]);
        let mut buf = Vec::new();
        let mut e = Encoder::new(&mut buf);
        e.encode(
            &request_schema(),
            &Value::Struct(vec![("Seq".into(), Value::Uint(70000))]),
        )
        .unwrap();
        e.encode(&s, &v).unwrap();
        e.encode(&s, &v).unwrap();
        let mut d = Decoder::new(&buf[..]);
        assert_eq!(d.decode().unwrap().uint("Seq"), 70000);
        assert_eq!(d.decode().unwrap(), v);
        assert_eq!(d.decode().unwrap(), v);
    }

    /// The bytes Go 1.19's gob writes for rpc.Request{ServiceMethod: "DHCP.Allocate", Seq: 0}.
    #[test]
    fn reads_what_go_writes() {
        let go: &[u8] = &[
            0x2f, 0xff, 0x81, 0x03, 0x01, 0x01, 0x07, 0x52, 0x65, 0x71, 0x75, 0x65, 0x73, 0x74,
            0x01, 0xff, 0x82, 0x00, 0x01, 0x02, 0x01, 0x0d, 0x53, 0x65, 0x72, 0x76, 0x69, 0x63,
            0x65, 0x4d, 0x65, 0x74, 0x68, 0x6f, 0x64, 0x01, 0x0c, 0x00, 0x01, 0x03, 0x53, 0x65,
            0x71, 0x01, 0x06, 0x00, 0x00, 0x00, 0x12, 0xff, 0x82, 0x01, 0x0d, 0x44, 0x48, 0x43,
            0x50, 0x2e, 0x41, 0x6c, 0x6c, 0x6f, 0x63, 0x61, 0x74, 0x65, 0x00,
        ];
        let v = Decoder::new(go).decode().unwrap();
        assert_eq!(v.str("ServiceMethod"), "DHCP.Allocate");
        assert_eq!(v.uint("Seq"), 0);
    }

    /// Random bytes, and a real stream with bytes flipped: errors or values, never a
    /// panic or a hang.
    #[test]
    fn any_bytes_decode_or_fail() {
        let mut real = Vec::new();
        let mut e = Encoder::new(&mut real);
        let s = Schema::Struct(
            "T",
            vec![
                ("A", Schema::Slice(Box::new(request_schema()))),
                ("B", Schema::Bytes),
            ],
        );
        let item = Value::Struct(vec![("ServiceMethod".into(), Value::string("x"))]);
        let v = Value::Struct(vec![
            ("A".into(), Value::Slice(vec![item.clone(), item])),
            ("B".into(), Value::Bytes(vec![1, 2, 3])),
        ]);
        e.encode(&s, &v).unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut b = real.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() % b.len() as u64) as usize;
                b[i] = next() as u8;
            }
            let _ = Decoder::new(&b[..]).decode();
            let random: Vec<u8> = (0..next() % 64).map(|_| next() as u8).collect();
            let _ = Decoder::new(&random[..]).decode();
        }
    }

    /// A type definition whose id is i64::MIN (gob: 0xF8 then eight 0xFF) is refused,
    /// not negated into an overflow.
    #[test]
    fn the_most_negative_type_id_is_an_error() {
        let mut out = Vec::new();
        let schema = Schema::Slice(Box::new(Schema::String));
        (Encoder::new(&mut out).encode(&schema, &Value::Slice(vec![]))).unwrap();
        // The first message defines the slice type: length, then its id -65 as 0xFF 0x81.
        let len = out[0] as usize;
        assert!(len < 0x80 && out[1..3] == [0xFF, 0x81], "{out:?}");
        let mut msg = vec![0xF8];
        msg.extend([0xFF; 8]);
        msg.extend(&out[3..1 + len]);
        let mut stream = vec![msg.len() as u8];
        stream.extend(msg);
        let e = Decoder::new(&stream[..]).decode().unwrap_err();
        assert!(e.0.contains("type id"), "{}", e.0);
    }

    #[test]
    fn hostile_bytes_are_errors() {
        for b in [
            &[0xf0u8][..],
            &[0x05, 0x02, 0x01][..],
            &[0x7f, 0x00][..],
            &[0x03, 0xff, 0x81, 0x00][..],
        ] {
            assert!(Decoder::new(b).decode().is_err(), "{b:?}");
        }
    }
}
