//! Reads one named section of an ELF file without loading it: the header, the section
//! header table and the section names, each bounded. Used to find the build ID our
//! binaries carry (`delegate::Linked`); the file is whatever sits on CNI_PATH, so
//! anything malformed is simply "no such section".

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Section header tables and name tables larger than this are not ours.
const MAX_TABLE: u64 = 1 << 20;

/// The contents of the section `name` of the 64-bit little-endian ELF file at `path`,
/// when it holds exactly `N` bytes.
pub fn section<const N: usize>(path: &Path, name: &str) -> Option<[u8; N]> {
    // Non-blocking: a FIFO planted on the path cannot hold us.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let header: [u8; 64] = read_at(&file, 0)?;
    // \x7fELF, 64-bit, little-endian.
    if header[..6] != [0x7f, b'E', b'L', b'F', 2, 1] {
        return None;
    }
    let shoff = u64_at(&header, 0x28)?;
    let shentsize = u64::from(u16_at(&header, 0x3a)?);
    let shnum = u64::from(u16_at(&header, 0x3c)?);
    let shstrndx = u64::from(u16_at(&header, 0x3e)?);
    if shentsize != 64 || shstrndx >= shnum || shnum * 64 > MAX_TABLE {
        return None;
    }
    let mut table = vec![0u8; (shnum * 64) as usize];
    file.read_exact_at(&mut table, shoff).ok()?;
    let entry = |i: u64| table.get((i * 64) as usize..(i * 64 + 64) as usize);
    // (name offset, file offset, size) of a section header.
    let fields = |e: &[u8]| Some((u64::from(u32_at(e, 0)?), u64_at(e, 0x18)?, u64_at(e, 0x20)?));
    let (_, names_off, names_len) = fields(entry(shstrndx)?)?;
    if names_len > MAX_TABLE {
        return None;
    }
    let mut names = vec![0u8; names_len as usize];
    file.read_exact_at(&mut names, names_off).ok()?;
    let named = |at: u64| {
        let rest = names.get(at as usize..)?;
        rest.split(|b| *b == 0).next()
    };
    (0..shnum).find_map(|i| {
        let (at, off, size) = fields(entry(i)?)?;
        (named(at)? == name.as_bytes() && size == N as u64)
            .then(|| read_at(&file, off))
            .flatten()
    })
}

fn read_at<const N: usize>(file: &File, offset: u64) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    file.read_exact_at(&mut buf, offset).ok()?;
    Some(buf)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 file: header, a name table and one data section, then the section
    /// header table (null, names, data).
    fn elf(name: &str, data: &[u8]) -> Vec<u8> {
        let mut names = b"\0.shstrtab\0".to_vec();
        let name_at = names.len() as u32;
        names.extend_from_slice(name.as_bytes());
        names.push(0);
        let names_off = 64u64;
        let data_off = names_off + names.len() as u64;
        let shoff = data_off + data.len() as u64;
        let mut f = vec![0u8; 64];
        f[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        f[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        f.extend_from_slice(&names);
        f.extend_from_slice(data);
        let header = |name: u32, off: u64, size: u64| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&off.to_le_bytes());
            h[0x20..0x28].copy_from_slice(&size.to_le_bytes());
            h
        };
        f.extend(header(0, 0, 0));
        f.extend(header(1, names_off, names.len() as u64));
        f.extend(header(name_at, data_off, data.len() as u64));
        f
    }

    fn written(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        f
    }

    #[test]
    fn a_named_section_of_the_asked_size_is_read() {
        let f = written(&elf(".cni_rs_build", b"0123456789abcdef"));
        assert_eq!(
            section::<16>(f.path(), ".cni_rs_build"),
            Some(*b"0123456789abcdef")
        );
        assert_eq!(section::<16>(f.path(), ".other"), None);
        assert_eq!(section::<8>(f.path(), ".cni_rs_build"), None);
    }

    #[test]
    fn anything_but_a_whole_elf_file_has_no_section() {
        let whole = elf(".cni_rs_build", b"0123456789abcdef");
        for cut in [0, 5, 63, 64, 80, whole.len() - 1] {
            let f = written(&whole[..cut]);
            assert_eq!(
                section::<16>(f.path(), ".cni_rs_build"),
                None,
                "cut at {cut}"
            );
        }
        let f = written(b"#!/bin/sh\nexec true\n");
        assert_eq!(section::<16>(f.path(), ".cni_rs_build"), None);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(section::<16>(dir.path(), ".cni_rs_build"), None);
        assert_eq!(
            section::<16>(&dir.path().join("absent"), ".cni_rs_build"),
            None
        );
        // Offsets past the end and absurd counts, in every header field.
        for at in [0x28, 0x3c, 0x3e] {
            let mut bad = whole.clone();
            bad[at..at + 2].copy_from_slice(&[0xff, 0xff]);
            let f = written(&bad);
            assert_eq!(
                section::<16>(f.path(), ".cni_rs_build"),
                None,
                "field {at:#x}"
            );
        }
    }
}
