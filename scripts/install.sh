#!/usr/bin/env bash
# Copies every plugin binary into a CNI plugin directory (default /opt/cni/bin) and the
# overlay's node agent into /usr/local/sbin, after building them (static musl
# executables, scripts/build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-/opt/cni/bin}
plugins=(bridge macvlan ptp host-device host-local static dhcp loopback tuning portmap firewall bandwidth vxlan-overlay flannel sbr tap dummy)
. scripts/build.sh
mkdir -p "$dest"
for p in "${plugins[@]}"; do
  install -m 0755 "$bin/$p" "$dest/$p"
done
install -D -m 0755 "$bin/vxlan-overlay-agent" /usr/local/sbin/vxlan-overlay-agent
echo "installed ${plugins[*]} into $dest, vxlan-overlay-agent into /usr/local/sbin"
