"""The agent's scale benchmark of scripts/bench.sh (`scale`): for N = 10, 50, 100 simulated
hosts (network namespaces on one switch namespace, a vxlan-overlay-agent each, one etcd
in a namespace of its own) it measures how long a new host's agent takes, from its start
and from its lease, until every other host has its route (programmed after its neighbour
and FDB entry), the etcd messages each agent sends per minute at steady state, the kernel
entries per host, and the agents' RSS and CPU. Everything it starts is stopped by PID and
every namespace deleted, also when it fails or is interrupted.

  bench_agent.py OUT OURS_BIN_DIR [N ...]   writes OUT/agent.csv and OUT/agent.json"""
import csv
import ctypes
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)
UNDERLAY = "192.168.100"
STEADY_SECONDS = 30
TAG = f"cnirs-ba{os.getpid() % 100000}"


def enter(ns_fd):
    if libc.setns(ns_fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def sh(*args, timeout=30):
    return subprocess.run(args, check=True, timeout=timeout, capture_output=True,
                          text=True).stdout


class World:
    """Namespaces and processes of one run; `close` undoes all of it."""

    def __init__(self):
        self.namespaces, self.procs = [], []
        self.tmp = tempfile.TemporaryDirectory()
        self.home = os.open("/proc/self/ns/net", os.O_RDONLY)

    def netns(self, name):
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def plug(self, ns, i, addr):
        """ns's ul0 on the switch, `addr`/24."""
        sw = f"{TAG}-sw"
        sh("ip", "-n", sw, "link", "add", f"p{i}", "type", "veth", "peer", "name", "ul0",
           "netns", ns)
        sh("ip", "-n", sw, "link", "set", f"p{i}", "master", "sw0", "up")
        sh("ip", "-n", ns, "link", "set", "ul0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "ul0")

    def spawn(self, ns, argv, log):
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=open(log, "a"))
        self.procs.append(p)
        return p

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.time() + 10
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        enter(self.home)


def nl_routes(sock):
    """(dst, prefix length, protocol) of the IPv4 routes a netlink socket's namespace has."""
    body = struct.pack("BBBBBBBBI", socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
    sock.send(struct.pack("IHHII", 16 + len(body), 26, 0x301, 1, 0) + body)  # RTM_GETROUTE dump
    out = []
    while True:
        data = sock.recv(1 << 20)
        off = 0
        while off < len(data):
            length, kind = struct.unpack_from("IH", data, off)
            if kind == 3:  # NLMSG_DONE
                return out
            if kind == 24:  # RTM_NEWROUTE
                dst_len, proto = data[off + 17], data[off + 21]
                a = off + 28
                dst = None
                while a < off + length:
                    alen, atype = struct.unpack_from("HH", data, a)
                    if atype == 1 and alen == 8:  # RTA_DST
                        dst = socket.inet_ntoa(data[a + 4:a + 8])
                    a += (alen + 3) & ~3
                out.append((dst, dst_len, proto))
            off += (length + 3) & ~3


def subnet_of(env_path):
    try:
        text = open(env_path).read()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("FLANNEL_SUBNET="):
            gw, length = line.split("=", 1)[1].split("/")
            a = gw.split(".")
            return f"{a[0]}.{a[1]}.{a[2]}.{int(a[3]) - 1}", int(length)
    return None


def wait_for(what, f, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if f():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not within {seconds} s")


def etcd_messages(w, etcd_ns, url):
    """Every gRPC message etcd has received, from its metrics."""
    fd = os.open(f"/var/run/netns/{etcd_ns}", os.O_RDONLY)
    enter(fd)
    try:
        text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    finally:
        enter(w.home)
        os.close(fd)
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("grpc_server_msg_received_total{"))


def proc_stats(pid):
    """(CPU seconds so far, RSS MiB) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024
    return cpu, rss


def run(n, agent_bin):
    w = World()
    try:
        return measure(w, n, agent_bin)
    finally:
        w.close()


def measure(w, n, agent_bin):
    sw = w.netns(f"{TAG}-sw")
    sh("ip", "-n", sw, "link", "add", "sw0", "type", "bridge")
    sh("ip", "-n", sw, "link", "set", "sw0", "up")
    etcd_ns = w.netns(f"{TAG}-etcd")
    w.plug(etcd_ns, "e", f"{UNDERLAY}.2")
    url = f"http://{UNDERLAY}.2:2379"
    d = w.tmp.name
    w.spawn(etcd_ns, ["etcd", "--name", "b", "--data-dir", f"{d}/etcd",
                      "--listen-client-urls", url, "--advertise-client-urls", url,
                      "--listen-peer-urls", "http://127.0.0.1:2380",
                      "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                      "--initial-cluster", "b=http://127.0.0.1:2380"], f"{d}/etcd.log")
    ctl = ["ip", "netns", "exec", etcd_ns, "etcdctl", "--dial-timeout", "2s",
           "--endpoints", url]
    wait_for("etcd", lambda: subprocess.run(ctl + ["endpoint", "health"],
                                            capture_output=True, timeout=10).returncode == 0, 20)
    sh(*ctl, "put", "/coreos.com/network/config",
       '{"Network":"10.250.0.0/16","Backend":{"Type":"vxlan"}}')
    hosts, agents = [], []

    def start_host(i):
        ns = w.netns(f"{TAG}-h{i}")
        w.plug(ns, i, f"{UNDERLAY}.{10 + i}")
        sh("ip", "-n", ns, "route", "add", "default", "dev", "ul0")
        home = f"{d}/h{i}"
        os.mkdir(home)
        conf = {"cniVersion": "1.0.0", "name": "bench", "plugins": [{
            "type": "vxlan-overlay", "dataDir": f"{home}/data",
            "subnetFile": f"{home}/subnet.env",
            "store": {"type": "etcd", "endpoints": [url]}}]}
        with open(f"{home}/bench.conflist", "w") as f:
            json.dump(conf, f)
        start = time.perf_counter()
        p = w.spawn(ns, [agent_bin, "--config", f"{home}/bench.conflist"], f"{home}/agent.log")
        hosts.append((ns, home))
        agents.append(p)
        return start

    for i in range(n):
        start_host(i)
    wait_for("every subnet file", lambda: all(subnet_of(f"{h}/subnet.env") for _, h in hosts), 60)
    counts = lambda ns: sh("ip", "-n", ns, "route", "show", "proto", "73").count("\n")
    wait_for("every peer programmed", lambda: all(counts(ns) == n - 1 for ns, _ in hosts), 120)

    socks = []
    for ns, _ in hosts:
        fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
        enter(fd)
        socks.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))
        os.close(fd)
    enter(w.home)

    start = start_host(n)
    joiner_env = f"{hosts[n][1]}/subnet.env"
    wait_for("the joiner's lease", lambda: subnet_of(joiner_env), 30)
    leased = time.perf_counter()
    want = subnet_of(joiner_env)
    pending = set(range(n))
    deadline = time.perf_counter() + 30
    while pending and time.perf_counter() < deadline:
        for k in list(pending):
            if (want[0], want[1], 73) in nl_routes(socks[k]):
                pending.discard(k)
        if pending:
            time.sleep(0.002)
    done = time.perf_counter()
    if pending:
        raise RuntimeError(f"N={n}: {len(pending)} hosts never programmed the joiner")
    for s in socks:
        s.close()

    time.sleep(5)
    before = etcd_messages(w, etcd_ns, url), [proc_stats(p.pid) for p in agents]
    time.sleep(STEADY_SECONDS)
    after = etcd_messages(w, etcd_ns, url), [proc_stats(p.pid) for p in agents]
    per_min = 60 / STEADY_SECONDS
    h0 = hosts[0][0]
    return {
        "n": n,
        "join_ms_from_start": (done - start) * 1000,
        "join_ms_from_lease": (done - leased) * 1000,
        "etcd_msgs_per_host_per_min": (after[0] - before[0]) / (n + 1) * per_min,
        "routes_per_host": counts(h0),
        "neighbours_per_host": sh("ip", "-n", h0, "neigh", "show", "dev", "flannel.1",
                                  "nud", "permanent").count("\n"),
        "fdb_per_host": sh("bridge", "-n", h0, "fdb", "show", "dev", "flannel.1").count(" dst "),
        "agent_rss_mb_median": statistics.median(r for _, r in after[1]),
        "agent_rss_mb_max": max(r for _, r in after[1]),
        # a mean over every agent: one agent's CPU is below the clock tick (10 ms)
        "agent_cpu_ms_per_min_mean": statistics.mean(
            (a[0] - b[0]) * 1000 * per_min for a, b in zip(after[1], before[1])),
    }


def main():
    out, ours = sys.argv[1], sys.argv[2]
    ns = [int(x) for x in sys.argv[3:]] or [10, 50, 100]
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: sys.exit(130))
    rows = []
    for n in ns:
        print(f"scale: {n} hosts with an agent each, one more joining", flush=True)
        rows.append(run(n, os.path.join(ours, "vxlan-overlay-agent")))
    with open(os.path.join(out, "agent.json"), "w") as f:
        json.dump(rows, f)
    with open(os.path.join(out, "agent.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in r.items()})


if __name__ == "__main__":
    main()
