//! Network namespaces: open one by path and run a closure with the calling thread inside it.
//! `setns` moves only the calling thread, so the thread's own namespace is saved from
//! /proc/thread-self and restored before returning.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use super::Error;

pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens the namespace file; a missing path is `io::ErrorKind::NotFound`.
    pub fn open(path: impl AsRef<Path>) -> Result<Netns, Error> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path)
            .map_err(|e| Error::io(format!("opening netns {}", path.display()), e))?;
        Ok(Netns { file, path })
    }

    /// Opens the container's namespace for a plugin command: a missing one is the spec's
    /// "unknown container" (3), anything else an I/O error (5).
    pub fn open_container(path: &str) -> Result<Netns, crate::spec::Error> {
        use crate::spec::{code, Error};
        Netns::open(path).map_err(|e| {
            let code = if e.is_not_found() {
                code::UNKNOWN_CONTAINER
            } else {
                code::IO
            };
            Error::new(code, e.what).details(e.source.to_string())
        })
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn path(&self) -> &Path {
        &self.path
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
