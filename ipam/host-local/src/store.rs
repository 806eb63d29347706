//! The allocation store of one network, `<dataDir>/<network>`, in two layers:
//!
//! - The reference plugin's files are the truth: one file per reserved address, named by
//!   the address and holding `<containerID>\r\n<ifname>`, and `last_reserved_ip.<n>` per
//!   range set. They are made with O_EXCL (the claim) and removed on release, exactly as
//!   the reference does, so a node can switch to the reference plugins and back at any
//!   time, and both lock the same `<dir>/lock`.
//! - A sled database in `<dir>/sled` is the index: (containerID, ifname) -> addresses, so
//!   DEL, CHECK and GC find an attachment without reading the directory. With it is the
//!   directory's stamp (inode, mtime) as of our last change; when the directory changed
//!   behind our back (the reference plugin ran, a kill landed between a file and the
//!   index, the index was lost) the stamps differ and the index is rebuilt from the files.
//!
//! The index is made only once the store holds [`FILES_ONLY_LIMIT`] reservations; a smaller store without one is read as the reference reads it, every
//! file, which costs less than sled's open (a fixed ~3 ms of fsyncs and thread starts per
//! process). Once made, the index is kept and used whatever the store's size.
//!
//! So a kill at any point leaves files that are right and an index that is right or
//! rebuilt, a store that sled cannot open any more is rebuilt from the files, and a DEL
//! that cannot write the index (a full disk) has still freed the address.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcni::files;
use libcni::trace;
use libcni::{code, Error};
use nix::fcntl::{Flock, FlockArg};

pub struct Store {
    dir: PathBuf,
    /// None for a small store without an index, or when the index cannot be opened at
    /// all (a read-only or full disk): every lookup then reads the files.
    db: Option<sled::Db>,
    // Dropped after `db`: the lock outlives the database handle.
    _lock: Flock<File>,
}

/// One reservation as its file says: who holds the address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Holder {
    pub container_id: String,
    /// Empty in the reference's oldest format, which held only the container ID.
    pub ifname: String,
}

impl Holder {
    fn parse(content: &str) -> Option<Holder> {
        let mut lines = content.trim().lines().map(str::trim);
        let container_id = lines.next().filter(|c| !c.is_empty())?.to_string();
        let ifname = lines.next().unwrap_or_default().to_string();
        Some(Holder {
            container_id,
            ifname,
        })
    }

    fn is(&self, cid: &str, ifname: &str) -> bool {
        self.container_id == cid && (self.ifname == ifname || self.ifname.is_empty())
    }
}

const STAMP: &[u8] = b"meta/dir";
/// How long an invocation waits for another to release the store.
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// How long to wait for sled's own lock once we hold the flock.
const SLED_LOCK_WAIT: Duration = Duration::from_secs(10);
/// Segment size of new indexes. sled zero-fills and fsyncs the tail of the current
/// segment and reads it whole on every open; at the default 512 KiB that cost 1.2 ms of a
/// 5 ms call. Our values are a few dozen bytes.
const SEGMENT_SIZE: usize = 16 * 1024;
/// Below this many reservations a store without an index is served from its files alone:
/// reading them all costs what sled's open does at ~250 files on a 2-core VM
/// (docs/DESIGN.md), and a node's pods (kubelet's default is 110) stay below.
const FILES_ONLY_LIMIT: usize = 128;

fn io_err(what: String, e: impl std::fmt::Display) -> Error {
    Error::new(code::IO, what).details(e.to_string())
}

fn id_prefix(cid: &str, ifname: &str) -> Vec<u8> {
    format!("id/{cid}\n{ifname}\n").into_bytes()
}

fn id_key(cid: &str, ifname: &str, ip: IpAddr) -> Vec<u8> {
    let mut k = id_prefix(cid, ifname);
    k.extend_from_slice(ip.to_string().as_bytes());
    k
}

/// The segment size an index was created with (sled refuses any other), or ours for a
/// new one. sled records it in `<db>/conf` as `segment_size: N`.
pub fn segment_size(db: &Path) -> usize {
    // The file ends in a binary CRC, so it is read as bytes.
    let conf = std::fs::read(db.join("conf")).unwrap_or_default();
    String::from_utf8_lossy(&conf)
        .lines()
        .find_map(|l| l.strip_prefix("segment_size:")?.trim().parse().ok())
        .unwrap_or(SEGMENT_SIZE)
}

/// Takes `<dir>/lock`, waiting at most [`LOCK_WAIT`] (then code 11: try again).
fn lock(dir: &Path) -> Result<Flock<File>, Error> {
    let path = dir.join("lock");
    // Read-only, as the reference opens it: a lock on a read-only disk still works.
    let file = OpenOptions::new()
        .read(true)
        .mode(0o600)
        .custom_flags(libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| io_err(format!("opening {}", path.display()), e))?;
    let started = Instant::now();
    let mut file = file;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(l),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if started.elapsed() < LOCK_WAIT => {
                file = f;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(Error::new(
                    code::TRY_AGAIN,
                    format!("{} is held by another invocation", path.display()),
                ))
            }
            Err((_, e)) => return Err(io_err(format!("locking {}", path.display()), e)),
        }
    }
}

/// Removes what a kill inside sled 0.34's own open leaves torn, which every later open
/// would reject with `Corruption { at: None }` for good (spacejam/sled#1527, #1533):
///
/// * `snap.<lsn>.generating`: every open that finds the log grown writes a snapshot under
///   this name (payload, length and CRC in three writes), fsyncs it and renames it
///   (pagecache/snapshot.rs write_snapshot). sled's lookup does not skip `.generating`
///   names and takes the greatest, so one cut short before the rename is read as the
///   newest snapshot and fails its check. That open had logged nothing yet: without the
///   file sled recovers the same state from the previous snapshot and the log. A whole
///   one (CRC matches) is valid and left alone.
/// * `conf`: written on a store's first open, before the data file, as text then CRC in
///   two writes (config.rs write_config). Removed only while the data file is still empty;
///   sled writes it again.
///
/// Runs under our flock (no other invocation is inside sled's open), before
/// [`segment_size`] reads `conf`. Costs one readdir (~4 us).
fn remove_torn_sled_files(db: &Path) -> std::io::Result<()> {
    use std::io::ErrorKind::NotFound;
    // sled's crc32, stored little-endian
    let crc_ok = |checked: &[u8], stored: &[u8]| crc32fast::hash(checked).to_le_bytes() == stored;
    let entries = match std::fs::read_dir(db) {
        Ok(entries) => entries,
        Err(e) if e.kind() == NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("snap.") && name.ends_with(".generating")) {
            continue;
        }
        // payload, u64 LE payload length, u32 LE crc32(payload)
        let bytes = std::fs::read(entry.path())?;
        let n = bytes.len();
        if !(n > 12 && crc_ok(&bytes[..n - 12], &bytes[n - 4..])) {
            std::fs::remove_file(entry.path())?;
        }
    }
    match std::fs::read(db.join("conf")) {
        // sled itself treats 8 bytes or fewer as no conf and writes it again
        Ok(bytes) if bytes.len() > 8 => {
            let (text, crc) = bytes.split_at(bytes.len() - 4);
            let data_len = std::fs::metadata(db.join("db")).map_or(0, |m| m.len());
            if !crc_ok(text, crc) && data_len == 0 {
                std::fs::remove_file(db.join("conf"))?;
            }
        }
        Ok(_) => {}
        Err(e) if e.kind() == NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Whether an open failed on damaged files (rebuild the index) rather than on the
/// machine (a full or read-only disk, permissions: report it, keep the index).
fn is_damage(e: &sled::Error) -> bool {
    use libc::{EACCES, EDQUOT, EIO, EMFILE, ENFILE, ENOMEM, ENOSPC, EPERM, EROFS};
    let machine = [
        ENOSPC, EDQUOT, EROFS, EACCES, EPERM, EIO, EMFILE, ENFILE, ENOMEM,
    ];
    !matches!(e, sled::Error::Io(io) if io.raw_os_error().is_some_and(|n| machine.contains(&n)))
}

/// Opens the index, first discarding what a kill inside sled's own open left torn. The
/// previous holder of our flock may still be exiting with sled's file lock held (sled's
/// threads keep the database open until the process ends), so a WouldBlock is waited
/// out, bounded. A panic inside sled on damaged files is an error like any other.
fn open_db(path: &Path) -> Result<sled::Db, sled::Error> {
    remove_torn_sled_files(path)?;
    let segment_size = segment_size(path);
    let started = Instant::now();
    loop {
        let _boost = UnpreemptedByChildren::enter();
        let res = std::panic::catch_unwind(|| {
            sled::Config::new()
                .path(path)
                .cache_capacity(1 << 20)
                .flush_every_ms(None)
                .segment_size(segment_size)
                .open()
        })
        .unwrap_or_else(|_| Err(sled::Error::ReportableBug("sled panicked opening".into())));
        match res {
            // sled 0.34 reports its failed try-lock as ErrorKind::Other with this text.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < SLED_LOCK_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            res => return res,
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
        let ok = cpus >= 2 && set_scheduler(libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, 1);
        UnpreemptedByChildren(ok)
    }
}

/// sched_setscheduler(2) on the calling thread, as the raw syscall: musl's wrapper
/// always fails with ENOSYS.
fn set_scheduler(policy: libc::c_int, priority: libc::c_int) -> bool {
    // SAFETY: an all-zero sched_param is valid on every libc; the kernel reads only
    // sched_priority from it.
    let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
    param.sched_priority = priority;
    // SAFETY: plain syscall on the calling thread with a valid pointer.
    unsafe { libc::syscall(libc::SYS_sched_setscheduler, 0, policy, &param) == 0 }
}

impl Drop for UnpreemptedByChildren {
    fn drop(&mut self) {
        if self.0 {
            set_scheduler(libc::SCHED_OTHER, 0);
        }
    }
}

/// The directory's identity and last change, as bytes to compare.
fn dir_stamp(dir: &Path) -> Result<Vec<u8>, Error> {
    let m =
        std::fs::metadata(dir).map_err(|e| io_err(format!("inspecting {}", dir.display()), e))?;
    Ok(format!("{} {} {}", m.ino(), m.mtime(), m.mtime_nsec()).into_bytes())
}

/// The addresses the directory holds reservation files for, by their names alone.
fn reservation_names(dir: &Path) -> Result<impl Iterator<Item = IpAddr>, Error> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| io_err(format!("reading {}", dir.display()), e))?;
    Ok(entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<IpAddr>().ok()))
}

impl Store {
    /// Locks and opens the store of one network, rebuilding the index from the files when
    /// they changed behind its back or it cannot be opened.
    pub fn open(dir: &Path) -> Result<Store, Error> {
        Store::open_indexed_above(dir, FILES_ONLY_LIMIT)
    }

    /// [`Store::open`], making the index when there is none and the store holds `limit`
    /// reservations or more.
    fn open_indexed_above(dir: &Path, limit: usize) -> Result<Store, Error> {
        files::private_dir(dir)?;
        let lock = lock(dir)?;
        trace::mark("flock taken");
        let db_path = dir.join("sled");
        let indexed =
            std::fs::symlink_metadata(&db_path).is_ok() || reservation_names(dir)?.count() >= limit;
        let db = if indexed {
            let opened = open_db(&db_path);
            trace::mark("index opened");
            match opened {
                Ok(db) => Some(db),
                Err(e) if is_damage(&e) => Store::set_aside(&db_path, &e),
                Err(e) => {
                    eprintln!(
                        "host-local: the index {} cannot be opened: {e}",
                        db_path.display()
                    );
                    None
                }
            }
        } else {
            None
        };
        let store = Store {
            dir: dir.to_path_buf(),
            db,
            _lock: lock,
        };
        store.sync_index()?;
        Ok(store)
    }

    /// An index sled cannot open is moved to `sled.broken` (replacing an older one, kept
    /// for a person to look at) and a new one is made; the files rebuild it.
    fn set_aside(db_path: &Path, e: &sled::Error) -> Option<sled::Db> {
        eprintln!(
            "host-local: the index {} cannot be opened ({e}); rebuilding it from the reservation files",
            db_path.display()
        );
        let broken = db_path.with_file_name("sled.broken");
        let _ = std::fs::remove_dir_all(&broken).or_else(|_| std::fs::remove_file(&broken));
        if std::fs::rename(db_path, &broken).is_err() {
            return None;
        }
        open_db(db_path)
            .inspect_err(|e| eprintln!("host-local: a new index cannot be made either: {e}"))
            .ok()
    }

    fn err(&self, op: &str, e: impl std::fmt::Display) -> Error {
        io_err(format!("{op} the index in {}", self.dir.display()), e)
    }

    /// Rebuilds the index from the files unless it was made from this very directory state.
    fn sync_index(&self) -> Result<(), Error> {
        let Some(db) = &self.db else {
            return Ok(());
        };
        let stamp = dir_stamp(&self.dir)?;
        if db
            .get(STAMP)
            .map_err(|e| self.err("reading", e))?
            .as_deref()
            == Some(&stamp[..])
        {
            return Ok(());
        }
        let mut b = sled::Batch::default();
        for kv in db.scan_prefix(b"id/") {
            let (k, _) = kv.map_err(|e| self.err("reading", e))?;
            b.remove(k);
        }
        for (ip, h) in self.reservations()? {
            b.insert(id_key(&h.container_id, &h.ifname, ip), Vec::<u8>::new());
        }
        b.insert(STAMP, stamp);
        db.apply_batch(b).map_err(|e| self.err("rebuilding", e))?;
        db.flush().map_err(|e| self.err("flushing", e))?;
        Ok(())
    }

    /// Every reservation file in the directory.
    fn reservations(&self) -> Result<Vec<(IpAddr, Holder)>, Error> {
        let mut out = Vec::new();
        for ip in reservation_names(&self.dir)? {
            if let Some(h) = self.holder(ip)? {
                out.push((ip, h));
            }
        }
        Ok(out)
    }

    fn file(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    /// Who holds `ip`, as its file says.
    pub fn holder(&self, ip: IpAddr) -> Result<Option<Holder>, Error> {
        let bytes = files::read(&self.file(ip))?;
        Ok(bytes.and_then(|b| Holder::parse(&String::from_utf8_lossy(&b))))
    }

    pub fn is_free(&self, ip: IpAddr) -> Result<bool, Error> {
        match std::fs::symlink_metadata(self.file(ip)) {
            Ok(_) => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(io_err(format!("inspecting {}", self.file(ip).display()), e)),
        }
    }

    pub fn last_reserved(&self, set: usize) -> Result<Option<IpAddr>, Error> {
        let path = self.dir.join(format!("last_reserved_ip.{set}"));
        Ok(files::read(&path)?.and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok()))
    }

    /// Reserves addresses for (containerID, ifname), all or none: each file is claimed with
    /// O_EXCL (an address someone holds is never taken over), then the round-robin marks,
    /// then the index. Returns the first address found taken, if any, having claimed none.
    pub fn reserve(&self, cid: &str, ifname: &str, ips: &[(usize, IpAddr)]) -> Result<(), Error> {
        let content = format!("{}\r\n{ifname}", cid.trim());
        let mut claimed: Vec<IpAddr> = Vec::new();
        for (_, ip) in ips {
            let made = files::create_new(&self.file(*ip), content.as_bytes());
            match made {
                Ok(true) => claimed.push(*ip),
                Ok(false) | Err(_) => {
                    for ip in &claimed {
                        let _ = files::remove(&self.file(*ip));
                    }
                    return match made {
                        Err(e) => Err(e.into()),
                        _ => Err(Error::new(
                            code::ADDRESS_IN_USE,
                            format!("{ip} was taken while it was being reserved"),
                        )),
                    };
                }
            }
        }
        let marks = ips.iter().try_for_each(|(set, ip)| {
            files::overwrite(
                &self.dir.join(format!("last_reserved_ip.{set}")),
                ip.to_string().as_bytes(),
            )
        });
        let indexed = marks.map_err(Error::from).and_then(|_| {
            self.update_index(|b| {
                for (_, ip) in ips {
                    b.insert(id_key(cid, ifname, *ip), Vec::<u8>::new());
                }
            })
        });
        if let Err(e) = indexed {
            for ip in &claimed {
                let _ = files::remove(&self.file(*ip));
            }
            return Err(e);
        }
        Ok(())
    }

    /// Applies `change` to the index with the directory's new stamp, and flushes; without
    /// an index there is nothing to do (one made later is built from the files).
    fn update_index(&self, change: impl FnOnce(&mut sled::Batch)) -> Result<(), Error> {
        let Some(db) = &self.db else {
            return Ok(());
        };
        let mut b = sled::Batch::default();
        change(&mut b);
        b.insert(STAMP, dir_stamp(&self.dir)?);
        db.apply_batch(b).map_err(|e| self.err("writing", e))?;
        db.flush().map_err(|e| self.err("flushing", e))?;
        Ok(())
    }

    /// The addresses held by (containerID, ifname), as the files say.
    pub fn ips_of(&self, cid: &str, ifname: &str) -> Result<Vec<IpAddr>, Error> {
        let Some(db) = &self.db else {
            // No index: found as the reference finds them, by reading every file.
            return Ok(self
                .reservations()?
                .into_iter()
                .filter(|(_, h)| h.is(cid, ifname))
                .map(|(ip, _)| ip)
                .collect());
        };
        let mut out = Vec::new();
        // The reference's oldest files held only the container ID.
        for prefix in [id_prefix(cid, ifname), id_prefix(cid, "")] {
            for kv in db.scan_prefix(&prefix) {
                let (k, _) = kv.map_err(|e| self.err("reading", e))?;
                let Ok(ip) = String::from_utf8_lossy(&k[prefix.len()..]).parse::<IpAddr>() else {
                    continue;
                };
                if self.holder(ip)?.is_some_and(|h| h.is(cid, ifname)) && !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
        Ok(out)
    }

    /// Frees everything (containerID, ifname) holds; returns what was freed. The files go
    /// first: once they are gone the addresses are free, whatever happens to the index.
    pub fn release(&self, cid: &str, ifname: &str) -> Result<Vec<IpAddr>, Error> {
        let ips = self.ips_of(cid, ifname)?;
        for ip in &ips {
            files::remove(&self.file(*ip))?;
        }
        self.update_index(|b| {
            for ip in &ips {
                b.remove(id_key(cid, ifname, *ip));
                b.remove(id_key(cid, "", *ip));
            }
        })?;
        Ok(ips)
    }

    /// Every (containerID, ifname) holding an address.
    pub fn attachments(&self) -> Result<HashSet<Holder>, Error> {
        Ok(self.reservations()?.into_iter().map(|(_, h)| h).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The store with its index, whatever its size.
    fn indexed(dir: &Path) -> Store {
        Store::open_indexed_above(dir, 0).unwrap()
    }

    #[test]
    fn reserve_find_release() {
        for limit in [0, FILES_ONLY_LIMIT] {
            reserve_find_release_with(limit);
        }
    }

    fn reserve_find_release_with(limit: usize) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_indexed_above(dir.path(), limit).unwrap();
        s.reserve("c1", "eth0", &[(0, ip("10.0.0.2")), (1, ip("fd00::2"))])
            .unwrap();
        let h = s.holder(ip("10.0.0.2")).unwrap().unwrap();
        assert_eq!((h.container_id.as_str(), h.ifname.as_str()), ("c1", "eth0"));
        assert_eq!(
            std::fs::read(dir.path().join("fd00::2")).unwrap(),
            b"c1\r\neth0",
            "the reference's format"
        );
        assert_eq!(s.ips_of("c1", "eth0").unwrap().len(), 2);
        assert!(s.ips_of("c1", "eth1").unwrap().is_empty());
        assert_eq!(s.last_reserved(1).unwrap(), Some(ip("fd00::2")));
        assert_eq!(s.release("c1", "eth0").unwrap().len(), 2);
        assert!(s.is_free(ip("10.0.0.2")).unwrap());
        assert!(s.attachments().unwrap().is_empty());
        // the last reserved address survives release: round robin goes on after it
        assert_eq!(s.last_reserved(0).unwrap(), Some(ip("10.0.0.2")));
    }

    #[test]
    fn a_taken_address_is_never_claimed_and_nothing_half_done_stays() {
        for limit in [0, FILES_ONLY_LIMIT] {
            a_taken_address_is_never_claimed_with(limit);
        }
    }

    fn a_taken_address_is_never_claimed_with(limit: usize) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_indexed_above(dir.path(), limit).unwrap();
        std::fs::write(dir.path().join("10.0.0.3"), "other\r\neth0").unwrap();
        let e = s
            .reserve("c1", "eth0", &[(0, ip("10.0.0.2")), (1, ip("10.0.0.3"))])
            .unwrap_err();
        assert_eq!(e.code, code::ADDRESS_IN_USE);
        assert!(s.is_free(ip("10.0.0.2")).unwrap());
        assert_eq!(
            s.holder(ip("10.0.0.3")).unwrap().unwrap().container_id,
            "other"
        );
    }

    #[test]
    fn files_written_behind_our_back_are_indexed() {
        let dir = tempfile::tempdir().unwrap();
        drop(indexed(dir.path()));
        // the reference plugin ran: a new reservation, and one in its oldest format
        std::fs::write(dir.path().join("10.0.0.7"), "abc\r\neth1").unwrap();
        std::fs::write(dir.path().join("10.0.0.8"), "old").unwrap();
        let s = indexed(dir.path());
        assert_eq!(s.ips_of("abc", "eth1").unwrap(), vec![ip("10.0.0.7")]);
        assert_eq!(s.ips_of("old", "eth0").unwrap(), vec![ip("10.0.0.8")]);
        assert_eq!(s.release("old", "eth0").unwrap(), vec![ip("10.0.0.8")]);
        assert!(!dir.path().join("10.0.0.8").exists());
    }

    #[test]
    fn an_index_sled_cannot_open_is_rebuilt_from_the_files() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = indexed(dir.path());
            s.reserve("c1", "eth0", &[(0, ip("10.0.0.2"))]).unwrap();
        }
        // damage every file of the index: whatever sled makes of it, the index is right
        for e in std::fs::read_dir(dir.path().join("sled"))
            .unwrap()
            .flatten()
        {
            if e.path().is_file() {
                std::fs::write(e.path(), b"garbage").unwrap();
            }
        }
        let s = indexed(dir.path());
        assert_eq!(s.ips_of("c1", "eth0").unwrap(), vec![ip("10.0.0.2")]);
        drop(s);
        // an index sled refuses outright is set aside and made anew
        std::fs::remove_dir_all(dir.path().join("sled")).unwrap();
        std::fs::write(dir.path().join("sled"), b"garbage").unwrap();
        let s = indexed(dir.path());
        assert_eq!(s.ips_of("c1", "eth0").unwrap(), vec![ip("10.0.0.2")]);
        assert!(dir.path().join("sled.broken").is_file());
    }

    #[test]
    fn opens_after_a_kill_inside_sleds_snapshot_write() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = indexed(dir.path());
            s.reserve("c1", "eth0", &[(0, ip("10.0.0.2"))]).unwrap();
        }
        // what a kill between creating and filling sled's snapshot leaves
        let torn = dir.path().join("sled/snap.FFFFFFFFFFFFFFFF.generating");
        std::fs::write(&torn, b"").unwrap();
        assert!(
            open_db(&dir.path().join("sled")).is_ok(),
            "the torn snapshot was read"
        );
        assert!(!torn.exists());
        let s = indexed(dir.path());
        assert_eq!(s.ips_of("c1", "eth0").unwrap(), vec![ip("10.0.0.2")]);
        assert!(
            !dir.path().join("sled.broken").exists(),
            "repaired, not rebuilt"
        );
    }

    #[test]
    fn opens_after_a_kill_inside_sleds_first_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sled")).unwrap();
        // conf text without its CRC: a kill between sled's two writes of it
        std::fs::write(
            dir.path().join("sled/conf"),
            "segment_size: 16384\nuse_compression: false\nversion: 0.34\n",
        )
        .unwrap();
        assert!(open_db(&dir.path().join("sled")).is_ok());
    }

    #[test]
    fn keeps_the_segment_size_an_index_was_made_with() {
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
        let s = indexed(dir.path());
        s.reserve("c1", "eth0", &[(0, ip("10.0.0.2"))]).unwrap();
    }

    #[test]
    fn a_small_store_is_served_from_its_files_without_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.reserve("c1", "eth0", &[(0, ip("10.0.0.2"))]).unwrap();
        std::fs::write(dir.path().join("10.0.0.9"), "old").unwrap();
        assert_eq!(s.ips_of("c1", "eth0").unwrap(), vec![ip("10.0.0.2")]);
        assert_eq!(s.ips_of("old", "eth1").unwrap(), vec![ip("10.0.0.9")]);
        assert_eq!(s.release("c1", "eth0").unwrap(), vec![ip("10.0.0.2")]);
        drop(s);
        assert!(
            !dir.path().join("sled").exists(),
            "an index was made for two reservations"
        );
    }

    #[test]
    fn a_store_that_outgrows_its_files_gets_an_index_made_from_them_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        for k in 0..FILES_ONLY_LIMIT {
            let name = format!("10.1.{}.{}", k / 250, k % 250 + 2);
            std::fs::write(dir.path().join(name), format!("f{k}\r\neth0")).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert!(s.db.is_some(), "no index above the limit");
        assert_eq!(s.ips_of("f7", "eth0").unwrap(), vec![ip("10.1.0.9")]);
        for k in 1..FILES_ONLY_LIMIT {
            s.release(&format!("f{k}"), "eth0").unwrap();
        }
        drop(s);
        // small again: the index that exists stays the one used, and stays right
        let s = Store::open(dir.path()).unwrap();
        assert!(s.db.is_some(), "the index was dropped");
        s.reserve("c1", "eth0", &[(0, ip("10.0.0.2"))]).unwrap();
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.ips_of("c1", "eth0").unwrap(), vec![ip("10.0.0.2")]);
        assert_eq!(s.attachments().unwrap().len(), 2, "f0 and c1");
    }
}
