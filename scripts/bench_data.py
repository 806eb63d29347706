"""Data-plane benchmark: what a packet costs on the networks our plugins build, next to
Debian's reference plugins and the raw kernel paths they sit on. This file owns the whole
run: the network namespaces it makes (prefix `cnirs-bd-<pid>`), the plugin calls (ADD as a
runtime makes them, DEL at the end), the iperf3/ping measurements and OUT_DIR/data.csv,
OUT_DIR/data.json and the table on stdout. Nothing is added to the root namespace; all it
made (namespaces, iperf3 processes, temp dirs) is gone when it exits, also on failure,
SIGINT or SIGTERM.

Usage: python3 scripts/bench_data.py OUT_DIR OURS_BIN_DIR REF_BIN_DIR
                                     [--runs N] [--seconds S] [--quick]
                                     [--only PATH,...] [--mtu MTU]

Same host (containers in one host namespace): bridge-ours, bridge-ref, macvlan-ours,
macvlan-ref, ptp-ours, against veth-raw (two namespaces on a veth pair). Cross host (two
host namespaces on a veth pair `ul0`, MTU 1500 and 9000), each of ours beside the path
built by hand that it must match, like with like:
  overlay (our vxlan-overlay with its default config: ipMasq on, so every packet goes
  through conntrack) against vxlan-hand-masq (flannel's VXLAN programmed with iproute2
  plus the iptables rules a flanneld v0.20.2 node run with --ip-masq has: its
  masquerade and its default forward accept, FLANNEL-FWD);
  overlay-nomasq (ipMasq false) against vxlan-hand-fwd (the same VXLAN, no NAT, with
  the FLANNEL-FWD accept that a flanneld run with --ip-masq=false keeps by default) and
  against vxlan-hand (no rules at all);
  directrouting (directRouting, ipMasq false) against directrouting-hand (pods on a
  bridge, each host routing the other's pod subnet via its underlay address, no
  encapsulation, no NAT, as flanneld's DirectRouting programs a peer on its subnet: pods
  at the VXLAN MTU, FLANNEL-FWD) and against routing-hand (the same with pods at the
  underlay's MTU as plain routing gives, and no rule);
and underlay-raw (host to host). Per path and run: iperf3 TCP throughput, the machine's
busy CPU seconds per Gbit moved, the median ping RTT and UDP loss at 100 Mbit/s; medians
over the runs, which go round the paths in turn (after one unrecorded warm-up transfer
each) so every path sees the same background load. --only and --mtu measure a subset
(the raw path of each group measured is always in it).
"""
import argparse, atexit, contextlib, csv, ctypes, json, os, re, shutil, signal, statistics
import subprocess, sys, tempfile, time

CLONE_NEWNET = 0x40000000
PREFIX = f"cnirs-bd-{os.getpid()}"
IPERF_PORT = 5201
CALL_TIMEOUT = 60  # a plugin call or an iproute2 command never takes this long
CNI_VERSION = "1.0.0"
UNDERLAY = ("192.168.90.1", "192.168.90.2")
OVERLAY_NETWORK = "10.244.0.0/16"
OVERLAY_SUBNETS = ("10.244.1.0/24", "10.244.2.0/24")
HAND_MACS = ("0e:00:00:00:5a:01", "0e:00:00:00:5a:02")  # flannel.1's fixed MACs
VXLAN_OVERHEAD = 50
COLUMNS = ["path", "mtu", "runs", "tcp_gbps", "tcp_ratio", "cpu_s_per_gbit", "rtt_ms",
           "udp_loss_pct"]

libc = ctypes.CDLL(None, use_errno=True)
ROOT_NS = os.open("/proc/thread-self/ns/net", os.O_RDONLY)


class Failure(Exception):
    """A step that did not work; the message says which and why."""


# --- signals: SIGINT/SIGTERM become SystemExit, except inside a step that must finish
# (starting a process and recording its PID), where they wait until the step is done.

class Guard:
    depth = 0
    pending = None


def on_signal(sig, _frame):
    if Guard.depth:
        Guard.pending = sig
        return
    print(f"bench_data: {signal.Signals(sig).name}, cleaning up", file=sys.stderr)
    raise SystemExit(128 + sig)


@contextlib.contextmanager
def uninterrupted():
    Guard.depth += 1
    try:
        yield
    finally:
        Guard.depth -= 1
        if not Guard.depth and Guard.pending:
            raise SystemExit(128 + Guard.pending)


# --- namespaces and commands

def setns(fd):
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise Failure(f"setns: {os.strerror(ctypes.get_errno())}")


@contextlib.contextmanager
def inside(ns):
    """The calling thread (and what it starts) in namespace `ns`, back in the root
    namespace after: how a runtime runs a plugin, with nothing of `ip netns exec` timed."""
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        setns(fd)
        yield
    finally:
        setns(ROOT_NS)
        os.close(fd)


def run(cmd, timeout=CALL_TIMEOUT, **kw):
    """Runs `cmd` to completion; its stdout, or Failure with its stderr."""
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise Failure(f"{' '.join(cmd)}: no answer in {timeout} s") from None
    if p.returncode != 0:
        raise Failure(f"{' '.join(cmd)}: exit {p.returncode}: "
                      f"{p.stderr.decode().strip() or p.stdout.decode().strip()}")
    return p.stdout.decode()


def ip(ns, *args):
    return run(["ip", "-n", ns, *args])


def in_ns(ns, *cmd, timeout=CALL_TIMEOUT):
    return run(["ip", "netns", "exec", ns, *cmd], timeout=timeout)


def sysctl(ns, key, value):
    # /proc/sys/net is the namespace of the thread that opens it
    with inside(ns), open(f"/proc/sys/{key.replace('.', '/')}", "w") as f:
        f.write(value)


class Lab:
    """Everything this run made, in the order made, so cleanup undoes exactly that."""

    def __init__(self):
        self.netns, self.servers, self.attachments = [], [], []
        self.tmp = tempfile.TemporaryDirectory(prefix=f"{PREFIX}-")
        self.cleaned = False

    def new_netns(self, name):
        ns = f"{PREFIX}-{name}"
        self.netns.append(ns)  # recorded first: a half-made one is deleted too
        run(["ip", "netns", "add", ns])
        ip(ns, "link", "set", "lo", "up")
        return ns

    def data_dir(self, name):
        d = os.path.join(self.tmp.name, name)
        os.mkdir(d, 0o700)
        return d

    def cleanup(self):
        """Stops our iperf3s by PID, DELs every attachment as a runtime would, deletes
        our namespaces; runs once, and is not interrupted by a second signal."""
        if self.cleaned:
            return
        self.cleaned = True
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        setns(ROOT_NS)
        for p in self.servers:
            stop(p)
        for a in reversed(self.attachments):
            try:
                cni_call("DEL", *a)
            except Failure as e:
                print(f"DEL {a[4]}: {e}", file=sys.stderr)
        for ns in reversed(self.netns):
            try:
                run(["ip", "netns", "delete", ns])
            except Failure as e:
                if os.path.exists(f"/var/run/netns/{ns}"):
                    print(e, file=sys.stderr)
        self.tmp.cleanup()


def stop(p):
    """Ends one process we started: it has usually exited on its own (iperf3 -s -1)."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


# --- plugins, called as a runtime calls them

def cni_call(command, host, bindir, conf, netns, cid, prev=None):
    """One plugin call from the host namespace; the parsed result of an ADD."""
    env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=cid,
               CNI_NETNS=f"/var/run/netns/{netns}", CNI_IFNAME="eth0", CNI_PATH=bindir)
    if prev is not None:
        conf = dict(conf, prevResult=prev)
    with inside(host):
        try:
            p = subprocess.run([os.path.join(bindir, conf["type"])], env=env,
                               input=json.dumps(conf).encode(), capture_output=True,
                               timeout=CALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise Failure(f"{conf['type']} {command} {cid}: no answer in {CALL_TIMEOUT} s") \
                from None
    if p.returncode != 0:
        raise Failure(f"{bindir}/{conf['type']} {command} {cid}: exit {p.returncode}: "
                      f"{p.stdout.decode().strip()} {p.stderr.decode().strip()}")
    return json.loads(p.stdout) if command == "ADD" else None


def attach(lab, host, bindir, conf, name):
    """A container namespace attached by ADD; its IPv4 address."""
    netns = lab.new_netns(name)
    cid = f"{PREFIX}-{name}"
    entry = [host, bindir, conf, netns, cid, None]
    lab.attachments.append(entry)  # DEL also follows an ADD that failed, as in a runtime
    result = cni_call("ADD", host, bindir, conf, netns, cid)
    entry[5] = result
    return result["ips"][0]["address"].split("/")[0]


def host_local(lab, name, subnet):
    return {"type": "host-local", "dataDir": lab.data_dir(name), "ranges": [[{"subnet": subnet}]]}


class Path:
    """A client namespace and a server address to measure between."""

    def __init__(self, name, group, mtu, client, server, server_ip):
        self.name, self.group, self.mtu = name, group, mtu
        self.client, self.server, self.server_ip = client, server, server_ip
        self.runs = []


# --- same host: two containers in one host namespace

def same_host_path(lab, name, bindir, plugin_conf, subnet, nic=False):
    host = lab.new_netns(f"{name}-host")
    if nic:
        # the macvlans' master: one end of a veth pair, both ends up
        ip(host, "link", "add", "nic0", "type", "veth", "peer", "name", "nic0p")
        ip(host, "link", "set", "nic0", "up")
        ip(host, "link", "set", "nic0p", "up")
    conf = dict({"cniVersion": CNI_VERSION, "name": "bench"}, **plugin_conf,
                ipam=host_local(lab, name, subnet))
    attach(lab, host, bindir, conf, f"{name}-c1")
    server_ip = attach(lab, host, bindir, conf, f"{name}-c2")
    return Path(name, "same-host", 1500, f"{PREFIX}-{name}-c1", f"{PREFIX}-{name}-c2",
                server_ip)


def veth_raw(lab):
    """Two namespaces on one veth pair: the kernel's same-host limit."""
    c, s = lab.new_netns("veth-raw-c"), lab.new_netns("veth-raw-s")
    ip(c, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", s)
    for ns, addr in ((c, "10.94.0.1/24"), (s, "10.94.0.2/24")):
        ip(ns, "addr", "add", addr, "dev", "eth0")
        ip(ns, "link", "set", "eth0", "up")
    return Path("veth-raw", "same-host", 1500, c, s, "10.94.0.2")


# --- cross host: two host namespaces on an underlay veth

def underlay(lab, name, mtu):
    """Hosts a and b, `ul0` <-> `ul0` with MTU `mtu`, default route on it."""
    hosts = lab.new_netns(f"{name}-a"), lab.new_netns(f"{name}-b")
    ip(hosts[0], "link", "add", "ul0", "mtu", str(mtu), "type", "veth", "peer", "name", "ul0",
       "mtu", str(mtu), "netns", hosts[1])
    for h, addr in zip(hosts, UNDERLAY):
        ip(h, "link", "set", "ul0", "mtu", str(mtu), "up")
        ip(h, "addr", "add", f"{addr}/24", "dev", "ul0")
        ip(h, "route", "add", "default", "dev", "ul0")
    return hosts


def overlay_path(lab, name, mtu, bindir, direct=False, ip_masq=None):
    """A container on each host from our vxlan-overlay with the static store; `ip_masq`
    None leaves ipMasq out of the config (the plugin's default)."""
    tag = f"{name}-{mtu}"
    hosts = underlay(lab, tag, mtu)
    nodes = [{"underlayIP": u, "subnet": s} for u, s in zip(UNDERLAY, OVERLAY_SUBNETS)]
    ips = []
    for i, h in enumerate(hosts):
        conf = {"cniVersion": CNI_VERSION, "name": "bench", "type": "vxlan-overlay",
                "network": OVERLAY_NETWORK, "dataDir": lab.data_dir(f"{tag}-{i}"),
                "store": {"type": "static", "nodes": nodes}}
        if ip_masq is not None:
            conf["ipMasq"] = ip_masq
        if direct:
            conf["directRouting"] = True
        ips.append(attach(lab, h, bindir, conf, f"{tag}-c{i}"))
    return Path(name, "cross-host", mtu, f"{PREFIX}-{tag}-c0", f"{PREFIX}-{tag}-c1", ips[1])


def hand_pod(lab, tag, i, h, mtu):
    """Host `h`'s pod as flannel's CNI plugin attaches it: a veth on a cni0 bridge that
    holds the subnet's first address, the pod's default route via it; (namespace, IP)."""
    base = OVERLAY_SUBNETS[i].split("/")[0].rsplit(".", 1)[0]
    ip(h, "link", "add", "cni0", "mtu", mtu, "type", "bridge")
    ip(h, "addr", "add", f"{base}.1/24", "dev", "cni0")
    ip(h, "link", "set", "cni0", "up")
    c = lab.new_netns(f"{tag}-c{i}")
    ip(h, "link", "add", "veth0", "mtu", mtu, "type", "veth", "peer", "name", "eth0",
       "mtu", mtu, "netns", c)
    ip(h, "link", "set", "veth0", "master", "cni0", "up")
    ip(c, "addr", "add", f"{base}.2/24", "dev", "eth0")
    ip(c, "link", "set", "eth0", "up")
    ip(c, "route", "add", "default", "via", f"{base}.1")
    sysctl(h, "net.ipv4.ip_forward", "1")
    return c, f"{base}.2"


def flannel_rules(h, subnet, masq):
    """What a flanneld v0.20.2 node has in iptables: by default (--iptables-forward-rules)
    its FLANNEL-FWD accept of the cluster network (network/iptables.go ForwardRules) and,
    with `masq` (--ip-masq), the nat rules of MasqRules with --random-fully as iptables
    >= 1.6.2 has it; in one iptables-restore as flanneld applies them."""
    n, c = OVERLAY_NETWORK, '-m comment --comment "flanneld masq"'
    f = '-m comment --comment "flanneld forward"'
    rules = ("*filter\n:FLANNEL-FWD - [0:0]\n"
             f"-A FORWARD {f} -j FLANNEL-FWD\n"
             f"-A FLANNEL-FWD -s {n} {f} -j ACCEPT\n"
             f"-A FLANNEL-FWD -d {n} {f} -j ACCEPT\n"
             "COMMIT\n")
    if masq:
        rules += ("*nat\n:FLANNEL-POSTRTG - [0:0]\n"
                  f"-I POSTROUTING {c} -j FLANNEL-POSTRTG\n"
                  f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {c} -j RETURN\n"
                  f"-A FLANNEL-POSTRTG -s {n} -d {n} {c} -j RETURN\n"
                  f"-A FLANNEL-POSTRTG -s {n} ! -d 224.0.0.0/4 {c} -j MASQUERADE --random-fully\n"
                  f"-A FLANNEL-POSTRTG ! -s {n} -d {subnet} {c} -j RETURN\n"
                  f"-A FLANNEL-POSTRTG ! -s {n} -d {n} {c} -j MASQUERADE --random-fully\n"
                  "COMMIT\n")
    run(["ip", "netns", "exec", h, "iptables-restore", "--noflush"], input=rules.encode())


def vxlan_hand(lab, mtu, rules=None):
    """flannel's VXLAN as flannel programs it, containers on a cni0 bridge as the
    plugin attaches them; `rules` "fwd" gives each host flanneld's FLANNEL-FWD, "masq" its
    --ip-masq rules as well, None no rule."""
    name = f"vxlan-hand-{rules}" if rules else "vxlan-hand"
    tag = f"{name}-{mtu}"
    hosts = underlay(lab, tag, mtu)
    inner = str(mtu - VXLAN_OVERHEAD)
    containers = []
    for i, h in enumerate(hosts):
        j = 1 - i
        net, peer_net = OVERLAY_SUBNETS[i].split("/")[0], OVERLAY_SUBNETS[j].split("/")[0]
        ip(h, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", UNDERLAY[i],
           "dev", "ul0", "dstport", "8472", "nolearning")
        ip(h, "link", "set", "flannel.1", "mtu", inner, "address", HAND_MACS[i])
        ip(h, "addr", "add", f"{net}/32", "dev", "flannel.1")
        ip(h, "link", "set", "flannel.1", "up")
        ip(h, "neigh", "replace", peer_net, "lladdr", HAND_MACS[j], "dev", "flannel.1",
           "nud", "permanent")
        run(["bridge", "-n", h, "fdb", "append", HAND_MACS[j], "dev", "flannel.1", "dst",
             UNDERLAY[j], "self", "permanent"])
        ip(h, "route", "replace", OVERLAY_SUBNETS[j], "via", peer_net, "dev", "flannel.1",
           "onlink")
        if rules:
            flannel_rules(h, OVERLAY_SUBNETS[i], masq=rules == "masq")
        containers.append(hand_pod(lab, tag, i, h, inner))
    return Path(name, "cross-host", mtu, containers[0][0], containers[1][0],
                containers[1][1])


def routing_hand(lab, mtu, flannel=False):
    """Plain routing between the hosts (what flannel's host-gw programs): pods on a cni0
    bridge with the underlay's MTU, each host's route to the other's pod subnet via the
    other's underlay address; no encapsulation, no NAT. With `flannel`, as flanneld's
    VXLAN backend with DirectRouting programs it for a peer on the same subnet: the pods
    at the VXLAN MTU (its FLANNEL_MTU, which holds for peers off the subnet too) and its
    default FLANNEL-FWD accept."""
    name = "directrouting-hand" if flannel else "routing-hand"
    tag = f"{name}-{mtu}"
    hosts = underlay(lab, tag, mtu)
    pod_mtu = mtu - VXLAN_OVERHEAD if flannel else mtu
    containers = []
    for i, h in enumerate(hosts):
        j = 1 - i
        ip(h, "route", "replace", OVERLAY_SUBNETS[j], "via", UNDERLAY[j], "dev", "ul0")
        if flannel:
            flannel_rules(h, OVERLAY_SUBNETS[i], masq=False)
        containers.append(hand_pod(lab, tag, i, h, str(pod_mtu)))
    return Path(name, "cross-host", mtu, containers[0][0], containers[1][0],
                containers[1][1])


def underlay_raw(lab, mtu):
    """Host to host over ul0: the kernel's cross-host limit."""
    a, b = underlay(lab, f"underlay-raw-{mtu}", mtu)
    return Path("underlay-raw", "cross-host", mtu, a, b, UNDERLAY[1])


SAME_HOST = ("bridge-ours", "bridge-ref", "macvlan-ours", "macvlan-ref", "ptp-ours",
             "veth-raw")
CROSS_HOST = ("overlay", "vxlan-hand-masq", "overlay-nomasq", "vxlan-hand-fwd", "vxlan-hand",
              "directrouting", "directrouting-hand", "routing-hand", "underlay-raw")


def build_paths(lab, s):
    """The paths `s.only` names (all when None), the raw path of each group with any;
    the cross-host ones at each MTU of `s.mtus`."""
    ours, ref = s.ours, s.ref
    want = set(s.only or SAME_HOST + CROSS_HOST)
    if want & set(SAME_HOST):
        want.add("veth-raw")
    if want & set(CROSS_HOST):
        want.add("underlay-raw")
    same = {
        "bridge-ours": lambda: same_host_path(lab, "bridge-ours", ours, {
            "type": "bridge", "bridge": "cni0", "isGateway": True}, "10.91.0.0/24"),
        "bridge-ref": lambda: same_host_path(lab, "bridge-ref", ref, {
            "type": "bridge", "bridge": "cni0", "isGateway": True}, "10.91.0.0/24"),
        "macvlan-ours": lambda: same_host_path(lab, "macvlan-ours", ours, {
            "type": "macvlan", "master": "nic0", "mode": "bridge"}, "10.92.0.0/24", nic=True),
        "macvlan-ref": lambda: same_host_path(lab, "macvlan-ref", ref, {
            "type": "macvlan", "master": "nic0", "mode": "bridge"}, "10.92.0.0/24", nic=True),
        "ptp-ours": lambda: same_host_path(lab, "ptp-ours", ours, {"type": "ptp"},
                                           "10.93.0.0/24"),
        "veth-raw": lambda: veth_raw(lab),
    }
    cross = {
        "overlay": lambda mtu: overlay_path(lab, "overlay", mtu, ours),
        "vxlan-hand-masq": lambda mtu: vxlan_hand(lab, mtu, "masq"),
        "overlay-nomasq": lambda mtu: overlay_path(lab, "overlay-nomasq", mtu, ours,
                                                   ip_masq=False),
        "vxlan-hand-fwd": lambda mtu: vxlan_hand(lab, mtu, "fwd"),
        "vxlan-hand": lambda mtu: vxlan_hand(lab, mtu),
        "directrouting": lambda mtu: overlay_path(lab, "directrouting", mtu, ours,
                                                  direct=True, ip_masq=False),
        "directrouting-hand": lambda mtu: routing_hand(lab, mtu, flannel=True),
        "routing-hand": lambda mtu: routing_hand(lab, mtu),
        "underlay-raw": lambda mtu: underlay_raw(lab, mtu),
    }
    paths = [make() for name, make in same.items() if name in want]
    for mtu in s.mtus:
        paths += [make(mtu) for name, make in cross.items() if name in want]
    return paths


# --- measurements

def busy_cpu_seconds():
    """The whole machine's busy CPU time: user+nice+system+irq+softirq+steal, all cores."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields[i] for i in (0, 1, 2, 5, 6, 7)) / os.sysconf("SC_CLK_TCK")


def listening(ns, port):
    with inside(ns):
        for table in ("tcp", "tcp6"):
            with open(f"/proc/thread-self/net/{table}") as f:
                for line in f.readlines()[1:]:
                    local, state = line.split()[1], line.split()[3]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        return True
    return False


def start_server(lab, ns):
    """A one-shot iperf3 server in `ns`, listening when this returns."""
    with uninterrupted():
        p = subprocess.Popen(["ip", "netns", "exec", ns, "iperf3", "-s", "-1", "-p",
                              str(IPERF_PORT)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lab.servers.append(p)
    deadline = time.monotonic() + 10
    while not listening(ns, IPERF_PORT):
        if p.poll() is not None or time.monotonic() > deadline:
            raise Failure(f"iperf3 server in {ns} is not listening")
        time.sleep(0.02)
    return p


def finish_server(lab, p):
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        stop(p)
    lab.servers.remove(p)


def iperf3(lab, path, args, seconds):
    """One iperf3 test from the client to the server; its JSON report."""
    server = start_server(lab, path.server)
    try:
        try:
            out = in_ns(path.client, "iperf3", "-c", path.server_ip, "-p", str(IPERF_PORT),
                        "-J", "-t", str(seconds), *args, timeout=seconds + 30)
        except Failure as e:
            raise Failure(f"{path.name}: {e}") from None
        report = json.loads(out)
        if "error" in report:
            raise Failure(f"{path.name}: iperf3: {report['error']}")
        return report
    finally:
        finish_server(lab, server)


def tcp_run(lab, path, seconds):
    """TCP throughput (Gbit/s, as received) and busy CPU seconds per Gbit moved."""
    before = busy_cpu_seconds()
    report = iperf3(lab, path, [], seconds)
    cpu = busy_cpu_seconds() - before
    received = report["end"]["sum_received"]
    gbps = received["bits_per_second"] / 1e9
    return gbps, cpu / (gbps * received["seconds"])


def udp_loss(lab, path, seconds):
    """Loss (%) of 100 Mbit/s of 1400-byte datagrams, as the server counted it."""
    report = iperf3(lab, path, ["-u", "-b", "100M", "-l", "1400"], seconds)
    return report["end"]["sum"]["lost_percent"]


def rtt_ms(path, count):
    """Median of the per-packet ping times (ping -q only gives min/avg/max)."""
    out = in_ns(path.client, "ping", "-n", "-c", str(count), "-i", "0.01", "-W", "2",
                path.server_ip, timeout=count * 0.01 + 30)
    times = [float(t) for t in re.findall(r"time=([\d.]+) ms", out)]
    if len(times) < count // 2:
        raise Failure(f"{path.name}: {len(times)} of {count} pings answered")
    return statistics.median(times)


def reachable(path):
    """The path carries packets before it is measured (a neighbour to resolve, a
    bridge port to leave its learning state): bounded retries."""
    for _ in range(20):
        try:
            in_ns(path.client, "ping", "-n", "-c", "1", "-W", "1", path.server_ip, timeout=10)
            return
        except Failure:
            time.sleep(0.25)
    raise Failure(f"{path.name} (MTU {path.mtu}): {path.server_ip} unreachable from "
                  f"{path.client}")


def warm_up(lab, path):
    """One short transfer, not recorded: a fresh path's first one runs measurably slower
    (seen here: 15.9 against 18.5 Gbit/s on the same bridge), whichever path is first."""
    iperf3(lab, path, [], 1)


def measure(lab, path, s):
    gbps, cpu = tcp_run(lab, path, s.seconds)
    run_ = {"tcp_gbps": gbps, "cpu_s_per_gbit": cpu, "rtt_ms": rtt_ms(path, s.pings),
            "udp_loss_pct": udp_loss(lab, path, s.udp_seconds)}
    path.runs.append(run_)
    return run_


# --- report

def summarize(paths):
    """One row per path: medians of its runs, throughput as a ratio to its raw path."""
    raw = {(p.group, p.mtu): p for p in paths if p.name.endswith("-raw")}
    rows = []
    for p in paths:
        med = {k: statistics.median(r[k] for r in p.runs)
               for k in ("tcp_gbps", "cpu_s_per_gbit", "rtt_ms", "udp_loss_pct")}
        raw_runs = raw[(p.group, p.mtu)].runs
        # per run also against the raw path of the same round, which saw the same load
        per_run = [dict(r, tcp_ratio=r["tcp_gbps"] / b["tcp_gbps"])
                   for r, b in zip(p.runs, raw_runs)]
        rows.append({"path": p.name, "mtu": p.mtu, "runs": len(p.runs),
                     "tcp_gbps": round(med["tcp_gbps"], 3),
                     "tcp_ratio": round(statistics.median(r["tcp_ratio"] for r in per_run), 3),
                     "cpu_s_per_gbit": round(med["cpu_s_per_gbit"], 4),
                     "rtt_ms": round(med["rtt_ms"], 4),
                     "udp_loss_pct": round(med["udp_loss_pct"], 3),
                     "group": p.group, "per_run": per_run})
    return rows


def write_outputs(out_dir, rows):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "data.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(out_dir, "data.json"), "w") as f:
        json.dump(rows, f, indent=1)
        f.write("\n")


def print_table(rows, s):
    print(f"\n{s.runs} run(s) per path, medians; TCP {s.seconds} s, UDP {s.udp_seconds} s "
          f"at 100 Mbit/s, {s.pings} pings; ratio = median over the rounds of TCP / its raw "
          "path's TCP in the same round (per-round figures in data.json)")
    print(f"{'group':10} {'path':16} {'mtu':>5} {'TCP Gbit/s':>10} {'ratio':>6} "
          f"{'CPU s/Gbit':>10} {'RTT ms':>7} {'UDP loss %':>10}")
    for r in rows:
        print(f"{r['group']:10} {r['path']:16} {r['mtu']:5} {r['tcp_gbps']:10.2f} "
              f"{r['tcp_ratio']:6.3f} {r['cpu_s_per_gbit']:10.4f} {r['rtt_ms']:7.3f} "
              f"{r['udp_loss_pct']:10.2f}")


# --- main

def settings():
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("out_dir")
    a.add_argument("ours")
    a.add_argument("ref")
    a.add_argument("--runs", type=int, default=3)
    a.add_argument("--seconds", type=int, default=10)
    a.add_argument("--quick", action="store_true", help="runs 1, seconds 2, UDP 1 s, 20 pings")
    a.add_argument("--only", type=lambda v: v.split(","), metavar="PATH,...",
                   help=f"measure these paths only, of: {', '.join(SAME_HOST + CROSS_HOST)}")
    a.add_argument("--mtu", type=int, choices=(1500, 9000), help="cross host: this MTU only")
    s = a.parse_args()
    s.mtus = (s.mtu,) if s.mtu else (1500, 9000)
    unknown = set(s.only or ()) - set(SAME_HOST + CROSS_HOST)
    if unknown:
        a.error(f"--only: no path {', '.join(sorted(unknown))}")
    s.udp_seconds, s.pings = 3, 100
    if s.quick:
        s.runs, s.seconds, s.udp_seconds, s.pings = 1, 2, 1, 20
    if s.runs < 1 or s.seconds < 1:
        a.error("--runs and --seconds must be at least 1")
    s.ours, s.ref = os.path.abspath(s.ours), os.path.abspath(s.ref)
    return s


def check_prerequisites(s):
    """Everything needed is there before anything is made."""
    if os.geteuid() != 0:
        raise Failure("needs root (network namespaces)")
    for tool in ("ip", "bridge", "iperf3", "ping", "iptables-restore"):
        if not shutil.which(tool):
            raise Failure(f"{tool} not found")
    for d, names in ((s.ours, ("bridge", "host-local", "macvlan", "ptp", "vxlan-overlay")),
                     (s.ref, ("bridge", "host-local", "macvlan"))):
        for n in names:
            if not os.access(os.path.join(d, n), os.X_OK):
                raise Failure(f"{os.path.join(d, n)} missing (build or install it first)")


def main():
    s = settings()
    check_prerequisites(s)
    lab = Lab()
    atexit.register(lab.cleanup)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    start = time.monotonic()
    try:
        print(f"setting up paths in namespaces {PREFIX}-*", flush=True)
        paths = build_paths(lab, s)
        for p in paths:
            reachable(p)
            warm_up(lab, p)
        # runs go round all paths in turn, so background load hits every path alike, and
        # every other round backwards, so no path always comes first or after the same one
        for i in range(1, s.runs + 1):
            for p in (paths if i % 2 else paths[::-1]):
                r = measure(lab, p, s)
                print(f"run {i}/{s.runs} {p.name} mtu {p.mtu}: {r['tcp_gbps']:.2f} Gbit/s, "
                      f"{r['cpu_s_per_gbit']:.4f} CPU s/Gbit, RTT {r['rtt_ms']:.3f} ms, "
                      f"UDP loss {r['udp_loss_pct']:.2f} %", flush=True)
        rows = summarize(paths)
        write_outputs(s.out_dir, rows)
    finally:
        lab.cleanup()
    print_table(rows, s)
    print(f"took {time.monotonic() - start:.0f} s; wrote {s.out_dir}/data.csv and data.json")


if __name__ == "__main__":
    try:
        main()
    except Failure as e:
        print(f"bench_data: {e}", file=sys.stderr)
        sys.exit(1)
