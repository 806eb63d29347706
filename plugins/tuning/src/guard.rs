//! What the reference (v1.2+) refuses in a tuning config's sysctls before touching
//! anything: a key given twice in the config's `sysctl` object (JSON keeps only one, so
//! this reads the raw input), and, where the node has `/etc/cni/tuning/allowlist.conf`,
//! a key that matches none of its regular expressions (one per line, unanchored).

use std::collections::HashSet;
use std::fmt;
use std::io::Read;

use libcni::Error;
use regex::Regex;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

pub const ALLOWLIST: &str = "/etc/cni/tuning/allowlist.conf";
/// A longer allowlist is not one; refused rather than read whole.
const MAX_ALLOWLIST: u64 = 1 << 20;
const DUPLICATE: &str = "duplicated sysctl keys are not allowed";

/// Refuses a sysctl key given twice in the top-level `sysctl` object (any letter case of
/// the name, as Go matches it: all its occurrences feed one map).
pub fn no_duplicate_keys(stdin: &[u8]) -> Result<(), Error> {
    let mut de = serde_json::Deserializer::from_slice(stdin);
    match de.deserialize_map(TopLevel) {
        Ok(()) => Ok(()),
        Err(e) if e.to_string().starts_with(DUPLICATE) => Err(Error::config(DUPLICATE)),
        // Not a JSON object: the config reader has already said so.
        Err(_) => Ok(()),
    }
}

struct TopLevel;

impl<'de> Visitor<'de> for TopLevel {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a network config object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if key.eq_ignore_ascii_case("sysctl") {
                map.next_value_seed(Keys(&mut seen))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// One `sysctl` object's keys, added to those seen before.
struct Keys<'s>(&'s mut HashSet<String>);

impl<'de> serde::de::DeserializeSeed<'de> for Keys<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Keys<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sysctl object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if !self.0.insert(key) {
                return Err(serde::de::Error::custom(DUPLICATE));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    // null or another type: not ours to judge here.
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// Refuses the sysctl keys the node's allowlist (at `path`) does not match; no file means
/// no restriction.
pub fn allowed<'k>(keys: impl Iterator<Item = &'k String>, path: &str) -> Result<(), Error> {
    let text = match std::fs::File::open(path) {
        Ok(f) => {
            let mut text = String::new();
            f.take(MAX_ALLOWLIST + 1)
                .read_to_string(&mut text)
                .map_err(|e| Error::config(format!("reading {path}: {e}")))?;
            if text.len() as u64 > MAX_ALLOWLIST {
                return Err(Error::config(format!(
                    "{path} is over {MAX_ALLOWLIST} bytes"
                )));
            }
            text
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::config(format!("reading {path}: {e}"))),
    };
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let patterns = lines
        .iter()
        .map(|l| Regex::new(l).map_err(|e| Error::config(format!("{path}: pattern {l:?}: {e}"))))
        .collect::<Result<Vec<_>, Error>>()?;
    for key in keys {
        if !patterns.iter().any(|p| p.is_match(key)) {
            return Err(Error::config(format!(
                "Sysctl {key} is not allowed. Only the following sysctls are allowed: [{}]",
                lines.join(" ")
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_in_any_sysctl_object_are_refused() {
        let ok = br#"{"sysctl": {"a": "1", "b": "1"}, "x": {"a": 1, "a": 2}}"#;
        assert!(no_duplicate_keys(ok).is_ok());
        for bad in [
            &br#"{"sysctl": {"a": "1", "a": "2"}}"#[..],
            br#"{"sysctl": {"a": "1"}, "Sysctl": {"a": "2"}}"#,
        ] {
            assert_eq!(no_duplicate_keys(bad).unwrap_err().msg, DUPLICATE);
        }
        assert!(no_duplicate_keys(br#"{"sysctl": null}"#).is_ok());
        assert!(no_duplicate_keys(b"[1]").is_ok());
    }

    #[test]
    fn allowlist_matches_unanchored_and_absent_allows_all() {
        let dir = std::env::temp_dir().join(format!("tuning-allow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("allowlist.conf");
        let path = file.to_str().unwrap();
        let keys = ["net.ipv4.conf.IFNAME.arp_filter".to_string()];
        assert!(allowed(keys.iter(), path).is_ok());
        std::fs::write(&file, "\n  ^net\\.ipv4\\.conf\\.IFNAME\\.[a-z_]*$ \n").unwrap();
        assert!(allowed(keys.iter(), path).is_ok());
        let other = ["net.core.somaxconn".to_string()];
        let e = allowed(other.iter(), path).unwrap_err();
        assert!(
            e.msg
                .starts_with("Sysctl net.core.somaxconn is not allowed."),
            "{}",
            e.msg
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
