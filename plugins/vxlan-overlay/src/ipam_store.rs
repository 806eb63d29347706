//! Where the node's host-local keeps the containers' addresses: host-local's default
//! directory, `/var/lib/cni/networks/<network>`, as flannel's CNI plugin leaves it (it
//! passes no dataDir), so a node moving between flannel's plugin and ours never hands out
//! a live pod's address; or the config's `ipam.dataDir`. Our earlier releases kept it
//! under our own dataDir (`<dataDir>/<network>`): what is left there is moved into the
//! store, in host-local's file format and under both stores' locks, before any call
//! delegates to host-local.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libcni::{code, files, Error};

use crate::config::Overlay;

/// host-local's own default dataDir (the reference's and ours).
pub const HOST_LOCAL_DEFAULT: &str = "/var/lib/cni/networks";

/// host-local waits as long for its lock.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// The network's store: `<ipam.dataDir or host-local's default>/<network>`.
pub fn store_dir(o: &Overlay) -> PathBuf {
    let base = o
        .ipam_data_dir
        .clone()
        .unwrap_or_else(|| HOST_LOCAL_DEFAULT.into());
    base.join(&o.name)
}

/// Where our earlier releases kept it.
fn old_dir(o: &Overlay) -> PathBuf {
    o.data_dir.join(&o.name)
}

fn io_err(what: String, e: std::io::Error) -> Error {
    Error::new(code::IO, what).details(e.to_string())
}

/// Whether `name` is one of host-local's files worth keeping: a reservation (named by its
/// address) or a range set's last reserved address.
fn is_allocation_file(name: &str) -> bool {
    name.parse::<std::net::IpAddr>().is_ok() || name.starts_with("last_reserved_ip.")
}

/// Moves the allocations of the old store into the store, when there is an old one (one
/// `lstat` otherwise): each reservation is linked in unless the store already has one for
/// that address, then the old store goes.
pub fn adopt_old_store(o: &Overlay) -> Result<(), Error> {
    let (old, new) = (old_dir(o), store_dir(o));
    if old == new || !std::fs::symlink_metadata(&old).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    std::fs::create_dir_all(&new).map_err(|e| io_err(format!("creating {}", new.display()), e))?;
    let _new_lock = lock(&new)?;
    // Another call may have moved it while this one waited: every mover takes the new
    // store's lock first and removes the old store before letting go.
    if !std::fs::symlink_metadata(&old).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    let _old_lock = lock(&old)?;
    let entries =
        std::fs::read_dir(&old).map_err(|e| io_err(format!("reading {}", old.display()), e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !is_allocation_file(&name) {
            continue;
        }
        if let Some(bytes) = files::read(&old.join(&name))? {
            // Exists already: the store's own record of the address wins.
            files::create_new(&new.join(&name), &bytes)?;
        }
    }
    std::fs::remove_dir_all(&old).map_err(|e| io_err(format!("removing {}", old.display()), e))
}

/// The number of addresses held in the store (and in an old store not yet moved).
pub fn held(o: &Overlay) -> usize {
    let mut dirs = vec![store_dir(o)];
    if old_dir(o) != dirs[0] {
        dirs.push(old_dir(o));
    }
    dirs.iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|d| d.flatten())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .parse::<std::net::IpAddr>()
                .is_ok()
        })
        .count()
}

/// Removes the store and an old one (teardown).
pub fn remove(o: &Overlay) -> Result<(), Error> {
    for dir in [store_dir(o), old_dir(o)] {
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err(format!("removing {}", dir.display()), e))
            }
            _ => {}
        }
    }
    Ok(())
}

/// host-local's exclusive flock on `<dir>/lock`, waited for at most [`LOCK_WAIT`]; held
/// until the file is dropped.
fn lock(dir: &Path) -> Result<File, Error> {
    let path = dir.join("lock");
    files::lock_exclusive(&path, LOCK_WAIT)?.ok_or_else(|| {
        Error::new(
            code::TRY_AGAIN,
            format!("{} is held by another invocation", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_host_locals_records_move() {
        for ok in ["10.226.1.2", "fd00:97::5", "last_reserved_ip.0"] {
            assert!(is_allocation_file(ok), "{ok}");
        }
        for no in ["lock", "sled", "_agent", ".10.226.1.2.9.tmp"] {
            assert!(!is_allocation_file(no), "{no}");
        }
    }
}
