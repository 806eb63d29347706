//! Files we keep (the IPAM store, tuning's backups, the result cache): directories 0700
//! and files 0600 whatever the caller's umask, a directory we use is a real directory of
//! ours (a symlink planted in its place is refused), a file is never opened through a
//! symlink, and a file is replaced whole (written under a name no one else uses, then
//! renamed), so a reader never sees half of one; only a hint is overwritten in place.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A failed file operation: which path, what we were doing, and why.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct Error {
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl Error {
    fn new(what: &'static str, path: &Path, source: io::Error) -> Error {
        Error {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<Error> for crate::spec::Error {
    fn from(e: Error) -> crate::spec::Error {
        crate::spec::Error::new(
            crate::spec::code::IO,
            format!("{} {}", e.what, e.path.display()),
        )
        .details(e.source.to_string())
    }
}

/// Makes `dir` (missing parents too, 0700) and checks that it is a directory owned by us,
/// not a symlink.
pub fn private_dir(dir: &Path) -> Result<(), Error> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::new("creating", dir, e))?;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| Error::new("inspecting", dir, e))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.file_type().is_dir() || meta.uid() != me {
        return Err(Error::new(
            "using",
            dir,
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "not a directory owned by this user (a symlink or someone else's)",
            ),
        ));
    }
    Ok(())
}

fn nofollow() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    o
}

/// Takes the exclusive flock of `path` (created 0600 if missing, never through a
/// symlink), waiting at most `wait`; held until the file is dropped. None when the wait
/// ran out (someone else holds it).
pub fn lock_exclusive(path: &Path, wait: Duration) -> Result<Option<File>, Error> {
    // Read-only, as the reference's host-local opens its lock: works on a read-only disk.
    let file = nofollow()
        .read(true)
        .mode(0o600)
        .custom_flags(libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::new("opening", path, e))?;
    match flock_exclusive(&file, wait) {
        Ok(true) => Ok(Some(file)),
        Ok(false) => Ok(None),
        Err(e) => Err(Error::new("locking", path, e)),
    }
}

/// Takes the exclusive flock of an open file, waiting at most `wait`; false when the
/// wait ran out. Held until every descriptor of that open file is closed.
pub fn flock_exclusive(file: &impl AsRawFd, wait: Duration) -> io::Result<bool> {
    let started = Instant::now();
    loop {
        // SAFETY: flock on a descriptor the caller keeps open for the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(e);
        }
        if started.elapsed() >= wait {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Reads a file without following a symlink; None when it does not exist.
pub fn read(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    let mut f = match nofollow().read(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::new("opening", path, e)),
    };
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .map_err(|e| Error::new("reading", path, e))?;
    Ok(Some(bytes))
}

/// Creates `path` with `bytes` only if nothing is there (0600, never through a symlink);
/// `Ok(false)` when something already is. The file appears whole or not at all (written
/// under a temporary name, then linked into place), so a kill never leaves an empty claim.
pub fn create_new(path: &Path, bytes: &[u8]) -> Result<bool, Error> {
    let tmp = write_temporary(path, bytes)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::new("creating", path, e)),
    }
}

/// `bytes` in a new file next to `path`, under a name unique to this process and `path`
/// (a leftover of a killed process is replaced).
fn write_temporary(path: &Path, bytes: &[u8]) -> Result<PathBuf, Error> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| -> io::Result<()> {
        let mut f: File = nofollow()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)
    })();
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(Error::new("writing", path, e))
        }
    }
}

/// Replaces `path` with a file holding `bytes`: written to a temporary name unique to this
/// process and `path` (created exclusively, 0600), then renamed over `path` (which
/// replaces a symlink there, never follows it).
pub fn replace(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = write_temporary(path, bytes)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::new("writing", path, e)
    })
}

/// Writes `bytes` over `path` in place (created 0600 if missing, never through a
/// symlink), for a file whose reader can take a torn write: a hint, as host-local's
/// `last_reserved_ip`. On ext4, renaming over a file or truncating it to nothing makes
/// the kernel start writing it out at once (0.35 ms a write, against 0.04 in place).
pub fn overwrite(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let written = (|| -> io::Result<()> {
        // O_NONBLOCK: a FIFO planted there is refused (ENXIO), not waited on.
        let f: File = nofollow()
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)?;
        std::os::unix::fs::FileExt::write_all_at(&f, bytes, 0)?;
        f.set_len(bytes.len() as u64)
    })();
    written.map_err(|e| Error::new("writing", path, e))
}

/// Temporary files a killed writer left in `dir` (for `name` only, if given): written by
/// [`create_new`] or [`replace`], never renamed or linked into place.
pub fn leftovers(dir: &Path, name: Option<&str>) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            let Some(base) = n.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
                return false;
            };
            let Some((target, pid)) = base.rsplit_once('.') else {
                return false;
            };
            pid.bytes().all(|b| b.is_ascii_digit()) && name.is_none_or(|want| want == target)
        })
        .map(|e| e.path())
        .collect()
}

/// A file someone else writes for us (flannel's subnet file, a scratch config), read as
/// CNI_NETNS is opened: without blocking and without following a symlink, and only if it
/// is a regular file (a FIFO there would block every call, a device like /dev/zero never
/// ends), at most `max` bytes. None when it does not exist; a symlink, a non-regular file
/// or a larger one is a config error (code 7) naming the file.
pub fn read_bounded(path: &Path, max: u64) -> Result<Option<Vec<u8>>, crate::spec::Error> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::new("opening", path, e).into()),
    };
    let kind = file
        .metadata()
        .map_err(|e| Error::new("examining", path, e))?
        .file_type();
    if !kind.is_file() {
        return Err(crate::spec::Error::config(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::new("reading", path, e))?;
    if bytes.len() as u64 > max {
        return Err(crate::spec::Error::config(format!(
            "{} is larger than {max} bytes",
            path.display()
        )));
    }
    Ok(Some(bytes))
}

/// Removes `path` (a symlink itself, never its target); gone already is fine.
pub fn remove(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::new("removing", path, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_whatever_the_umask_and_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: umask only changes this test process's creation mask.
        let old = unsafe { libc::umask(0) };
        let d = dir.path().join("a/b");
        private_dir(&d).unwrap();
        let f = d.join("x");
        replace(&f, b"1").unwrap();
        assert!(create_new(&d.join("y"), b"2").unwrap());
        assert!(!create_new(&d.join("y"), b"3").unwrap());
        unsafe { libc::umask(old) };
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            (mode(&d), mode(&f), mode(&d.join("y"))),
            (0o700, 0o600, 0o600)
        );
        assert_eq!(read(&f).unwrap().unwrap(), b"1");
        assert_eq!(read(&d.join("none")).unwrap(), None);
        assert!(leftovers(&d, None).is_empty());
        std::fs::write(d.join(".x.123.tmp"), "killed writer").unwrap();
        assert_eq!(leftovers(&d, Some("x")), [d.join(".x.123.tmp")]);
        assert!(leftovers(&d, Some("y")).is_empty());

        // a planted symlink: read refuses it, replace swaps the link itself out
        let target = dir.path().join("target");
        std::fs::write(&target, "precious").unwrap();
        let planted = d.join("planted");
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        assert!(read(&planted).is_err());
        assert!(!create_new(&planted, b"x").unwrap());
        replace(&planted, b"mine").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        assert_eq!(read(&planted).unwrap().unwrap(), b"mine");

        // read_bounded: a symlink, a FIFO and too many bytes are refused, not followed
        let planted_again = d.join("planted-again");
        std::os::unix::fs::symlink(&target, &planted_again).unwrap();
        assert!(read_bounded(&planted_again, 64).is_err());
        assert_eq!(read_bounded(&d.join("none"), 64).unwrap(), None);
        assert_eq!(read_bounded(&f, 1).unwrap().unwrap(), b"1");
        replace(&f, b"12").unwrap();
        assert_eq!(read_bounded(&f, 1).unwrap_err().code, 7);
        let fifo = d.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(read_bounded(&fifo, 64).unwrap_err().code, 7);

        // overwrite: in place, a shorter value leaves nothing of the longer one, a new
        // file is 0600, a symlink or a FIFO is refused (neither followed nor waited on)
        let hint = d.join("hint");
        overwrite(&hint, b"10.0.0.100").unwrap();
        overwrite(&hint, b"10.0.0.9").unwrap();
        assert_eq!(read(&hint).unwrap().unwrap(), b"10.0.0.9");
        assert_eq!(mode(&hint), 0o600);
        assert!(overwrite(&planted_again, b"x").is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        assert!(overwrite(&fifo, b"x").is_err());

        // a symlink where a directory should be
        let link_dir = dir.path().join("linkdir");
        std::os::unix::fs::symlink(dir.path(), &link_dir).unwrap();
        assert!(private_dir(&link_dir).is_err());
    }
}
