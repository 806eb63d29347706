//! The delegate's config kept per container under `dataDir/<containerID>` from ADD to
//! DEL, the file flannel's Go plugin keeps (saveScratchNetConf, consumeScratchNetConf):
//! a pod added by either plugin is deleted by the other. The container ID was checked by
//! libcni's skel (no '/', no "..") before it names a file here.

use std::path::{Path, PathBuf};

use libcni::{files, Error};

/// A delegate's config is no larger than a config a plugin accepts.
const MAX_BYTES: u64 = libcni::skel::MAX_CONFIG_BYTES as u64;

fn path(data_dir: &Path, container_id: &str) -> PathBuf {
    data_dir.join(container_id)
}

/// Saves the config, whole (0600 in a 0700 directory, never through a symlink).
pub fn save(data_dir: &Path, container_id: &str, config: &[u8]) -> Result<(), Error> {
    files::private_dir(data_dir)?;
    files::replace(&path(data_dir, container_id), config)?;
    Ok(())
}

/// The saved config; None when there is none (DEL after DEL, or no ADD).
pub fn read(data_dir: &Path, container_id: &str) -> Result<Option<Vec<u8>>, Error> {
    files::read_bounded(&path(data_dir, container_id), MAX_BYTES)
}

pub fn remove(data_dir: &Path, container_id: &str) -> Result<(), Error> {
    Ok(files::remove(&path(data_dir, container_id))?)
}
