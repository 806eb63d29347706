//! Running a plugin binary: find it on CNI_PATH, start it with CNI_* variables and the
//! config on stdin, and decode what it printed: a result, nothing, or an error object whose
//! code and message are kept. Used by plugins for delegates and by the runtime side.

use std::io::Write;
use std::os::unix::process::CommandExt;
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

/// A plugin started and not yet waited for, so the caller can work meanwhile.
pub struct Running {
    child: Child,
    name: String,
    command: String,
}

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
        child,
        name,
        command: command.to_string(),
    })
}

/// A plugin must not outlive its caller: a runtime that kills a plugin on timeout kills
/// only that process, and an orphaned IPAM plugin could then allocate after the DEL that
/// follows, leaking the address.
fn die_with_parent(parent: u32) -> std::io::Result<()> {
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
    /// What the plugin printed, or its error object with its own code.
    pub fn wait(self) -> Result<Option<Value>, Error> {
        let Running {
            child,
            name,
            command,
        } = self;
        let out = child.wait_with_output().map_err(|e| {
            Error::new(code::IO, format!("waiting for {name}")).details(e.to_string())
        })?;
        decode(&name, &command, out)
    }

    /// Like [`Running::wait`], but kills the plugin once `timeout` has passed.
    pub fn wait_timeout(self, timeout: Duration) -> Result<Option<Value>, Error> {
        let pid = self.child.id() as libc::pid_t;
        let (name, command) = (self.name.clone(), self.command.clone());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(self.wait());
        });
        match rx.recv_timeout(timeout) {
            Ok(outcome) => outcome,
            Err(_) => {
                // SAFETY: signalling our own child, which is not reaped until the waiter ends.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = rx.recv();
                Err(Error::new(
                    code::TRY_AGAIN,
                    format!("{name} {command} timed out after {timeout:?}"),
                ))
            }
        }
    }
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
