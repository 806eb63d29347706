#!/usr/bin/env bash
# Copies every plugin binary into a CNI plugin directory (default /opt/cni/bin) and the
# overlay's node agent into /usr/local/sbin, building the release binaries first if they
# are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-/opt/cni/bin}
plugins=(bridge macvlan ptp host-device host-local static loopback tuning portmap firewall bandwidth vxlan-overlay)
for p in "${plugins[@]}" vxlan-overlay-agent; do
  [ -x "target/release/$p" ] || { scripts/deps.sh protobuf-compiler; cargo build --release --bins; break; }
done
mkdir -p "$dest"
for p in "${plugins[@]}"; do
  install -m 0755 "target/release/$p" "$dest/$p"
done
install -D -m 0755 target/release/vxlan-overlay-agent /usr/local/sbin/vxlan-overlay-agent
echo "installed ${plugins[*]} into $dest, vxlan-overlay-agent into /usr/local/sbin"
