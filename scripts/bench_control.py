"""Control-plane benchmarks of scripts/bench.sh: ours and Debian's reference plugins with
the same configs, side by side in one run. Calls alternate between the two sides (A B A B)
so both see the same machine load; before each call the calling thread enters that side's
host namespace with setns, so no `ip netns exec` is timed.

  control OUT OURS REF [N [FLOOR]]: N sequential ADDs then N DELs per config
      (bridge+host-local with and without ipMasq, macvlan+host-local, ptp+host-local,
      podman's default chain through our cnitool): wall median/p90/p99, CPU per call, peak
      RSS of one call; DEL returned vs veth gone; 20-way parallel ADD then DEL; binary
      sizes. FLOOR, the cni-floor binary (bench/floor: the least a bridge+host-local ADD
      and DEL must do), is a third side of bridge+host-local's sequential calls.
  trace OUT OURS REF [N]: N warm-up ADD/DEL pairs of our bridge+host-local, then N traced
      ones (CNI_RS_TRACE): per phase of both processes, median ms since the exec.
  scale OUT OURS REF: host-local ADD and DEL with 100, 1,000 and 10,000 allocations
      already in a /16 (the reference reads every reservation file on each call).

Writes OUT/control.json (every per-call figure) and CSV tables next to it."""
import concurrent.futures
import ctypes
import csv
import ipaddress
import json
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

CLONE_NEWNET = 0x40000000
RSS_SAMPLES = 20
libc = ctypes.CDLL(None, use_errno=True)
BINARIES = ["bridge", "host-local", "macvlan", "ptp", "portmap", "firewall", "tuning",
            "bandwidth", "loopback", "static", "host-device"]


def enter(ns_fd):
    """Moves the calling thread (and what it starts) into a network namespace."""
    if libc.setns(ns_fd, CLONE_NEWNET) != 0:
        sys.exit(f"setns: {os.strerror(ctypes.get_errno())}")


def ip(*args):
    subprocess.run(["ip", *args], check=True, timeout=30)


def quantiles(t):
    q = statistics.quantiles(t, n=100) if len(t) > 1 else [t[0]] * 99
    return statistics.median(t), q[89], q[98]


def link_exists(sock, name):
    """RTM_GETLINK by name on a netlink socket of the namespace to look in."""
    attr = name.encode() + b"\0"
    rta = struct.pack("HH", 4 + len(attr), 3) + attr  # IFLA_IFNAME
    rta += b"\0" * (-len(rta) % 4)
    body = struct.pack("BxHiII", 0, 0, 0, 0, 0) + rta
    sock.send(struct.pack("IHHII", 16 + len(body), 18, 1, 1, 0) + body)  # RTM_GETLINK
    reply = sock.recv(65536)
    kind = struct.unpack_from("H", reply, 4)[0]
    if kind == 2:  # NLMSG_ERROR: 0 would be an ack, anything else says it is not there
        return struct.unpack_from("i", reply, 16)[0] == 0
    return kind == 16  # RTM_NEWLINK


class Watchdog:
    """Runs one call as a Go runtime does (os/exec): stdin written, both pipes read to
    their end, then a wait that blocks until the process has exited. subprocess.run with
    a timeout polls instead, sleeping 1 ms, then 2, whenever the pipes close before the
    exit can be reaped, adding whole milliseconds to a call that exits a moment late.
    The timeout is a timer thread, started before the clock, that kills the process."""

    def __init__(self, timeout):
        self.proc = None
        self.timer = threading.Timer(timeout, lambda: self.proc and self.proc.kill())
        self.timer.daemon = True
        self.timer.start()

    def run(self, cmd, stdin, env):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
        out, err = self.proc.communicate(stdin)
        return subprocess.CompletedProcess(cmd, self.proc.returncode, out, err)

    def cancel(self):
        self.timer.cancel()


class Side:
    """One side's plugins and namespaces: a host namespace, n container namespaces."""

    def __init__(self, name, bindir, tag, cnitool):
        self.name, self.bindir, self.prefix, self.cnitool = name, bindir, f"{tag}-{name}", cnitool
        self.ns = os.open(f"/var/run/netns/{self.prefix}", os.O_RDONLY)
        self._tmp = tempfile.TemporaryDirectory()
        self.work = self._tmp.name

    def conf(self, config):
        """The network config of `config` for this side (its own store)."""
        ipam = {"type": "host-local", "dataDir": os.path.join(self.work, config),
                "ranges": [[{"subnet": "10.50.0.0/16"}]]}
        bridge = {"type": "bridge", "bridge": f"br-{config}"[:15], "isDefaultGateway": True,
                  "ipMasq": config in ("masq", "chain"), "ipam": ipam}
        c = {"macvlan": {"type": "macvlan", "master": "benchnic0", "ipam": ipam},
             "ptp": {"type": "ptp", "ipMasq": False, "ipam": ipam}}.get(config, bridge)
        return dict(c, cniVersion="1.0.0", name="bench")

    def chain_dir(self):
        d = os.path.join(self.work, "conf")
        if not os.path.isdir(d):
            os.mkdir(d)
            with open(os.path.join(d, "10-bench.conflist"), "w") as f:
                bridge = {k: v for k, v in self.conf("chain").items()
                          if k not in ("cniVersion", "name")}
                json.dump({"cniVersion": "1.0.0", "name": "bench", "plugins": [
                    bridge,
                    {"type": "portmap", "capabilities": {"portMappings": True}},
                    {"type": "firewall"}, {"type": "tuning"}]}, f)
        return d

    def command(self, config, op, i, prev=None):
        """What a runtime runs for one call: argv, environment, stdin."""
        netns = f"/var/run/netns/{self.prefix}-{i}"
        if config == "chain":
            caps = {"portMappings": [{"hostPort": 10000 + i, "containerPort": 80,
                                      "protocol": "tcp"}]}
            env = dict(os.environ, NETCONFPATH=self.chain_dir(), CNI_PATH=self.bindir,
                       CNI_CACHE_DIR=os.path.join(self.work, "cache"), CAP_ARGS=json.dumps(caps))
            return [self.cnitool, op.lower(), "bench", netns], env, b""
        conf = self.conf(config)
        if prev is not None:
            conf["prevResult"] = prev
        env = dict(os.environ, CNI_COMMAND=op, CNI_CONTAINERID=f"bench{i}", CNI_NETNS=netns,
                   CNI_IFNAME="eth0", CNI_PATH=self.bindir)
        # host-local alone reads the ipam section of the network config, as a delegate
        plugin = "host-local" if config == "host-local" else conf["type"]
        return [os.path.join(self.bindir, plugin)], env, json.dumps(conf).encode()

    def invoke(self, config, op, i, prev=None, rss=False):
        """One call; returns (wall ms, CPU ms, result or peak RSS KiB)."""
        enter(self.ns)
        cmd, env, stdin = self.command(config, op, i, prev)
        if rss:
            cmd = ["/usr/bin/time", "-f", "%M"] + cmd
        watchdog = Watchdog(60)
        try:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            p = watchdog.run(cmd, stdin, env)
            wall = (time.perf_counter() - start) * 1000
        finally:
            watchdog.cancel()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) * 1000
        if p.returncode != 0:
            sys.exit(f"{self.name} {config} {op} {i} failed: {p.stdout.decode()} "
                     f"{p.stderr.decode()}")
        if rss:
            return wall, cpu, int(p.stderr.decode().split()[-1])
        out = json.loads(p.stdout) if op == "ADD" and p.stdout.strip() else None
        return wall, cpu, out

    def allocations(self, config):
        d = os.path.join(self.work, config, "bench")
        if not os.path.isdir(d):
            return []
        return [f for f in os.listdir(d) if (f[0].isdigit() and "." in f) or ":" in f]


class FloorSide(Side):
    """The floor (bench/floor): bridge+host-local only, its parameters in FLOOR_*; the
    runtime's stdin is the same network config as the others get."""

    def __init__(self, binary, tag):
        super().__init__("floor", os.path.dirname(binary), tag, None)
        self.binary = binary

    def command(self, config, op, i, prev=None):
        if config != "bridge":
            sys.exit(f"the floor does bridge+host-local only, not {config}")
        conf = self.conf(config)
        if prev is not None:
            conf["prevResult"] = prev
        env = dict(os.environ, CNI_COMMAND=op, CNI_CONTAINERID=f"bench{i}",
                   CNI_NETNS=f"/var/run/netns/{self.prefix}-{i}", CNI_IFNAME="eth0",
                   CNI_PATH=self.bindir, FLOOR_BRIDGE=conf["bridge"],
                   FLOOR_SUBNET=conf["ipam"]["ranges"][0][0]["subnet"],
                   FLOOR_DIR=os.path.join(conf["ipam"]["dataDir"], "bench"))
        return [self.binary], env, json.dumps(conf).encode()


def check_added(side, config, results, n):
    """bridge+host-local: every ADD's address unique, and the first and the last
    container reach the gateway on the bridge (not timed). Exits when not."""
    addrs = [r["ips"][0]["address"] for r in results.values()]
    if len(addrs) != n or len(set(addrs)) != n:
        sys.exit(f"{side.name} {config}: {len(set(addrs))} distinct addresses of {n} ADDs")
    for i in sorted({1, n}):
        r = results[i]
        ns = f"{side.prefix}-{i}"
        shown = subprocess.run(["ip", "-n", ns, "-o", "addr", "show", "dev", "eth0", "up"],
                               capture_output=True, text=True, timeout=30).stdout
        gw = r["ips"][0].get("gateway", "")
        ping = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2", gw],
                              capture_output=True, timeout=30)
        if r["ips"][0]["address"] not in shown or ping.returncode != 0:
            sys.exit(f"{side.name} {config}: ADD {i} gave no working interface "
                     f"({r['ips'][0]['address']} via {gw}): {shown.strip()!r} "
                     f"{ping.stdout.decode()}")


def check_deleted(side, config):
    """After the floor's DELs its host namespace holds no container's veth (within 5 s:
    the floor, like ours, leaves the kernel's unregistering to a process not waited for)."""
    deadline = time.monotonic() + 5
    while True:
        links = subprocess.run(["ip", "-n", side.prefix, "-o", "link", "show", "type", "veth"],
                               capture_output=True, text=True, timeout=30).stdout
        left = [x for x in links.splitlines() if ": veth" in x]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if left:
        sys.exit(f"{side.name} {config}: {len(left)} veth pairs left after the DELs")


def sequential(sides, config, n):
    """n ADDs then n DELs, alternating sides call by call; then RSS samples."""
    rows = {s.name: {"ADD": [], "DEL": [], "ADD_cpu": [], "DEL_cpu": []} for s in sides}
    results = {s.name: {} for s in sides}
    for op in ("ADD", "DEL"):
        for i in range(1, n + 1):
            for s in (sides if i % 2 else sides[::-1]):
                prev = results[s.name].get(i) if op == "DEL" and config != "chain" else None
                wall, cpu, out = s.invoke(config, op, i, prev)
                rows[s.name][op].append(wall)
                rows[s.name][op + "_cpu"].append(cpu)
                if out is not None:
                    results[s.name][i] = out
        if op == "ADD" and config == "bridge":
            for s in sides:
                check_added(s, config, results[s.name], n)
    for s in sides:
        for op in ("ADD", "DEL"):
            rows[s.name][op + "_rss"] = 0
        for i in range(1, min(RSS_SAMPLES, n) + 1):
            add = s.invoke(config, "ADD", i, rss=True)[2]
            prev = None  # DEL without prevResult: the same work for the plugins
            rel = s.invoke(config, "DEL", i, prev, rss=True)[2]
            rows[s.name]["ADD_rss"] = max(rows[s.name]["ADD_rss"], add)
            rows[s.name]["DEL_rss"] = max(rows[s.name]["DEL_rss"], rel)
        left = s.allocations(config)
        if left:
            sys.exit(f"{s.name} {config}: {len(left)} addresses left after the DELs")
        if s.name == "floor":
            check_deleted(s, config)
    return rows


def del_vs_gone(sides, n=40):
    """DEL returned vs the veth pair gone from the kernel, bridge+host-local: each DEL
    alone, then the host namespace polled by netlink until neither name of the pair is
    there (ours retires the pair and a detached child deletes it after DEL returned)."""
    out = {}
    for s in sides:
        enter(s.ns)
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        returned, gone = [], []
        for i in range(1, n + 1):
            _, _, r = s.invoke("bridge", "ADD", i)
            veth = r["interfaces"][1]["name"]
            names = [veth, "vdel" + veth[4:]]
            start = time.perf_counter()
            s.invoke("bridge", "DEL", i, r)
            returned.append((time.perf_counter() - start) * 1000)
            deadline = start + 5
            while any(link_exists(nl, x) for x in names) and time.perf_counter() < deadline:
                time.sleep(0.0002)
            gone.append((time.perf_counter() - start) * 1000)
        nl.close()
        out[s.name] = {"returned": returned, "gone": gone}
    return out


def parallel(sides, n, workers=20):
    """n ADDs then n DELs, `workers` at a time, one side after the other per phase."""
    out = {}
    for op in ("ADD", "DEL"):
        for s in sides:
            def one(i, s=s, op=op):
                prev = out[s.name]["results"][i] if op == "DEL" else None
                return i, s.invoke("bridge", op, i, prev)
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                done = list(pool.map(one, range(1, n + 1)))
            total = (time.perf_counter() - start) * 1000
            o = out.setdefault(s.name, {"results": {}})
            o[op] = {"wall_total_ms": total, "calls": [d[1][0] for d in done]}
            if op == "ADD":
                o["results"] = {i: r[2] for i, r in done}
                addrs = [r[2]["ips"][0]["address"] for _, r in done]
                o["unique_addresses"] = len(set(addrs)) == n
            else:
                o["store_empty"] = not s.allocations("bridge")
    for s in sides:
        out[s.name].pop("results")
    return out


def fill_store(side, count):
    """`count` allocations in the reference's file format in a fresh store of a /16."""
    d = os.path.join(side.work, "host-local", "bench")
    subprocess.run(["rm", "-rf", os.path.join(side.work, "host-local")], check=True)
    os.makedirs(d, mode=0o700)
    net = ipaddress.ip_network("10.50.0.0/16")
    for k in range(count):
        with open(os.path.join(d, str(net[2 + k])), "w") as f:
            f.write(f"fill{k}\r\neth0")
    with open(os.path.join(d, "last_reserved_ip.0"), "w") as f:
        f.write(str(net[1 + count]))


def scale(sides, sizes=(100, 1000, 10000), n=40):
    """host-local ADD and DEL latency with `size` allocations already there."""
    out = {}
    for size in sizes:
        for s in sides:
            fill_store(s, size)
            s.invoke("host-local", "ADD", 0)  # ours indexes the files it finds once
            s.invoke("host-local", "DEL", 0)
        for op in ("ADD", "DEL"):
            times = {s.name: [] for s in sides}
            for i in range(1, n + 1):
                for s in (sides if i % 2 else sides[::-1]):
                    times[s.name].append(s.invoke("host-local", op, i)[0])
            for name, t in times.items():
                out.setdefault(str(size), {}).setdefault(name, {})[op] = t
    return out


def trace(side, out, n):
    """Where one ADD and one DEL of bridge+host-local spend their time: the plugins'
    CNI_RS_TRACE marks (CLOCK_MONOTONIC, as time.monotonic_ns) against the exec."""
    for i in range(1, n + 1):
        side.invoke("bridge", "ADD", i)
        side.invoke("bridge", "DEL", i)
    offsets = {}
    path = os.path.join(side.work, "trace")
    for i in range(1, n + 1):
        for op in ("ADD", "DEL"):
            if os.path.exists(path):
                os.unlink(path)
            os.environ["CNI_RS_TRACE"] = path
            start = time.monotonic_ns()
            side.invoke("bridge", op, i)
            end = time.monotonic_ns()
            del os.environ["CNI_RS_TRACE"]
            with open(path) as f:
                for line in f:
                    ns, _pid, program, phase = line.rstrip("\n").split(" ", 3)
                    key = (op, program, phase)
                    offsets.setdefault(key, []).append((int(ns) - start) / 1e6)
            offsets.setdefault((op, "(runtime)", "call returned"), []).append(
                (end - start) / 1e6)
    rows = sorted(((op, statistics.median(v), program, phase)
                   for (op, program, phase), v in offsets.items()),
                  key=lambda r: (r[0], r[1]))
    with open(os.path.join(out, "trace.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["op", "median_ms_since_exec", "program", "phase"])
        last = {}
        for op, ms, program, phase in rows:
            w.writerow([op, f"{ms:.3f}", program, phase])
            print(f"{op:4} {ms:7.3f} ms  (+{ms - last.get(op, 0):6.3f})  {program:11} {phase}")
            last[op] = ms


def sizes(ours, ref):
    return {b: {"ours": os.path.getsize(os.path.join(ours, b)),
                "ref": os.path.getsize(os.path.join(ref, b))}
            for b in BINARIES if os.path.exists(os.path.join(ref, b))}


def write_control(out, data):
    with open(os.path.join(out, "control.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["config", "side", "op", "n", "median_ms", "p90_ms", "p99_ms",
                    "cpu_ms_median", "peak_rss_mb"])
        for config, rows in data["sequential"].items():
            for side, r in rows.items():
                for op in ("ADD", "DEL"):
                    m, p90, p99 = quantiles(r[op])
                    w.writerow([config, side, op, len(r[op]), f"{m:.2f}", f"{p90:.2f}",
                                f"{p99:.2f}", f"{statistics.median(r[op + '_cpu']):.2f}",
                                f"{r[op + '_rss'] / 1024:.1f}"])
    with open(os.path.join(out, "parallel.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["side", "op", "workers", "n", "wall_total_ms", "median_ms", "p99_ms",
                    "unique_addresses", "store_empty"])
        for side, r in data["parallel"].items():
            for op in ("ADD", "DEL"):
                m, _, p99 = quantiles(r[op]["calls"])
                w.writerow([side, op, 20, len(r[op]["calls"]), f"{r[op]['wall_total_ms']:.0f}",
                            f"{m:.2f}", f"{p99:.2f}", r["unique_addresses"], r["store_empty"]])
    with open(os.path.join(out, "delgone.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["side", "n", "del_returned_median_ms", "veth_gone_median_ms"])
        for side, r in data["del_vs_gone"].items():
            w.writerow([side, len(r["returned"]), f"{statistics.median(r['returned']):.2f}",
                        f"{statistics.median(r['gone']):.2f}"])
    with open(os.path.join(out, "sizes.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["binary", "ours_bytes", "ref_bytes"])
        for b, r in data["sizes"].items():
            w.writerow([b, r["ours"], r["ref"]])


def write_scale(out, data):
    with open(os.path.join(out, "scale.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["allocations", "side", "op", "n", "median_ms", "p90_ms"])
        for size, by_side in data.items():
            for side, ops in by_side.items():
                for op, t in ops.items():
                    m, p90, _ = quantiles(t)
                    w.writerow([size, side, op, len(t), f"{m:.2f}", f"{p90:.2f}"])


def save(out, name, data):
    with open(os.path.join(out, name), "w") as f:
        json.dump(data, f)


def main(what, tag, out, ours, ref, n, floor=None):
    cnitool = os.path.join(ours, "cnitool")
    sides = [Side("ours", ours, tag, cnitool), Side("ref", ref, tag, cnitool)]
    floor_side = FloorSide(floor, tag) if floor else None
    if what == "trace":
        trace(sides[0], out, n)
        return
    if what == "scale":
        data = scale(sides)
        save(out, "scale.json", data)
        write_scale(out, data)
        return
    data = {"sequential": {}, "n": n}
    for config in ("bridge", "masq", "macvlan", "ptp", "chain"):
        these = sides + [floor_side] if config == "bridge" and floor_side else sides
        print(f"control: {n} ADDs then {n} DELs of {config}, "
              + ("ours, the reference and the floor" if len(these) > 2 else
                 "ours and the reference"), flush=True)
        data["sequential"][config] = sequential(these, config, n)
    print("control: DEL returned vs veth gone", flush=True)
    data["del_vs_gone"] = del_vs_gone(sides, min(40, n))
    print(f"control: {n} ADDs then {n} DELs, 20 at a time", flush=True)
    data["parallel"] = parallel(sides, n)
    data["sizes"] = sizes(ours, ref)
    save(out, "control.json", data)
    write_control(out, data)


if __name__ == "__main__":
    what, tag, out, ours, ref = sys.argv[1:6]
    main(what, tag, out, ours, ref, int(sys.argv[6]) if len(sys.argv) > 6 else 200,
         sys.argv[7] if len(sys.argv) > 7 else None)
