//! Running a plugin binary: find it on CNI_PATH, start it with CNI_* variables and the
//! config on stdin, and decode what it printed: a result, nothing, or an error object whose
//! code and message are kept. Used by plugins for delegates and by the runtime side.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::spec::{code, Error};

/// Finds `plugin` in the CNI_PATH directories.
pub fn find(plugin: &str, path: &[PathBuf]) -> Result<PathBuf, Error> {
    if plugin.is_empty() || plugin.contains('/') {
        return Err(Error::config(format!("invalid plugin type {plugin:?}")));
    }
    path.iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            let dirs: Vec<_> = path.iter().map(|d| d.display().to_string()).collect();
            Error::config(format!("plugin {plugin:?} not found in CNI_PATH"))
                .details(dirs.join(":"))
        })
}

/// A plugin started and not yet waited for, so the caller can work meanwhile. Dropped
/// unwaited (the caller failed), it is still waited for, bounded, so it never outlives
/// the work that depends on it.
pub struct Running {
    work: Option<Work>,
    name: String,
    command: String,
}

/// Where a started plugin runs: its own process, or a thread of ours
/// ([`Running::on_thread`]) that sends what the process would have printed.
enum Work {
    Process(Child),
    Thread(mpsc::Receiver<Result<Option<Value>, Error>>),
}

/// How long a plugin waits for a delegate: longer than any delegate needs, shorter than
/// a runtime's own timeout.
pub const DELEGATE_WAIT: Duration = Duration::from_secs(55);

/// Starts `bin` with the environment of this process plus `env`, and writes `stdin`.
pub fn start(
    bin: &Path,
    command: &str,
    env: &[(&str, String)],
    stdin: &[u8],
) -> Result<Running, Error> {
    let name = bin.display().to_string();
    let parent = std::process::id();
    let mut cmd = Command::new(bin);
    cmd.env("CNI_COMMAND", command)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || die_with_parent(parent));
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::new(code::IO, format!("starting {name}")).details(e.to_string()))?;
    if let Some(mut pipe) = child.stdin.take() {
        // A plugin that exits without reading its input closes the pipe: not our error.
        let _ = pipe.write_all(stdin);
    }
    Ok(Running {
        work: Some(Work::Process(child)),
        name,
        command: command.to_string(),
    })
}

/// A plugin must not outlive its caller: a runtime that kills a plugin on timeout kills
/// only that process, and an orphaned IPAM plugin could then allocate after the DEL that
/// follows, leaking the address.
pub(crate) fn die_with_parent(parent: u32) -> std::io::Result<()> {
    // SAFETY: prctl and getppid are async-signal-safe syscalls.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() as u32 != parent {
            return Err(std::io::Error::other(
                "parent exited before the plugin started",
            ));
        }
    }
    Ok(())
}

impl Running {
    /// `run` on a thread of this process, for a plugin linked into it: waited for as a
    /// process is, `run` returning what the process would have printed.
    pub fn on_thread(
        name: &str,
        command: &str,
        run: impl FnOnce() -> Result<Option<Value>, Error> + Send + 'static,
    ) -> Result<Running, Error> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            // A process's main thread has 8 MB; the default for a thread (2 MB, or
            // RUST_MIN_STACK from the runtime's environment) would not be the same.
            .stack_size(8 << 20)
            .spawn(move || {
                let _ = tx.send(run());
            })
            .map_err(|e| {
                Error::new(code::IO, format!("starting {name} in process")).details(e.to_string())
            })?;
        // std names the handle as an integer, libc (musl) as a pointer.
        move_off_this_cpu(thread.as_pthread_t() as usize as libc::pthread_t);
        Ok(Running {
            work: Some(Work::Thread(rx)),
            name: name.to_string(),
            command: command.to_string(),
        })
    }

    /// What the plugin printed, or its error object with its own code; a delegate that
    /// takes longer than [`DELEGATE_WAIT`] is killed, or left behind if it is a thread
    /// (code 11).
    pub fn wait(self) -> Result<Option<Value>, Error> {
        self.wait_timeout(DELEGATE_WAIT)
    }

    /// Like [`Running::wait`], but kills the plugin once `timeout` has passed (a thread
    /// cannot be killed: it is left to end with the process).
    pub fn wait_timeout(mut self, timeout: Duration) -> Result<Option<Value>, Error> {
        let what = format!("{} {}", self.name, self.command);
        match self.work.take().expect("a Running is waited for once") {
            Work::Process(child) => {
                let out = wait_bounded(child, timeout, &what)?;
                decode(&self.name, &self.command, out)
            }
            Work::Thread(rx) => rx.recv_timeout(timeout).unwrap_or_else(|e| match e {
                mpsc::RecvTimeoutError::Timeout => Err(Error::new(
                    code::TRY_AGAIN,
                    format!("{what} timed out after {timeout:?}"),
                )),
                mpsc::RecvTimeoutError::Disconnected => Err(Error::new(
                    code::INTERNAL,
                    format!("{what} ended without a reply"),
                )),
            }),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.work.is_some() {
            let unwaited = Running {
                work: self.work.take(),
                name: std::mem::take(&mut self.name),
                command: std::mem::take(&mut self.command),
            };
            let _ = unwaited.wait();
        }
    }
}

/// Moves `thread`, started and not yet run, to another CPU this process may use, and
/// leaves it free to move again. A new thread is queued on its parent's CPU, and an idle
/// CPU is not woken to take it until the busy one's next tick: the plugin's own work
/// would hold it off for its whole length, where an exec'd delegate runs beside it (exec
/// places a process on an idle CPU). Nothing to do on one CPU.
fn move_off_this_cpu(thread: libc::pthread_t) {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: cpu_set_t is plain bits; the calls read and write the sets we own, about a
    // thread whose handle we hold.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        let here = libc::sched_getcpu();
        if here < 0 || libc::pthread_getaffinity_np(thread, size, &mut allowed) != 0 {
            return;
        }
        let mut elsewhere = allowed;
        libc::CPU_CLR(here as usize, &mut elsewhere);
        if libc::CPU_COUNT(&elsewhere) == 0
            || libc::pthread_setaffinity_np(thread, size, &elsewhere) != 0
        {
            return;
        }
        libc::pthread_setaffinity_np(thread, size, &allowed);
    }
}

/// Waits for `child` and collects its output; kills it once `timeout` has passed (code 11).
pub(crate) fn wait_bounded(
    child: Child,
    timeout: Duration,
    what: &str,
) -> Result<std::process::Output, Error> {
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(out) => out,
        Err(_) => {
            // SAFETY: signalling our own child, which is not reaped until the waiter ends.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.recv();
            return Err(Error::new(
                code::TRY_AGAIN,
                format!("{what} timed out after {timeout:?}"),
            ));
        }
    };
    out.map_err(|e| Error::new(code::IO, format!("waiting for {what}")).details(e.to_string()))
}

fn decode(name: &str, command: &str, out: std::process::Output) -> Result<Option<Value>, Error> {
    let printed: Option<Value> = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(serde_json::from_slice(&out.stdout).map_err(|e| {
            Error::new(code::DELEGATE, format!("{name} {command} printed no JSON"))
                .details(format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
        })?)
    };
    if out.status.success() {
        return Ok(printed);
    }
    match printed.map(serde_json::from_value::<Error>) {
        Some(Ok(e)) => Err(e),
        _ => Err(Error::new(
            code::DELEGATE,
            format!("{name} {command} failed: {}", out.status),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn affinity(thread: libc::pthread_t) -> Vec<usize> {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: reads the mask of a live thread we hold the handle of into a set we own.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(libc::pthread_getaffinity_np(thread, size, &mut set), 0);
            (0..libc::CPU_SETSIZE as usize)
                .filter(|c| libc::CPU_ISSET(*c, &set))
                .collect()
        }
    }

    #[test]
    fn a_moved_thread_is_left_free_to_run_anywhere_it_could() {
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || rx.recv());
        let handle = thread.as_pthread_t() as usize as libc::pthread_t;
        let before = affinity(handle);
        move_off_this_cpu(handle);
        assert_eq!(affinity(handle), before);
        tx.send(()).unwrap();
        thread.join().unwrap().unwrap();
    }
}
