# Sourced by the other scripts: builds the release binaries as the project ships them,
# static musl executables, and sets `bin` to where they are. A plugin is a process that
# lives for milliseconds; on the machines we measured glibc's start-up (CPUID cache
# probing, relocations) costs about 1 ms per process, musl's static start 0.2 ms, and
# an ADD starts two (docs/DESIGN.md). Installs the Rust target and musl-tools (musl-gcc
# for the C part of ring, which the agent's TLS stack builds) and protoc (the etcd
# client's build) when missing.
export CARGO_BUILD_TARGET="$(uname -m)-unknown-linux-musl"
scripts/deps.sh musl-tools protobuf-compiler || return 1
if ! rustup target list --installed | grep -qx "$CARGO_BUILD_TARGET"; then
  rustup target add "$CARGO_BUILD_TARGET" || return 1
fi
cargo build --release --bins --quiet || return 1
bin=$PWD/target/$CARGO_BUILD_TARGET/release
