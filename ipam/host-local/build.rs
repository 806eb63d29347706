//! The build ID (lib.rs `BUILD`): a hash of every source the in-process host-local is made
//! of (this crate's and libcni's sources and manifests, the lock file, the target, the
//! profile, its cfg and the compiler), so two binaries carry the same ID only when they
//! run the same code. Dependencies' features are not in it: ship binaries of one build.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        // Not through symlinks: a loop would never end.
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = here
        .join("../..")
        .canonicalize()
        .expect("the workspace's root");
    let here = here.canonicalize().expect("this crate's directory");
    let mut inputs = Vec::new();
    for dir in [here.join("src"), root.join("libcni/src")] {
        println!("cargo:rerun-if-changed={}", dir.display());
        files(&dir, &mut inputs);
    }
    for f in [
        here.join("Cargo.toml"),
        here.join("build.rs"),
        root.join("libcni/Cargo.toml"),
        root.join("Cargo.toml"),
        root.join("Cargo.lock"),
    ] {
        println!("cargo:rerun-if-changed={}", f.display());
        inputs.push(f);
    }
    inputs.sort();
    let rustc = std::env::var("RUSTC").unwrap_or_default();
    let compiler = std::process::Command::new(&rustc)
        .arg("-vV")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let mut halves = [0u64; 2];
    for (i, half) in halves.iter_mut().enumerate() {
        let mut h = DefaultHasher::new();
        i.hash(&mut h);
        compiler.hash(&mut h);
        for k in [
            "TARGET",
            "PROFILE",
            "OPT_LEVEL",
            "DEBUG",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_PKG_VERSION",
        ] {
            std::env::var(k).unwrap_or_default().hash(&mut h);
        }
        // The target's cfg (panic strategy, target features, debug assertions) and ours.
        let mut cfg: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("CARGO_CFG_") || k.starts_with("CARGO_FEATURE_"))
            .collect();
        cfg.sort();
        cfg.hash(&mut h);
        for f in &inputs {
            f.strip_prefix(&root).unwrap_or(f).hash(&mut h);
            std::fs::read(f).unwrap_or_default().hash(&mut h);
        }
        *half = h.finish();
    }
    let bytes: Vec<String> = halves
        .iter()
        .flat_map(|h| h.to_le_bytes())
        .map(|b| format!("{b:#04x}"))
        .collect();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    std::fs::write(out.join("build_id.rs"), format!("[{}]", bytes.join(", ")))
        .expect("writing the build ID");
}
