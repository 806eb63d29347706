"""The agent's scale benchmark of scripts/bench.sh (`scale`): for N = 10, 50, 100, 250
simulated hosts (network namespaces on one switch namespace, a vxlan-overlay-agent each,
one etcd in a namespace of its own) it measures how long a new host's agent takes, from
its start and from its lease, until every other host has its route (programmed after its
neighbour and FDB entry), the etcd messages each agent sends per minute at steady state,
the kernel entries per host, and the agents' RSS and CPU. A route's time is when its
notification (RTNLGRP_IPV4_ROUTE of that host's namespace) is read; the lease's, when an
etcd watcher sees the joiner's key or, if earlier, when the first host programs it. It
also prints, per N, how the hosts' times spread and the CPU the agents and etcd spent
until the last. Everything it starts is stopped by PID and every namespace deleted, also
when it fails or is interrupted.

  bench_agent.py OUT OURS_BIN_DIR [N ...]   writes OUT/agent.csv and OUT/agent.json"""
import csv
import ctypes
import json
import os
import selectors
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
# The underlay is 192.168.100.0/22 (etcd .2, host i .10 + i): room for 1,000 hosts.
UNDERLAY_PREFIX = 22
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
        sh("ip", "-n", ns, "addr", "add", f"{addr}/{UNDERLAY_PREFIX}", "dev", "ul0")

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


def underlay(k):
    """The k-th address of the underlay (192.168.100.0/22)."""
    assert 0 < k < (1 << (32 - UNDERLAY_PREFIX)) - 1
    return f"192.168.{100 + k // 256}.{k % 256}"


def nl_route_messages(data):
    """(message type, dst, prefix length, protocol) of each route message in `data`."""
    off = 0
    while off < len(data):
        length, kind = struct.unpack_from("IH", data, off)
        if kind == 2:  # NLMSG_ERROR
            raise OSError(-struct.unpack_from("i", data, off + 16)[0], "netlink")
        if kind in (24, 25):  # RTM_NEWROUTE, RTM_DELROUTE
            dst_len, proto = data[off + 17], data[off + 21]
            a = off + 28
            dst = None
            while a < off + length:
                alen, atype = struct.unpack_from("HH", data, a)
                if atype == 1 and alen == 8:  # RTA_DST
                    dst = socket.inet_ntoa(data[a + 4:a + 8])
                a += (alen + 3) & ~3
            yield kind, dst, dst_len, proto
        elif kind == 3:  # NLMSG_DONE
            yield kind, None, 0, 0
        off += (length + 3) & ~3


def nl_routes(sock):
    """(dst, prefix length, protocol) of the IPv4 routes a netlink socket's namespace has."""
    body = struct.pack("BBBBBBBBI", socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
    sock.send(struct.pack("IHHII", 16 + len(body), 26, 0x301, 1, 0) + body)  # RTM_GETROUTE dump
    out = []
    while True:
        for kind, dst, dst_len, proto in nl_route_messages(sock.recv(1 << 20)):
            if kind == 3:
                return out
            out.append((dst, dst_len, proto))


def netlink_in(w, ns, groups=0):
    """A netlink socket of namespace `ns`, bound to the multicast `groups`."""
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    enter(fd)
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    finally:
        enter(w.home)
        os.close(fd)
    if groups:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((0, groups))
        s.setblocking(False)
    return s


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


def wait_for(what, f, seconds, pause=0.05):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if f():
            return
        time.sleep(pause)
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


def cpu_ns(pid):
    """CPU time of every thread of a process, to the nanosecond (schedstat), not the tick."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass  # a thread gone meanwhile
    return total


def proc_stats(pid):
    """(CPU seconds so far, RSS MiB, CPU seconds of its children waited for) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / tick
    children = (int(fields[13]) + int(fields[14])) / tick
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024
    return cpu, rss, children


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
    w.plug(etcd_ns, "e", underlay(2))
    url = f"http://{underlay(2)}:2379"
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
        w.plug(ns, i, underlay(10 + i))
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
    # 250 agents start on 2 cores: the waits grow with N.
    wait_for("every subnet file", lambda: all(subnet_of(f"{h}/subnet.env") for _, h in hosts),
             max(60, n // 2))
    # Route tables are read by netlink dumps, not an `ip` per host per poll.
    dumps = [netlink_in(w, ns) for ns, _ in hosts]
    programmed = lambda s: sum(1 for _, _, proto in nl_routes(s) if proto == 73)
    wait_for("every peer programmed", lambda: all(programmed(s) == n - 1 for s in dumps),
             max(120, n), pause=max(0.05, n / 500))

    # Every other host's route notifications (RTNLGRP_IPV4_ROUTE), read as they come:
    # nothing polls the hosts, so the measurement takes no CPU from the agents, and a
    # route's time is when its notification is read (within 2 ms of the kernel adding it).
    sel = selectors.DefaultSelector()
    watchers = []
    for k, (ns, _) in enumerate(hosts):
        s = netlink_in(w, ns, groups=0x40)  # RTMGRP_IPV4_ROUTE
        watchers.append(s)
        sel.register(s, selectors.EVENT_READ, k)

    # The joiner's lease: when etcd has its key, as a watcher of the leases sees it
    # (its subnet file comes later, once its device and rules are made).
    watch = subprocess.Popen(ctl + ["watch", "--prefix", "/coreos.com/network/subnets/"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
    w.procs.append(watch)
    os.set_blocking(watch.stdout.fileno(), False)
    sel.register(watch.stdout, selectors.EVENT_READ, None)
    time.sleep(2)  # its connection made and its watch started

    cpu_before = [cpu_ns(p.pid) for p in agents] + [cpu_ns(w.procs[0].pid)]
    start = start_host(n)
    joiner_env = f"{hosts[n][1]}/subnet.env"
    first = {}  # (host, dst, prefix length) -> when its route was first seen
    leased = want = None
    pending = set(range(n))
    deadline = start + 30
    while (want is None or leased is None or pending) and time.perf_counter() < deadline:
        for key, _ in sel.select(0.002):
            now = time.perf_counter()
            if key.data is None:
                if b"PUT" in (watch.stdout.read() or b"") and leased is None:
                    leased = now
                continue
            while True:
                try:
                    data = key.fileobj.recv(1 << 16)
                except BlockingIOError:
                    break
                for kind, dst, dst_len, proto in nl_route_messages(data):
                    if kind == 24 and proto == 73:
                        first.setdefault((key.data, dst, dst_len), now)
        if want is None:
            want = subnet_of(joiner_env)
        if want is not None:
            pending = {k for k in pending if (k, *want) not in first}
    if want is None or leased is None:
        raise RuntimeError(f"N={n}: the joiner held no lease within 30 s")
    if pending:
        raise RuntimeError(f"N={n}: {len(pending)} hosts never programmed the joiner")
    done = max(first[(k, *want)] for k in range(n))
    # On 2 cores the watcher may be scheduled after agents that already programmed the
    # joiner: the lease was in etcd by the first of them at the latest.
    seen = leased
    leased = min(leased, min(first[(k, *want)] for k in range(n)))
    cpu_after = [cpu_ns(p.pid) for p in agents[:n]] + [cpu_ns(w.procs[0].pid)]
    each = sorted((first[(k, *want)] - leased) * 1000 for k in range(n))
    agents_ms = (sum(cpu_after[:n]) - sum(cpu_before[:n])) / 1e6
    print(f"  N={n}: hosts programmed after the lease (ms): first {each[0]:.1f}, "
          f"median {each[n // 2]:.1f}, p90 {each[n * 9 // 10]:.1f}, last {each[-1]:.1f}; "
          f"CPU from the joiner's start until the last: the {n} agents {agents_ms:.1f} ms "
          f"({agents_ms / n:.2f} each), etcd {(cpu_after[n] - cpu_before[n]) / 1e6:.1f} ms; "
          f"the watcher saw the lease {1000 * (seen - leased):.1f} ms after it was first "
          "programmed", flush=True)
    sel.close()
    watch.terminate()
    watch.wait(5)
    for s in watchers + dumps:
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
        "routes_per_host": sh("ip", "-n", h0, "route", "show", "proto", "73").count("\n"),
        "neighbours_per_host": sh("ip", "-n", h0, "neigh", "show", "dev", "flannel.1",
                                  "nud", "permanent").count("\n"),
        "fdb_per_host": sh("bridge", "-n", h0, "fdb", "show", "dev", "flannel.1").count(" dst "),
        "agent_rss_mb_median": statistics.median(r for _, r, _ in after[1]),
        "agent_rss_mb_max": max(r for _, r, _ in after[1]),
        # a mean over every agent: one agent's CPU is below the clock tick (10 ms)
        "agent_cpu_ms_per_min_mean": statistics.mean(
            (a[0] - b[0]) * 1000 * per_min for a, b in zip(after[1], before[1])),
        # the nft, iptables and ip6tables it runs at the reconcile (every 5 s at most)
        "agent_children_cpu_ms_per_min_mean": statistics.mean(
            (a[2] - b[2]) * 1000 * per_min for a, b in zip(after[1], before[1])),
    }


def main():
    out, ours = sys.argv[1], sys.argv[2]
    ns = [int(x) for x in sys.argv[3:]] or [10, 50, 100, 250]
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
