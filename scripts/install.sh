#!/usr/bin/env bash
# Copies every plugin binary into a CNI plugin directory (default /opt/cni/bin),
# building the release binaries first if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-/opt/cni/bin}
plugins=(bridge macvlan ptp host-device host-local static loopback tuning portmap firewall bandwidth)
for p in "${plugins[@]}"; do
  [ -x "target/release/$p" ] || { cargo build --release --bins; break; }
done
mkdir -p "$dest"
for p in "${plugins[@]}"; do
  install -m 0755 "target/release/$p" "$dest/$p"
done
echo "installed ${plugins[*]} into $dest"
