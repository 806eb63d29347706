#!/usr/bin/env bash
# Runs every test: unit tests and the integration tests, which run the release binaries
# inside network namespaces they create (root needed). Ends with "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "scripts/test.sh needs root (network namespaces)" >&2; exit 1; fi
# iproute2: namespaces and links; nftables: ipMasq and macspoofchk; iputils-ping: traffic;
# containernetworking-plugins: the reference plugins the comparison tests run;
# python3: the TCP servers and clients of the port mapping tests; containerd, runc,
# podman, busybox-static: the real runtimes and the container image of tests/clients/;
# etcd-server, etcd-client: the etcd the agent tests start in a namespace of their own, and
# etcdctl; openssl: the CA and certificates of the agent's TLS test; dnsmasq-base: the DHCP
# server of the dhcp IPAM tests; time: GNU time, host-local's peak RSS. scripts/build.sh
# builds the binaries as shipped (static musl) and the tests are built for the same
# target; the integration tests run the binaries in $CNI_RS_BIN.
scripts/deps.sh iproute2 nftables iptables iputils-ping containernetworking-plugins python3 \
  containerd runc podman busybox-static etcd-server etcd-client openssl dnsmasq-base time || exit 1
. scripts/build.sh || exit 1
export CNI_RS_BIN=$bin
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Every test binary runs even when an earlier one fails; the total counts them all.
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
