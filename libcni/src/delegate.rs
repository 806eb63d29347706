//! Running another plugin as a delegate, exactly as a runtime would: found on CNI_PATH,
//! the same CNI_* environment, a config on stdin. The IPAM plugin named in `ipam.type`
//! gets the plugin's own config unchanged; a plugin that computes its IPAM config (the
//! overlay hands host-local the node's subnet) builds one with [`Delegate::with_config`].
//! Every wait is bounded (exec::DELEGATE_WAIT). An IPAM plugin linked into this binary
//! ([`Linked`]) runs on a thread instead when the binary of its name on CNI_PATH is the
//! same build: the same code, without a second process.

use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value;

use crate::exec::{self, Running};
use crate::skel::{self, CmdArgs, Plugin};
use crate::spec::{code, CniResult, Error};

/// A plugin linked into this binary, with the build ID its own binary carries in the ELF
/// section `.cni_rs_build`.
pub struct Linked {
    pub plugin: &'static str,
    pub build: [u8; 16],
    pub serve: &'static (dyn Plugin + Sync),
}

static LINKED: OnceLock<&'static Linked> = OnceLock::new();

/// Makes `linked` this process's in-process delegate (a plugin's `main`, first).
pub fn link(linked: &'static Linked) {
    let _ = LINKED.set(linked);
}

/// The linked plugin that `bin`, found for `plugin`, is a build of.
fn linked_as(plugin: &str, bin: &Path) -> Option<&'static Linked> {
    let l = LINKED.get()?;
    (l.plugin == plugin && crate::elf::section(bin, ".cni_rs_build") == Some(l.build)).then_some(l)
}

/// A plugin to delegate to, and the config it gets.
#[derive(Debug, Clone)]
pub struct Delegate {
    plugin: String,
    /// None: the invocation's own stdin.
    config: Option<Vec<u8>>,
}

impl Delegate {
    /// The config's IPAM plugin; None without one (`ipam` absent, null, `{}` or without a
    /// type: layer 2 only, as the reference plugins read it).
    pub fn ipam(args: &CmdArgs) -> Option<Delegate> {
        let plugin = args.conf.ipam.as_ref()?.get("type")?.as_str()?;
        (!plugin.is_empty()).then(|| Delegate {
            plugin: plugin.to_string(),
            config: None,
        })
    }

    /// `plugin` with a config built by the caller.
    pub fn with_config(plugin: &str, config: &Value) -> Delegate {
        Delegate {
            plugin: plugin.to_string(),
            config: Some(config.to_string().into_bytes()),
        }
    }

    /// `plugin` with config bytes passed exactly as given (flannel's delegate config,
    /// written as Go writes it and read back from its scratch file for DEL).
    pub fn with_bytes(plugin: &str, config: Vec<u8>) -> Delegate {
        Delegate {
            plugin: plugin.to_string(),
            config: Some(config),
        }
    }

    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// An IPAM plugin that speaks on the container's interface (dhcp: its DISCOVER and
    /// its RELEASE go there): its ADD starts once the interface is there and its DEL ends
    /// before the interface goes, as the reference orders them.
    pub fn needs_interface(&self) -> bool {
        self.plugin == "dhcp"
    }

    /// Starts `command`; wait for it with [`Running::wait`].
    pub fn start(&self, command: &str, args: &CmdArgs) -> Result<Running, Error> {
        let bin = exec::find(&self.plugin, &args.path)?;
        let stdin = self.config.as_deref().unwrap_or(&args.stdin);
        let Some(linked) = linked_as(&self.plugin, &bin) else {
            return exec::start(&bin, command, &[], stdin);
        };
        // What the process would get: our environment with CNI_COMMAND, the config.
        let (cmd, stdin) = (command.to_string(), stdin.to_vec());
        Running::on_thread(&self.plugin, command, move || {
            let env = |k: &str| match k {
                "CNI_COMMAND" => Some(cmd.clone()),
                _ => std::env::var(k).ok(),
            };
            skel::serve(linked.serve, &env, stdin)
        })
    }

    /// Runs `command` (DEL, CHECK, GC, STATUS) and returns what it printed.
    pub fn run(&self, command: &str, args: &CmdArgs) -> Result<Option<Value>, Error> {
        self.start(command, args)?.wait()
    }

    /// Runs `command` through the config's IPAM plugin, if it has one: STATUS and GC of
    /// a plugin whose interfaces live in namespaces it cannot list.
    pub fn run_ipam(command: &str, args: &CmdArgs) -> Result<(), Error> {
        match Delegate::ipam(args) {
            Some(i) => i.run(command, args).map(|_| ()),
            None => Ok(()),
        }
    }
}

/// The result a delegated ADD printed, version-neutral; one without a version is read in
/// the config's.
pub fn result(out: Option<Value>, delegate: &str, args: &CmdArgs) -> Result<CniResult, Error> {
    let out =
        out.ok_or_else(|| Error::new(code::DELEGATE, format!("{delegate} ADD printed no result")))?;
    CniResult::from_value_in(out, &args.conf.cni_version)
}
