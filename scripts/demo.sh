#!/usr/bin/env bash
# The main job, shown: builds the plugins, then cnitool wires two containers (throwaway
# network namespaces) to a bridge in a throwaway "host" namespace exactly as a runtime
# would, shows their addresses and pings between them; then two "hosts" on a switch get
# a container each on vxlan-overlay and those ping each other across the hosts through
# VXLAN. Everything is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "scripts/demo.sh needs root (network namespaces)" >&2; exit 1; fi
scripts/deps.sh iproute2 nftables iputils-ping
. scripts/build.sh
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
nodes=(cnirs-demo-n1-$tag cnirs-demo-n2-$tag) pods=(cnirs-demo-p1-$tag cnirs-demo-p2-$tag)
switch=cnirs-demo-sw-$tag
cleanup() {
  for c in "${ctrs[@]}"; do
    cnitool del "$c" >/dev/null 2>&1 || true
    ip netns delete "$c" 2>/dev/null || true
  done
  for ns in "$host" "${pods[@]}" "${nodes[@]}" "$switch"; do ip netns delete "$ns" 2>/dev/null || true; done
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

echo "== across hosts: two host namespaces on a switch, vxlan-overlay with a static node table"
cat > "$work/net.d/20-overlay.conflist" <<JSON
{"cniVersion": "1.1.0", "name": "overlay",
 "plugins": [{"type": "vxlan-overlay", "network": "10.244.0.0/16", "dataDir": "$work/overlay",
              "store": {"type": "static", "nodes": [
                {"underlayIP": "192.168.77.1", "subnet": "10.244.1.0/24"},
                {"underlayIP": "192.168.77.2", "subnet": "10.244.2.0/24"}]}}]}
JSON
ip netns add "$switch"
ip -n "$switch" link add sw0 type bridge
ip -n "$switch" link set sw0 up
for i in 0 1; do
  n=${nodes[$i]} p=${pods[$i]}
  ip netns add "$n"
  ip netns add "$p"
  ip -n "$switch" link add "port$i" type veth peer name ul0 netns "$n"
  ip -n "$switch" link set "port$i" master sw0 up
  ip -n "$n" link set ul0 up
  ip -n "$n" addr add "192.168.77.$((i + 1))/24" dev ul0
  ip -n "$n" route add default dev ul0
  echo "== cnitool add overlay $p (on host $((i + 1)))"
  ip netns exec "$n" env NETCONFPATH="$work/net.d" CNI_PATH="$bin" CNI_CACHE_DIR="$work/cache-$i" \
    "$bin/cnitool" add overlay "/var/run/netns/$p"
  ip -n "$p" -br addr show dev eth0
done
far=$(ip -n "${pods[1]}" -4 -o addr show dev eth0 | awk '{sub("/.*", "", $4); print $4}')
echo "== host 1: the VXLAN device and the peer it knows"
ip -n "${nodes[0]}" -d -br link show flannel.1
ip -n "${nodes[0]}" route show proto 73
echo "== ${pods[0]} on host 1 pings ${pods[1]} on host 2 ($far) through VXLAN"
ip netns exec "${pods[0]}" ping -c 3 -i 0.2 -W 1 "$far"
for i in 0 1; do
  ip netns exec "${nodes[$i]}" env NETCONFPATH="$work/net.d" CNI_PATH="$bin" CNI_CACHE_DIR="$work/cache-$i" \
    "$bin/cnitool" del overlay "/var/run/netns/${pods[$i]}"
done
echo "done"
