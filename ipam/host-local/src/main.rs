//! The `host-local` binary: the plugin of lib.rs, and the build ID that tells a plugin
//! linked with the same library that it may run it in its own process.

use libcni::skel;

/// Read from the file by `libcni::elf` (`delegate::Linked`); referenced below so the linker
/// keeps it.
#[used]
#[link_section = ".cni_rs_build"]
static BUILD: [u8; 16] = host_local::BUILD;

/// Plugins live for milliseconds: see libcni::arena.
#[global_allocator]
static ALLOC: libcni::arena::Arena = libcni::arena::Arena::new();

fn main() {
    std::hint::black_box(&BUILD);
    skel::run(&host_local::HostLocal, "CNI host-local plugin (cni-rs)")
}
