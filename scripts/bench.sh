#!/usr/bin/env bash
# Benchmarks, ours next to Debian's reference plugins (1.1.1) and the raw kernel paths,
# measured side by side in one run, in namespaces this script creates and removes:
#   control [N]  ADD/DEL latency, CPU and peak RSS per call of bridge (with and without
#                ipMasq; bridge+host-local also by the floor, bench/floor), macvlan, ptp
#                and podman's chain; DEL returned vs veth gone;
#                20-way parallel ADD/DEL; binary sizes (scripts/bench_control.py)
#   data         iperf3 TCP, ping RTT and UDP loss of same-host and cross-host paths
#                (scripts/bench_data.py)
#   scale        host-local with 100/1,000/10,000 allocations (scripts/bench_control.py);
#                vxlan-overlay-agent with 10/50/100/250 hosts on one etcd (scripts/bench_agent.py)
#   trace [N]    where one bridge+host-local ADD and DEL spend their time: the phases
#                the plugins mark with CNI_RS_TRACE, median of N (bench/trace.csv);
#                control and all end with it (N=20)
#   all          the three
# Each writes its figures (CSV and JSON) under bench/; then bench/RESULTS.md and the
# plots bench/latency.png and bench/dataplane.png are drawn again from what is there
# (scripts/bench_report.py).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "scripts/bench.sh needs root (network namespaces)" >&2; exit 1; fi
usage() { echo "usage: scripts/bench.sh control [N] | trace [N] | data | scale | all" >&2; exit 2; }
what=${1:-}
n=${2:-200}
case "$what" in control|trace|data|scale|all) ;; *) usage ;; esac
# time: GNU time for peak RSS; iperf3: the data plane; gnuplot-nox: the plots;
# etcd-server/etcd-client: the agent's scale run.
scripts/deps.sh iproute2 nftables iputils-ping containernetworking-plugins python3 time \
  iperf3 gnuplot-nox etcd-server etcd-client
. scripts/build.sh
ours=$bin ref=/usr/lib/cni out=$PWD/bench
mkdir -p "$out"
tag=cnirs-bench-$$
made=()
cleanup() { for ns in "${made[@]}"; do ip netns delete "$ns" 2>/dev/null || true; done; }
trap cleanup EXIT
trap "exit 130" INT TERM

# A host namespace per side, with a NIC for macvlans (one end of a veth pair), and the
# container namespaces the calls put interfaces in. control has a third side, the floor
# (bench/floor: the least a bridge+host-local ADD/DEL must do), for bridge+host-local.
make_sides() {
  local count=$1; shift
  for side in "$@"; do
    ip netns add "$tag-$side"; made+=("$tag-$side")
    ip -n "$tag-$side" link add benchnic0 type veth peer name benchnic0p
    ip -n "$tag-$side" link set benchnic0 up
    ip -n "$tag-$side" link set benchnic0p up
    for i in $(seq 0 "$count"); do ip netns add "$tag-$side-$i"; made+=("$tag-$side-$i"); done
  done
}

if [ "$what" = control ] || [ "$what" = all ]; then
  make_sides "$n" ours ref floor
  python3 scripts/bench_control.py control "$tag" "$out" "$ours" "$ref" "$n" "$bin/cni-floor"
  cleanup; made=()
fi
# control ends with the breakdown of its build's ADD and DEL (20 traced calls).
if [ "$what" = trace ] || [ "$what" = control ] || [ "$what" = all ]; then
  traced=$([ "$what" = trace ] && echo "$n" || echo 20)
  make_sides "$traced" ours ref
  python3 scripts/bench_control.py trace "$tag" "$out" "$ours" "$ref" "$traced"
  cleanup; made=()
  [ "$what" = trace ] && exit 0
fi
if [ "$what" = scale ] || [ "$what" = all ]; then
  make_sides 40 ours ref
  python3 scripts/bench_control.py scale "$tag" "$out" "$ours" "$ref"
  cleanup; made=()
  python3 scripts/bench_agent.py "$out" "$ours" 10 50 100 250
fi
if [ "$what" = data ] || [ "$what" = all ]; then
  python3 scripts/bench_data.py "$out" "$ours" "$ref"
fi
python3 scripts/bench_report.py "$out" "$ours" "$ref"
