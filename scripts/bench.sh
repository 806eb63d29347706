#!/usr/bin/env bash
# Benchmarks our bridge+host-local against Debian's reference plugins, side by side in
# one run: N sequential ADDs then N DELs (default 200; DEL gets the ADD result as
# prevResult, as runtimes pass it) in a throwaway host namespace with
# the same config, per-invocation median/p90/p99 wall time, peak RSS of one invocation
# (the plugin and its IPAM delegate), and the ratios; calls alternate between ours and
# the reference so both see the same load. --chain runs podman's default list instead
# (bridge with ipMasq, portmap, firewall, tuning) through our cnitool for both sides;
# --macvlan macvlan+host-local on a NIC of each host namespace; --host-local host-local
# alone, with the cost of its reservation files measured apart.
# Usage: scripts/bench.sh [N] [--masq|--chain|--macvlan|--host-local]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "scripts/bench.sh needs root (network namespaces)" >&2; exit 1; fi
n=${1:-200}
masq=false mode=bridge
case "${2:-}" in
  --masq) masq=true ;;
  --chain) masq=true mode=chain ;;
  --host-local) mode=host-local ;;
  --macvlan) mode=macvlan ;;
  "") ;;
  *) echo "usage: scripts/bench.sh [N] [--masq|--chain|--macvlan|--host-local]" >&2; exit 2 ;;
esac
scripts/deps.sh iproute2 nftables containernetworking-plugins python3 time
cargo build --release --bins --quiet
tag=cnirs-bench-$$
made=()
cleanup() { for ns in "${made[@]}"; do ip netns delete "$ns" 2>/dev/null || true; done; }
trap cleanup EXIT
trap "exit 130" INT TERM
for side in ours ref; do
  ip netns add "$tag-$side"; made+=("$tag-$side")
  # a NIC for macvlans: one end of a veth pair, the other end beside it
  ip -n "$tag-$side" link add benchnic0 type veth peer name benchnic0p
  ip -n "$tag-$side" link set benchnic0 up
  ip -n "$tag-$side" link set benchnic0p up
  for i in $(seq "$n"); do ip netns add "$tag-$side-$i"; made+=("$tag-$side-$i"); done
done
python3 scripts/bench_driver.py "$tag" "$n" "$mode" "$masq" "$PWD/target/release" /usr/lib/cni
