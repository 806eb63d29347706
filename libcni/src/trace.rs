//! Timestamps of a call's phases, to see where its time goes (`scripts/bench.sh trace`):
//! with `CNI_RS_TRACE` naming a file, every [`mark`] appends
//! `<CLOCK_MONOTONIC ns> <pid> <program> <phase>` to it in one write, so the lines of a
//! plugin and of the IPAM plugin it started (which inherits the variable) interleave on
//! one clock. Unset, a mark costs one look at a cell.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::OnceLock;

static SINK: OnceLock<Option<File>> = OnceLock::new();

fn sink() -> Option<&'static File> {
    SINK.get_or_init(|| {
        let path = std::env::var_os("CNI_RS_TRACE")?;
        OpenOptions::new()
            .append(true)
            .create(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .ok()
    })
    .as_ref()
}

/// Records that this process reached `phase`; a trace that cannot be written is dropped,
/// never a failure of the call.
pub fn mark(phase: &str) {
    let Some(mut file) = sink() else {
        return;
    };
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let ns = now.tv_sec as i128 * 1_000_000_000 + now.tv_nsec as i128;
    // A plugin linked into another marks from a thread named after it.
    let thread = std::thread::current();
    let linked = thread.name().filter(|n| *n != "main").map(String::from);
    let program = linked
        .or_else(|| {
            std::env::args_os().next().and_then(|a| {
                let name = std::path::Path::new(&a)
                    .file_name()?
                    .to_string_lossy()
                    .into_owned();
                Some(name.replace(char::is_whitespace, "_"))
            })
        })
        .unwrap_or_default();
    let line = format!("{ns} {} {program} {phase}\n", std::process::id());
    let _ = file.write_all(line.as_bytes());
}
