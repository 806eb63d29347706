//! What nf_tables' messages share: names as nf_tables takes them, data values, lists,
//! and the comments nft keeps in an object's user data. Used by the messages
//! ([`super`]) and the rules' expressions ([`super::rule`]).

use std::io;

use crate::net::nlattr::attribute;

pub const NFTA_LIST_ELEM: u16 = 1;
pub const NFTA_DATA_VALUE: u16 = 1;
/// libnftnl's user data type of a rule's or an element's comment, which `nft list` shows.
const UDATA_COMMENT: u8 = 0;
/// nft's own limit on a comment.
const COMMENT_MAX: usize = 128;

pub fn string_attr(buf: &[u8], kind: u16) -> Option<String> {
    let v = attribute(buf, kind)?;
    String::from_utf8(v.strip_suffix(b"\0").unwrap_or(v).to_vec()).ok()
}

pub fn nul_terminated(s: &str) -> io::Result<Vec<u8>> {
    if s.is_empty() || s.len() > 255 || s.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?} cannot name an nftables object"),
        ));
    }
    Ok([s.as_bytes(), b"\0"].concat())
}

/// User data holding `text` as the comment nft shows.
pub fn comment_udata(text: &str) -> io::Result<Vec<u8>> {
    let bytes = nul_terminated(text)?;
    if text.len() > COMMENT_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("comment {text:?} is longer than {COMMENT_MAX} bytes"),
        ));
    }
    let mut udata = vec![UDATA_COMMENT, bytes.len() as u8];
    udata.extend_from_slice(&bytes);
    Ok(udata)
}

/// The comment in an object's user data (libnftnl's type-length-value records).
pub fn comment(mut udata: &[u8]) -> Option<String> {
    while udata.len() >= 2 {
        let (kind, len) = (udata[0], udata[1] as usize);
        let value = udata.get(2..2 + len)?;
        if kind == UDATA_COMMENT {
            let text = value.strip_suffix(b"\0").unwrap_or(value);
            return String::from_utf8(text.to_vec()).ok();
        }
        udata = &udata[2 + len..];
    }
    None
}
