#!/usr/bin/env bash
# Runs a busybox web server with `podman run -p` on the CNI backend against our plugins,
# with podman's default chain bridge -> portmap -> firewall -> tuning. Called by
# tests/tests/clients.rs inside the test's host network namespace and a private mount
# namespace: podman writes under /run (netns, runtime state) and /var/lib (storage, CNI
# cache and IPAM), so tmpfs and bind mounts there keep it off the machine's own.
# Usage: podman.sh BIN_DIR WORK_DIR ROOTFS CLIENT_NETNS CONFLIST [HOST_ADDR]
# With HOST_ADDR the container publishes port 80 as 8080 and the client in CLIENT_NETNS
# fetches it through HOST_ADDR; without, the client fetches the container's address.
set -euo pipefail
bin=$1 work=$2 rootfs=$3 outside=$4 conflist=$5 host_addr=${6:-}
here=$(cd "$(dirname "$0")" && pwd)

exec 9<"/run/netns/$outside" # the client's namespace, before /run is covered
mkdir -p "$work"/{conf,varlib,storage,tmp}
mount -t tmpfs tmpfs /run && mkdir -p /run/netns
mount -t tmpfs tmpfs /opt && mkdir -p /opt/cni/bin
mount --bind "$work/varlib" /var/lib
for p in bridge macvlan host-local loopback portmap firewall tuning bandwidth; do
  cp "$bin/$p" /opt/cni/bin/
done
cp "$here/$conflist" "$work/conf/87-podman-bridge.conflist"
cat > "$work/containers.conf" <<TOML
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
[network]
network_backend = "cni"
cni_plugin_dirs = ["/opt/cni/bin"]
network_config_dir = "$work/conf"
TOML
export CONTAINERS_CONF="$work/containers.conf"
podman() {
  timeout 120 /usr/bin/podman --root "$work/storage" --runroot "$work/runroot" \
    --storage-driver vfs --tmpdir "$work/tmp" "$@"
}
trap 'podman rm -f -t 0 cni-rs-web >/dev/null 2>&1 || true' EXIT

tar -C "$rootfs" -c . | podman import - localhost/cni-rs-busybox:latest >/dev/null
publish=() url=
[ -n "$host_addr" ] && publish=(-p 8080:80)
podman run -d --name cni-rs-web "${publish[@]}" localhost/cni-rs-busybox \
  /bin/httpd -f -p 80 -h /www >/dev/null
addr=$(podman inspect -f '{{.NetworkSettings.IPAddress}}' cni-rs-web)
echo "container address: $addr"
if [ -n "$host_addr" ]; then url="http://$host_addr:8080/"; else url="http://$addr:80/"; fi
fetch="import time, urllib.request
for _ in range(30):
    try:
        print(urllib.request.urlopen('$url', timeout=2).read().decode().strip()); break
    except OSError:
        time.sleep(0.2)"
echo "the web server answered: $(nsenter --net=/proc/$$/fd/9 python3 -c "$fetch")"
podman rm -f -t 0 cni-rs-web >/dev/null
echo "after podman rm, CNI cache: $(ls /var/lib/cni/results 2>/dev/null | wc -l) entries"
