#!/usr/bin/env bash
# Runs a busybox container with `ctr run --cni` against our plugins. Called by
# tests/tests/clients.rs inside the test's host network namespace and a private mount
# namespace (nsenter + unshare), so the bind mounts below are seen by nothing else:
# ctr 1.6 always reads /etc/cni/net.d and /opt/cni/bin and caches in /var/lib/cni.
# Usage: containerd.sh BIN_DIR WORK_DIR ROOTFS CONFLIST PING_ADDR (the conflist beside
# this script; the container pings PING_ADDR)
set -euo pipefail
bin=$1 work=$2 rootfs=$3 conflist=$4 target=$5
here=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$work"/{conf,opt,varlib,root,state}
mount -t tmpfs tmpfs /opt && mkdir -p /opt/cni/bin
mount --bind "$work/varlib" /var/lib
mount --bind "$work/conf" /etc/cni/net.d
for p in bridge macvlan host-local loopback portmap firewall tuning bandwidth; do
  cp "$bin/$p" /opt/cni/bin/
done
cp "$here/$conflist" /etc/cni/net.d/10-ctr.conflist

sock="$work/containerd.sock"
containerd --root "$work/root" --state "$work/state" --address "$sock" \
  --config /dev/null >"$work/containerd.log" 2>&1 &
daemon=$!
stop() {
  kill "$daemon" 2>/dev/null || true
  pkill -f -- "-address $sock" 2>/dev/null || true
  wait "$daemon" 2>/dev/null || true
}
trap stop EXIT
for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done

echo "--- inside the container"
timeout 60 ctr --address "$sock" run --rm --cni --rootfs "$rootfs" cni-rs-ctr \
  /bin/sh -c "export PATH=/bin; ip -4 -o addr show dev eth0; ip route; ping -c 2 -W 2 $target && echo PING-OK"
echo "--- after ctr run"
