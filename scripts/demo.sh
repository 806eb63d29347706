#!/usr/bin/env bash
# The main job, shown: builds the plugins, then cnitool wires two containers (throwaway
# network namespaces) to a bridge in a throwaway "host" namespace exactly as a runtime
# would, shows their addresses, pings between them, and removes everything.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "scripts/demo.sh needs root (network namespaces)" >&2; exit 1; fi
scripts/deps.sh iproute2 nftables iputils-ping
cargo build --release --bins --quiet
bin=$PWD/target/release
tag=$$
host=cnirs-demo-host-$tag
ctrs=(cnirs-demo-a-$tag cnirs-demo-b-$tag)
work=$(mktemp -d)
mkdir -p "$work/net.d"
cat > "$work/net.d/10-demo.conflist" <<JSON
{"cniVersion": "1.1.0", "name": "demo",
 "plugins": [{"type": "bridge", "bridge": "cni0", "isDefaultGateway": true, "ipMasq": true,
              "ipam": {"type": "host-local", "dataDir": "$work/data",
                       "ranges": [[{"subnet": "10.88.0.0/24"}], [{"subnet": "fd88::/64"}]]}}]}
JSON
cleanup() {
  for c in "${ctrs[@]}"; do
    cnitool del "$c" >/dev/null 2>&1 || true
    ip netns delete "$c" 2>/dev/null || true
  done
  ip netns delete "$host" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# cnitool, run in the host namespace with the demo's configs, plugins and cache.
cnitool() {
  ip netns exec "$host" env NETCONFPATH="$work/net.d" CNI_PATH="$bin" CNI_CACHE_DIR="$work/cache" \
    "$bin/cnitool" "$1" demo "/var/run/netns/$2"
}
ip netns add "$host"
for c in "${ctrs[@]}"; do
  ip netns add "$c"
  echo "== cnitool add demo $c"
  cnitool add "$c"
  ip -n "$c" -br addr show dev eth0
done
a=$(ip -n "${ctrs[1]}" -4 -o addr show dev eth0 | awk '{sub("/.*", "", $4); print $4}')
echo "== host namespace: bridge and ports"
ip -n "$host" -br link show type bridge
ip -n "$host" -br link show master cni0
echo "== ${ctrs[0]} pings ${ctrs[1]} ($a)"
ip netns exec "${ctrs[0]}" ping -c 3 -i 0.2 -W 1 "$a"
echo "== cnitool check, then del both; the bridge has no ports left"
for c in "${ctrs[@]}"; do cnitool check "$c" && cnitool del "$c"; done
ip -n "$host" -br link show master cni0
echo "done"
