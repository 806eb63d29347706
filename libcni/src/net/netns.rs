//! Network namespaces: open one by path (and prove it is one) and run a closure with the
//! calling thread inside it. `setns` moves only the calling thread, so the thread's own
//! namespace is saved from /proc/thread-self and restored before returning.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use super::Error;

/// statfs f_type of nsfs, where namespace files live.
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// ioctl NS_GET_NSTYPE: _IO(0xb7, 0x3).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

/// Why a path could not be used as a network namespace.
#[derive(Debug)]
pub enum OpenError {
    /// Nothing at the path: the container is gone.
    Missing(Error),
    /// Something is there, but not a network namespace (a FIFO, a file, a directory, a
    /// namespace of another kind).
    NotNetns(PathBuf),
    Io(Error),
}

impl Netns {
    /// Opens the namespace file without blocking (a FIFO planted at the path would block
    /// a plain open forever) and checks that it is a network namespace.
    pub fn open(path: impl AsRef<Path>) -> Result<Netns, OpenError> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| {
                let nf = e.kind() == std::io::ErrorKind::NotFound;
                let e = Error::io(format!("opening netns {}", path.display()), e);
                if nf {
                    OpenError::Missing(e)
                } else {
                    OpenError::Io(e)
                }
            })?;
        if !is_net_namespace(&file) {
            return Err(OpenError::NotNetns(path));
        }
        Ok(Netns { file, path })
    }

    /// Opens the container's namespace for a plugin command: a missing one is the spec's
    /// "unknown container" (3), a path that is not a network namespace an invalid
    /// CNI_NETNS (4), anything else an I/O error (5).
    pub fn open_container(path: &str) -> Result<Netns, crate::spec::Error> {
        use crate::spec::{code, Error};
        Netns::open(path).map_err(|e| match e {
            OpenError::Missing(e) => {
                Error::new(code::UNKNOWN_CONTAINER, e.what).details(e.source.to_string())
            }
            OpenError::NotNetns(p) => Error::new(
                code::INVALID_ENV,
                format!("CNI_NETNS {} is not a network namespace", p.display()),
            ),
            OpenError::Io(e) => Error::new(code::IO, e.what).details(e.source.to_string()),
        })
    }

    /// The namespace for DEL, if it still exists and is one; DEL goes on without it.
    pub fn open_if_present(path: &str) -> Option<Netns> {
        if path.is_empty() {
            return None;
        }
        match Netns::open(path) {
            Ok(ns) => Some(ns),
            Err(OpenError::Missing(_)) => None,
            Err(e) => {
                eprintln!("ignoring CNI_NETNS: {e:?}");
                None
            }
        }
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the exclusive flock of the namespace file, as the reference's sbr does to
    /// serialise its invocations on one namespace (so ours and its exclude each other);
    /// held while this handle is open. False when `wait` ran out.
    pub fn lock(&self, wait: std::time::Duration) -> Result<bool, Error> {
        crate::files::flock_exclusive(&self.file, wait)
            .map_err(|e| Error::io(format!("locking netns {}", self.path.display()), e))
    }

    /// Runs `f` with this thread inside the namespace, then puts the thread back.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, Error> {
        let own = File::open("/proc/thread-self/ns/net")
            .map_err(|e| Error::io("opening /proc/thread-self/ns/net", e))?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io(format!("entering netns {}", self.path.display()), e.into()))?;
        let out = f();
        if let Err(e) = setns(own.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Continuing in the wrong namespace would configure the wrong machine.
            eprintln!("cannot return to the original netns: {e}");
            std::process::abort();
        }
        Ok(out)
    }
}

fn is_net_namespace(file: &File) -> bool {
    let fd = file.as_raw_fd();
    // SAFETY: fstatfs fills the struct we pass; the fd is open for the call's duration.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(fd, &mut st) } != 0 || st.f_type as i64 != NSFS_MAGIC {
        return false;
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd.
    let kind = unsafe { libc::ioctl(fd, NS_GET_NSTYPE as _) };
    kind == libc::CLONE_NEWNET
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_network_namespaces_open() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        for p in [&fifo, &file, &dir.path().to_path_buf()] {
            assert!(
                matches!(Netns::open(p), Err(OpenError::NotNetns(_))),
                "{p:?}"
            );
        }
        assert!(matches!(
            Netns::open(dir.path().join("none")),
            Err(OpenError::Missing(_))
        ));
        // another kind of namespace
        assert!(matches!(
            Netns::open("/proc/self/ns/uts"),
            Err(OpenError::NotNetns(_))
        ));
        assert!(Netns::open("/proc/self/ns/net").is_ok());
    }
}
