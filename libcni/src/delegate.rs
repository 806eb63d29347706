//! Running another plugin as a delegate (the IPAM plugin named in `ipam.type`), exactly as
//! a runtime would: found on CNI_PATH, same environment, same config on stdin.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};

use serde_json::Value;

use crate::skel::CmdArgs;
use crate::spec::{code, CniResult, Error};

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

/// Runs `plugin` with `command` (ADD, DEL, CHECK, GC, STATUS) and returns what it printed.
pub fn exec(plugin: &str, command: &str, args: &CmdArgs) -> Result<Option<Value>, Error> {
    spawn(plugin, command, args)?.wait()
}

/// A delegate started and not yet waited for, so the caller can work meanwhile.
pub struct Running {
    child: Child,
    name: String,
    command: String,
}

/// Starts `plugin` with `command` and its input; [`Running::wait`] collects the outcome.
pub fn spawn(plugin: &str, command: &str, args: &CmdArgs) -> Result<Running, Error> {
    let bin = find(plugin, &args.path)?;
    start(&bin, command, &args.stdin)
}

fn start(bin: &Path, command: &str, stdin: &[u8]) -> Result<Running, Error> {
    let name = bin.display().to_string();
    let parent = std::process::id();
    let mut cmd = Process::new(bin);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || die_with_parent(parent));
    }
    let mut child = cmd
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
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

/// A delegate must not outlive us: a runtime that kills a plugin on timeout kills only
/// that process, and an orphaned IPAM plugin could then allocate after the DEL that
/// follows, leaking the address.
fn die_with_parent(parent: u32) -> std::io::Result<()> {
    // SAFETY: prctl and getppid are async-signal-safe syscalls.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() as u32 != parent {
            return Err(std::io::Error::other(
                "parent exited before the delegate started",
            ));
        }
    }
    Ok(())
}

impl Running {
    /// The delegate's output, or its error object with its own code.
    pub fn wait(self) -> Result<Option<Value>, Error> {
        let Running {
            child,
            name,
            command,
        } = self;
        let out = child.wait_with_output().map_err(|e| {
            Error::new(code::IO, format!("waiting for {name}")).details(e.to_string())
        })?;
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

    /// The result of a delegated ADD, version-neutral.
    pub fn result(self) -> Result<CniResult, Error> {
        let what = format!("{} {} printed no result", self.name, self.command);
        CniResult::from_value(
            self.wait()?
                .ok_or_else(|| Error::new(code::DELEGATE, what))?,
        )
    }
}
