//! Reading JSON the way Go's encoding/json reads it, which is what every config,
//! capability argument and prevResult we get was written for: an object key matches a
//! struct field exactly or, failing that, ignoring ASCII case (containerd passes port
//! mappings as `HostPort`, a hand-written config may say `bandWidth`), and `null` means
//! "not given" (Go writes `"routes": null` for an empty list). One mechanism for every
//! field of every plugin: a serde Deserializer over a `serde_json::Value` that maps keys
//! onto the field names serde asks for and drops null members.

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use serde::forward_to_deserialize_any;
use serde_json::{Map, Value};

type Error = serde_json::Error;

/// Decodes `v` into `T` with Go's matching rules.
pub fn from_value<T: DeserializeOwned>(v: &Value) -> Result<T, Error> {
    T::deserialize(GoValue(v))
}

/// A borrowed JSON value read with Go's rules.
#[derive(Clone, Copy)]
struct GoValue<'a>(&'a Value);

impl<'de, 'a> de::Deserializer<'de> for GoValue<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(items) => visitor.visit_seq(Seq(items.iter())),
            Value::Object(map) => visitor.visit_map(Members::all(map)),
            other => other.clone().deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    /// Go decodes null into a slice as an empty one.
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_seq(Seq([].iter())),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_map(Members::all(&Map::new())),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(map) => visitor.visit_map(Members::for_fields(map, fields)),
            Value::Null => visitor.visit_map(Members::all(&Map::new())),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.0.clone().deserialize_enum(name, variants, visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct tuple tuple_struct identifier
    }
}

struct Seq<'a>(std::slice::Iter<'a, Value>);

impl<'de, 'a> SeqAccess<'de> for Seq<'a> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.0
            .next()
            .map(|v| seed.deserialize(GoValue(v)))
            .transpose()
    }
}

/// An object's members as serde sees them: for a struct, keys renamed to the field they
/// match and null members left out.
struct Members<'a> {
    entries: std::vec::IntoIter<(String, &'a Value)>,
    value: Option<&'a Value>,
}

impl<'a> Members<'a> {
    fn all(map: &'a Map<String, Value>) -> Members<'a> {
        let entries: Vec<_> = map.iter().map(|(k, v)| (k.clone(), v)).collect();
        Members {
            entries: entries.into_iter(),
            value: None,
        }
    }

    fn for_fields(map: &'a Map<String, Value>, fields: &[&str]) -> Members<'a> {
        let mut entries: Vec<(String, &Value)> = Vec::new();
        for (key, value) in map {
            if value.is_null() {
                continue;
            }
            let field = if fields.contains(&key.as_str()) {
                key.as_str()
            } else {
                match fields.iter().find(|f| f.eq_ignore_ascii_case(key)) {
                    // The exact spelling, when also present, wins.
                    Some(f) if map.get(*f).is_some_and(|v| !v.is_null()) => continue,
                    Some(f) => f,
                    None => key.as_str(),
                }
            };
            entries.push((field.to_string(), value));
        }
        Members {
            entries: entries.into_iter(),
            value: None,
        }
    }
}

impl<'de, 'a> MapAccess<'de> for Members<'a> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.entries.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(k.into_deserializer()).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let v = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("value asked before its key"))?;
        seed.deserialize(GoValue(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Mapping {
        host_port: u16,
        #[serde(default)]
        protocol: String,
        #[serde(default, rename = "hostIP")]
        host_ip: String,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Conf {
        #[serde(default)]
        port_mappings: Vec<Mapping>,
        #[serde(default)]
        routes: Vec<String>,
        #[serde(default)]
        mtu: Option<u32>,
        #[serde(default)]
        sysctl: BTreeMap<String, String>,
    }

    #[test]
    fn go_field_names_and_nulls() {
        let c: Conf = from_value(&json!({
            "PortMappings": [{"HostPort": 8080, "Protocol": "tcp", "HostIP": ""}],
            "routes": null,
            "MTU": null,
            "sysctl": {"Net.Core.X": "1"}
        }))
        .unwrap();
        assert_eq!(c.port_mappings[0].host_port, 8080);
        assert_eq!(c.port_mappings[0].protocol, "tcp");
        assert!(c.routes.is_empty() && c.mtu.is_none());
        // map keys are data, not field names
        assert_eq!(c.sysctl["Net.Core.X"], "1");
    }

    #[test]
    fn exact_spelling_wins_and_wrong_types_still_fail() {
        let c: Mapping = from_value(&json!({"hostPort": 1, "HOSTPORT": 2})).unwrap();
        assert_eq!(c.host_port, 1);
        assert!(from_value::<Mapping>(&json!({"hostPort": "x"})).is_err());
        assert!(from_value::<Mapping>(&json!({})).is_err());
        assert!(from_value::<Mapping>(&json!({"hostPort": null})).is_err());
    }
}
