//! What a plugin saved about an attachment to put back on DEL (tuning's old link settings,
//! host-device's host addresses): one private JSON file per attachment, named as the
//! reference's tuning names them (`<containerID>_<ifname>.json`), holding the saved value
//! and, for GC, the network (`cniRsNetwork`, a field the reference ignores).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::Attachment;
use crate::files;
use crate::spec::{code, Error};

const NETWORK: &str = "cniRsNetwork";

/// The backups kept in one directory.
pub struct Backups {
    dir: PathBuf,
}

impl Backups {
    /// The backups in `dir`, or in `default` when the config names none.
    pub fn new(dir: Option<&Path>, default: &str) -> Backups {
        Backups {
            dir: dir.map_or_else(|| PathBuf::from(default), Path::to_path_buf),
        }
    }

    /// Container IDs and interface names cannot hold '/'.
    pub fn file(&self, a: &Attachment) -> PathBuf {
        self.dir
            .join(format!("{}_{}.json", a.container_id(), a.ifname()))
    }

    /// Saves `value` (a JSON object) for `a`, replacing an older backup.
    pub fn save(&self, a: &Attachment, value: &impl Serialize) -> Result<(), Error> {
        files::replace(&self.file(a), &self.bytes(a, value)?)?;
        Ok(())
    }

    /// Saves `value` for `a` only if `a` has no backup; false when it has one (a live
    /// attachment's, which a failing call must leave as it is).
    pub fn create(&self, a: &Attachment, value: &impl Serialize) -> Result<bool, Error> {
        Ok(files::create_new(&self.file(a), &self.bytes(a, value)?)?)
    }

    /// `value` with the network for GC, as written; makes the directory.
    fn bytes(&self, a: &Attachment, value: &impl Serialize) -> Result<Vec<u8>, Error> {
        let mut v =
            serde_json::to_value(value).map_err(|e| Error::new(code::INTERNAL, e.to_string()))?;
        v[NETWORK] = Value::from(a.network());
        files::private_dir(&self.dir)?;
        serde_json::to_vec_pretty(&v).map_err(|e| Error::new(code::INTERNAL, e.to_string()))
    }

    /// The backup of `a`: None when there is none, an error text when it cannot be read.
    pub fn load<T: DeserializeOwned>(&self, a: &Attachment) -> Result<Option<T>, String> {
        match files::read(&self.file(a)) {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| e.to_string()),
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    pub fn remove(&self, a: &Attachment) -> Result<(), Error> {
        files::remove(&self.file(a))?;
        Ok(())
    }

    /// Removes the backups `network` saved for attachments not in `valid` (GC; their
    /// namespaces are gone, nothing to put back). Other networks' backups, and the
    /// reference's (which name no network), are left alone.
    pub fn remove_stale(
        &self,
        network: &str,
        valid: &HashSet<(String, String)>,
    ) -> Result<(), Error> {
        let keep: HashSet<PathBuf> = valid
            .iter()
            .map(|(cid, ifname)| self.file(&Attachment::new(network, cid, ifname)))
            .collect();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(());
        };
        for path in entries.flatten().map(|e| e.path()) {
            if !keep.contains(&path) && saved_by(&path) == Some(network.to_string()) {
                files::remove(&path)?;
            }
        }
        Ok(())
    }
}

fn saved_by(path: &Path) -> Option<String> {
    let bytes = files::read(path).ok()??;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v[NETWORK].as_str().map(str::to_string)
}
