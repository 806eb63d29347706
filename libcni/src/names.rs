//! The rules for the strings a runtime hands us (network names, container IDs, interface
//! names) and the names we derive from them. Everything that reaches a file name, a
//! /proc/sys path, an nftables script or a kernel object name is built from values that
//! passed these checks, so no input can smuggle a '/', a quote or a newline into them.

use crate::spec::{code, Error};

/// The spec's rule for network names (and libcni's `ValidateNetworkName`): an
/// alphanumeric first character, then alphanumerics, '_', '.' or '-'.
pub fn is_network_name(name: &str) -> bool {
    is_plain_word(name)
}

/// The rule for container IDs (the spec's, and libcni's `ValidateContainerID`).
pub fn is_container_id(id: &str) -> bool {
    is_plain_word(id)
}

fn is_plain_word(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The kernel's rules for interface names (dev_valid_name): 1-15 bytes, not "." or "..",
/// no '/', ':' or whitespace.
pub fn is_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
}

pub fn network_name(name: &str) -> Result<&str, Error> {
    if is_network_name(name) {
        Ok(name)
    } else {
        Err(Error::config(format!("invalid network name {name:?}")).details(
            "a network name starts with a letter or digit, followed by letters, digits, '_', '.' or '-'",
        ))
    }
}

pub fn container_id(id: &str) -> Result<&str, Error> {
    if is_container_id(id) {
        Ok(id)
    } else {
        Err(
            Error::new(code::INVALID_ENV, "invalid characters in CNI_CONTAINERID")
                .details(format!("{id:?}")),
        )
    }
}

pub fn ifname(name: &str) -> Result<&str, Error> {
    if is_ifname(name) {
        Ok(name)
    } else {
        Err(
            Error::new(code::INVALID_ENV, "invalid interface name in CNI_IFNAME")
                .details(format!("{name:?}")),
        )
    }
}

/// FNV-1a over the parts with a separator: a stable short hash for names derived from
/// (network, containerID, ifname).
pub fn stable_hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

/// A validated name shortened to at most 60 bytes: kept whole when it fits, otherwise its
/// first 40 bytes, '~' (which no valid name contains) and a hash of the whole. Different
/// names give different parts, and labels built from two parts fit nft's 128-byte comments.
pub fn short_part(name: &str) -> String {
    const KEEP: usize = 60;
    if name.len() <= KEEP {
        name.to_string()
    } else {
        // 40 bytes, or fewer at a character boundary: GC's valid-attachments list is
        // not held to the container ID rule
        let cut = (0..=40)
            .rev()
            .find(|&i| name.is_char_boundary(i))
            .unwrap_or(0);
        format!("{}~{:016x}", &name[..cut], stable_hash(&[name]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_part_cuts_long_names_at_a_character_boundary() {
        let name = format!("{}é{}", "a".repeat(39), "b".repeat(30));
        let p = short_part(&name);
        assert!(p.starts_with(&"a".repeat(39)) && p.len() <= 60, "{p}");
        assert_ne!(
            p,
            short_part(&format!("{}é{}", "a".repeat(39), "c".repeat(30)))
        );
    }

    #[test]
    fn network_names_follow_the_spec() {
        for ok in ["a", "cni0", "my-net_1.2", "0abc"] {
            assert!(is_network_name(ok), "{ok}");
        }
        for bad in [
            "", "-a", ".a", "a/b", "a b", "a\"b", "a\nb", "ä", "a;b", "../x",
        ] {
            assert!(!is_network_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn ifnames_follow_the_kernel() {
        assert!(is_ifname("eth0") && is_ifname("a\"b") && is_ifname("x".repeat(15).as_str()));
        for bad in ["", ".", "..", "a/b", "a:b", "a b", &"x".repeat(16)] {
            assert!(!is_ifname(bad), "{bad:?}");
        }
    }

    #[test]
    fn short_parts_are_bounded_and_distinct() {
        let long_a = "a".repeat(300);
        let mut long_b = long_a.clone();
        long_b.push('b');
        assert_eq!(short_part("net"), "net");
        assert_eq!(short_part(&"x".repeat(60)), "x".repeat(60));
        assert!(short_part(&long_a).len() <= 60);
        assert_ne!(short_part(&long_a), short_part(&long_b));
        assert!(short_part(&long_a).contains('~'));
    }
}
