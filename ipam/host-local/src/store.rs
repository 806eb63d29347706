//! The allocation store: one sled database per network under the data dir, opened under an
//! exclusive flock on `<dir>/lock` (the lock file the reference plugin also takes), so
//! concurrent invocations wait for each other instead of failing.
//!
//! Keys: `ip/<addr>` -> `<containerID>\n<ifname>`; `id/<containerID>\n<ifname>\n<addr>`
//! (find a container's addresses by prefix, no scan); `last/<set>` -> last reserved address.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcni::{code, Error};
use nix::fcntl::{Flock, FlockArg};

pub struct Store {
    db: sled::Db,
    dir: PathBuf,
    // Dropped after `db`: the lock outlives the database handle.
    _lock: Flock<File>,
}

const IMPORTED: &[u8] = b"meta/imported";

fn io_err(what: String, e: impl std::fmt::Display) -> Error {
    Error::new(code::IO, what).details(e.to_string())
}

fn id_prefix(cid: &str, ifname: &str) -> Vec<u8> {
    format!("id/{cid}\n{ifname}\n").into_bytes()
}

/// Segment size of new stores. sled zero-fills and fsyncs the tail of the current segment
/// and reads it whole on every open; at the default 512 KiB that cost 1.2 ms of a 5 ms
/// call. Our values are a few dozen bytes.
const SEGMENT_SIZE: usize = 16 * 1024;

/// The segment size a store was created with (sled refuses any other), or ours for a new
/// one. sled records it in `<db>/conf` as `segment_size: N`.
pub fn segment_size(db: &Path) -> usize {
    // The file ends in a binary CRC, so it is read as bytes.
    let conf = std::fs::read(db.join("conf")).unwrap_or_default();
    String::from_utf8_lossy(&conf)
        .lines()
        .find_map(|l| l.strip_prefix("segment_size:")?.trim().parse().ok())
        .unwrap_or(SEGMENT_SIZE)
}

/// How long to wait for sled's own lock once we hold the flock.
const SLED_LOCK_WAIT: Duration = Duration::from_secs(10);

/// Opens the database. The previous holder of our flock may still be exiting with sled's
/// file lock held (sled's threads keep the database open until the process ends), so a
/// WouldBlock is waited out, bounded.
fn open_db(path: &Path) -> Result<sled::Db, Error> {
    let started = Instant::now();
    loop {
        let _boost = UnpreemptedByChildren::enter();
        let res = sled::Config::new()
            .path(path)
            .cache_capacity(1 << 20)
            .flush_every_ms(None)
            .segment_size(segment_size(path))
            .open();
        match res {
            // sled 0.34 reports its failed try-lock as ErrorKind::Other with this text.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < SLED_LOCK_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            res => {
                return res
                    .map_err(|e| io_err(format!("opening the sled store {}", path.display()), e))
            }
        }
    }
}

/// While alive, the calling thread runs SCHED_FIFO and the threads it starts run as usual
/// (SCHED_RESET_ON_FORK). sled's open starts seven I/O threads that busy-wait on a lock
/// this thread holds while it starts them; on two cores they preempted it and made the
/// open take 5-10 ms. Only with two or more CPUs, so a spinning worker always has a CPU
/// of its own; without the privilege it quietly does nothing.
struct UnpreemptedByChildren(bool);

impl UnpreemptedByChildren {
    fn enter() -> UnpreemptedByChildren {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: plain syscall on the calling thread with a valid parameter.
        let ok = cpus >= 2
            && unsafe {
                libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
            } == 0;
        UnpreemptedByChildren(ok)
    }
}

impl Drop for UnpreemptedByChildren {
    fn drop(&mut self) {
        if self.0 {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: as above; back to the default policy.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
        }
    }
}

impl Store {
    /// Locks and opens the store of one network, importing the reference plugin's
    /// reservation files on first use.
    pub fn open(dir: &Path) -> Result<Store, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| io_err(format!("creating {}", dir.display()), e))?;
        let lock_path = dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err(format!("opening {}", lock_path.display()), e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| io_err(format!("locking {}", lock_path.display()), e))?;
        let db = open_db(&dir.join("sled"))?;
        let store = Store {
            db,
            dir: dir.to_path_buf(),
            _lock: lock,
        };
        if !store.has(IMPORTED)? {
            store.import_reference_files()?;
        }
        Ok(store)
    }

    fn has(&self, key: &[u8]) -> Result<bool, Error> {
        self.db
            .contains_key(key)
            .map_err(|e| self.err("reading", e))
    }

    fn err(&self, op: &str, e: impl std::fmt::Display) -> Error {
        io_err(format!("{op} the store in {}", self.dir.display()), e)
    }

    /// Who holds `ip`, if anyone.
    pub fn owner(&self, ip: IpAddr) -> Result<Option<(String, String)>, Error> {
        let v = self
            .db
            .get(format!("ip/{ip}"))
            .map_err(|e| self.err("reading", e))?;
        Ok(v.map(|v| {
            let s = String::from_utf8_lossy(&v);
            let (cid, ifname) = s.split_once('\n').unwrap_or((&s, ""));
            (cid.to_string(), ifname.to_string())
        }))
    }

    pub fn last_reserved(&self, set: usize) -> Result<Option<IpAddr>, Error> {
        let v = self
            .db
            .get(format!("last/{set}"))
            .map_err(|e| self.err("reading", e))?;
        Ok(v.and_then(|v| String::from_utf8_lossy(&v).parse().ok()))
    }

    /// Records all of one container's reservations (with the last reserved address of each
    /// range set) in one atomic batch.
    pub fn reserve(&self, cid: &str, ifname: &str, ips: &[(usize, IpAddr)]) -> Result<(), Error> {
        let mut b = sled::Batch::default();
        for (set, ip) in ips {
            b.insert(
                format!("ip/{ip}").into_bytes(),
                format!("{cid}\n{ifname}").into_bytes(),
            );
            let mut k = id_prefix(cid, ifname);
            k.extend_from_slice(ip.to_string().as_bytes());
            b.insert(k, Vec::<u8>::new());
            b.insert(
                format!("last/{set}").into_bytes(),
                ip.to_string().into_bytes(),
            );
        }
        self.db.apply_batch(b).map_err(|e| self.err("writing", e))
    }

    /// The addresses held by (containerID, ifname).
    pub fn ips_of(&self, cid: &str, ifname: &str) -> Result<Vec<IpAddr>, Error> {
        let prefix = id_prefix(cid, ifname);
        let mut out = Vec::new();
        for kv in self.db.scan_prefix(&prefix) {
            let (k, _) = kv.map_err(|e| self.err("reading", e))?;
            if let Ok(ip) = String::from_utf8_lossy(&k[prefix.len()..]).parse() {
                out.push(ip);
            }
        }
        Ok(out)
    }

    /// Frees everything (containerID, ifname) holds; returns what was freed.
    pub fn release(&self, cid: &str, ifname: &str) -> Result<Vec<IpAddr>, Error> {
        let ips = self.ips_of(cid, ifname)?;
        let mut b = sled::Batch::default();
        for ip in &ips {
            b.remove(format!("ip/{ip}").into_bytes());
            let mut k = id_prefix(cid, ifname);
            k.extend_from_slice(ip.to_string().as_bytes());
            b.remove(k);
        }
        self.db.apply_batch(b).map_err(|e| self.err("writing", e))?;
        Ok(ips)
    }

    /// Every (containerID, ifname) holding an address.
    pub fn attachments(&self) -> Result<HashSet<(String, String)>, Error> {
        let mut out = HashSet::new();
        for kv in self.db.scan_prefix(b"ip/") {
            let (_, v) = kv.map_err(|e| self.err("reading", e))?;
            let s = String::from_utf8_lossy(&v);
            let (cid, ifname) = s.split_once('\n').unwrap_or((&s, ""));
            out.insert((cid.to_string(), ifname.to_string()));
        }
        Ok(out)
    }

    /// Makes every change durable; called before the result is printed.
    pub fn flush(&self) -> Result<(), Error> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| self.err("flushing", e))
    }

    /// Reads the reference host-local's files in the same directory: `<ip>` files holding
    /// `<containerID>\r\n<ifname>` and `last_reserved_ip.<set>`. They are left in place.
    fn import_reference_files(&self) -> Result<(), Error> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| io_err(format!("reading {}", self.dir.display()), e))?;
        let mut b = sled::Batch::default();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let read = || std::fs::read_to_string(entry.path()).unwrap_or_default();
            if let Ok(ip) = name.parse::<IpAddr>() {
                let content = read();
                let mut lines = content.lines().map(str::trim);
                let cid = lines.next().unwrap_or_default();
                if cid.is_empty() {
                    continue;
                }
                let ifname = lines.next().filter(|l| !l.is_empty()).unwrap_or("eth0");
                b.insert(
                    format!("ip/{ip}").into_bytes(),
                    format!("{cid}\n{ifname}").into_bytes(),
                );
                b.insert(
                    format!("id/{cid}\n{ifname}\n{ip}").into_bytes(),
                    Vec::<u8>::new(),
                );
            } else if let Some(set) = name.strip_prefix("last_reserved_ip.") {
                if let (Ok(set), Ok(ip)) = (set.parse::<usize>(), read().trim().parse::<IpAddr>()) {
                    b.insert(
                        format!("last/{set}").into_bytes(),
                        ip.to_string().into_bytes(),
                    );
                }
            }
        }
        b.insert(IMPORTED, Vec::<u8>::new());
        self.db
            .apply_batch(b)
            .map_err(|e| self.err("importing into", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reserve_find_release() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.reserve("c1", "eth0", &[(0, ip("10.0.0.2")), (1, ip("fd00::2"))])
            .unwrap();
        assert_eq!(
            s.owner(ip("10.0.0.2")).unwrap(),
            Some(("c1".into(), "eth0".into()))
        );
        assert_eq!(s.ips_of("c1", "eth0").unwrap().len(), 2);
        assert!(s.ips_of("c1", "eth1").unwrap().is_empty());
        assert_eq!(s.last_reserved(1).unwrap(), Some(ip("fd00::2")));
        assert_eq!(s.release("c1", "eth0").unwrap().len(), 2);
        assert_eq!(s.owner(ip("10.0.0.2")).unwrap(), None);
        assert!(s.attachments().unwrap().is_empty());
        // the last reserved address survives release: round robin goes on after it
        assert_eq!(s.last_reserved(0).unwrap(), Some(ip("10.0.0.2")));
    }

    #[test]
    fn keeps_the_segment_size_a_store_was_made_with() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("sled");
        assert_eq!(segment_size(&db), SEGMENT_SIZE);
        drop(
            sled::Config::new()
                .path(&db)
                .segment_size(64 * 1024)
                .open()
                .unwrap(),
        );
        assert_eq!(segment_size(&db), 64 * 1024);
        let s = Store::open(dir.path()).unwrap();
        s.reserve("c1", "eth0", &[(0, ip("10.0.0.2"))]).unwrap();
    }

    #[test]
    fn imports_reference_files_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("10.0.0.7"), "abc\r\neth1").unwrap();
        std::fs::write(dir.path().join("10.0.0.8"), "old").unwrap();
        std::fs::write(dir.path().join("last_reserved_ip.0"), "10.0.0.8").unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(
                s.owner(ip("10.0.0.7")).unwrap(),
                Some(("abc".into(), "eth1".into()))
            );
            assert_eq!(s.ips_of("old", "eth0").unwrap(), vec![ip("10.0.0.8")]);
            assert_eq!(s.last_reserved(0).unwrap(), Some(ip("10.0.0.8")));
            s.release("abc", "eth1").unwrap();
            s.flush().unwrap();
        }
        // a freed imported address is not brought back by a second open
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.owner(ip("10.0.0.7")).unwrap(), None);
    }
}
