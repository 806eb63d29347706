//! Running another plugin as a delegate (the IPAM plugin named in `ipam.type`), exactly as
//! a runtime would: found on CNI_PATH, same environment, same config on stdin.

use serde_json::Value;

use crate::exec::{self, Running};
use crate::skel::CmdArgs;
use crate::spec::{code, CniResult, Error};

/// Runs `plugin` with `command` (ADD, DEL, CHECK, GC, STATUS) and returns what it printed.
pub fn exec(plugin: &str, command: &str, args: &CmdArgs) -> Result<Option<Value>, Error> {
    spawn(plugin, command, args)?.wait()
}

/// Starts `plugin` with `command`; wait for it with [`Running::wait`] or [`result`].
pub fn spawn(plugin: &str, command: &str, args: &CmdArgs) -> Result<Running, Error> {
    let bin = exec::find(plugin, &args.path)?;
    exec::start(&bin, command, &[], &args.stdin)
}

/// The result of a delegated ADD, version-neutral.
pub fn result(running: Running) -> Result<CniResult, Error> {
    let out = running.wait()?;
    CniResult::from_value(
        out.ok_or_else(|| Error::new(code::DELEGATE, "IPAM ADD printed no result"))?,
    )
}
