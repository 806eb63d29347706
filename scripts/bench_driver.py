"""Driver for scripts/bench.sh. Calls ours and the reference alternately, one call each
in turn, so both see the same machine load; before each call it enters that side's host
namespace with setns, so no `ip netns exec` is timed. Prints the table and the ratios."""
import ctypes, json, os, statistics, subprocess, sys, tempfile, time

CLONE_NEWNET = 0x40000000
RSS_SAMPLES = 20
libc = ctypes.CDLL(None, use_errno=True)


def enter(ns_fd):
    if libc.setns(ns_fd, CLONE_NEWNET) != 0:
        sys.exit(f"setns: {os.strerror(ctypes.get_errno())}")


class Side:
    """One side's plugins. mode "bridge": bridge+host-local called directly; "macvlan":
    macvlan+host-local on a NIC of the host namespace; "host-local": host-local alone;
    "chain": podman's default list (bridge, portmap with one port per
    container, firewall, tuning) run by our cnitool for both sides, so only the plugins
    differ."""

    def __init__(self, name, bindir, tag, mode, masq, cnitool):
        self.name, self.bindir, self.prefix = name, bindir, f"{tag}-{name}"
        self.mode, self.cnitool = mode, cnitool
        self.ns = os.open(f"/var/run/netns/{self.prefix}", os.O_RDONLY)
        self._tmp = tempfile.TemporaryDirectory()  # removed when the driver exits
        self.work = self._tmp.name
        bridge = {
            "type": "bridge", "bridge": "cnibench0", "isDefaultGateway": True, "ipMasq": masq,
            "ipam": {"type": "host-local", "dataDir": self.work,
                     "ranges": [[{"subnet": "10.50.0.0/16"}]]},
        }
        if mode == "macvlan":
            self.conf = {"cniVersion": "1.0.0", "name": "bench", "type": "macvlan",
                         "master": "benchnic0", "ipam": bridge["ipam"]}
            self.results = {}
        elif mode in ("bridge", "host-local"):
            self.conf = dict(bridge, cniVersion="1.0.0", name="bench")
            self.results = {}  # ADD results, passed back as prevResult on DEL like a runtime
        else:
            os.mkdir(os.path.join(self.work, "conf"))
            with open(os.path.join(self.work, "conf", "10-bench.conflist"), "w") as f:
                json.dump({"cniVersion": "1.0.0", "name": "bench", "plugins": [
                    bridge, {"type": "portmap", "capabilities": {"portMappings": True}},
                    {"type": "firewall"}, {"type": "tuning"}]}, f)
        self.times = {"ADD": [], "DEL": []}
        self.rss = {"ADD": 0, "DEL": 0}

    def command(self, op, i):
        netns = f"/var/run/netns/{self.prefix}-{i}"
        if self.mode != "chain":
            env = dict(os.environ, CNI_COMMAND=op, CNI_CONTAINERID=f"bench{i}",
                       CNI_NETNS=netns, CNI_IFNAME="eth0", CNI_PATH=self.bindir)
            conf = dict(self.conf, prevResult=self.results[i]) if op == "DEL" else self.conf
            return [os.path.join(self.bindir, self.mode)], env, json.dumps(conf).encode()
        caps = {"portMappings": [{"hostPort": 10000 + i, "containerPort": 80,
                                  "protocol": "tcp"}]}
        env = dict(os.environ, NETCONFPATH=os.path.join(self.work, "conf"),
                   CNI_PATH=self.bindir, CNI_CACHE_DIR=os.path.join(self.work, "cache"),
                   CAP_ARGS=json.dumps(caps))
        return [self.cnitool, op.lower(), "bench", netns], env, b""

    def invoke(self, op, i, rss=False):
        """One call as a runtime makes it; with rss, through GNU time for the peak RSS of
        the plugin and its delegate (a child forked from Python would report Python's)."""
        enter(self.ns)
        cmd, env, stdin = self.command(op, i)
        if rss:
            cmd = ["/usr/bin/time", "-f", "%M"] + cmd
        start = time.perf_counter()
        p = subprocess.run(cmd, input=stdin, env=env, capture_output=True)
        elapsed = (time.perf_counter() - start) * 1000
        if p.returncode != 0:
            sys.exit(f"{self.name} {op} {i} failed: {p.stdout.decode()} {p.stderr.decode()}")
        if op == "ADD" and self.mode != "chain":
            self.results[i] = json.loads(p.stdout)
        if rss:
            self.rss[op] = max(self.rss[op], int(p.stderr.decode().split()[-1]))
        else:
            self.times[op].append(elapsed)


def reservation_files(work, rounds=2000):
    """What the reference's files cost host-local per call, measured alone in its data
    directory: claiming an address (a file written under a temporary name, linked into
    place, the temporary removed), the round-robin mark (written, renamed over), and the
    release (one unlink); the same system calls host-local makes."""
    d = os.path.join(work, "files")
    os.mkdir(d)
    start = time.perf_counter()
    for i in range(rounds):
        tmp, name = os.path.join(d, f".t{i}"), os.path.join(d, f"10.{i >> 8 & 255}.{i & 255}.1")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.write(fd, b"bench0\r\neth0")
        os.close(fd)
        os.link(tmp, name)
        os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.write(fd, name.encode())
        os.close(fd)
        os.rename(tmp, os.path.join(d, "last_reserved_ip.0"))
    add = (time.perf_counter() - start) * 1e6 / rounds
    start = time.perf_counter()
    for i in range(rounds):
        os.unlink(os.path.join(d, f"10.{i >> 8 & 255}.{i & 255}.1"))
    rel = (time.perf_counter() - start) * 1e6 / rounds
    print(f"reservation files: {add:.0f} us per ADD (claim + mark), {rel:.0f} us per DEL, "
          "including Python's own per-call cost")


def main(tag, n, mode, masq, ours_dir, ref_dir):
    cnitool = os.path.join(ours_dir, "cnitool")
    sides = [Side("ours", ours_dir, tag, mode, masq, cnitool),
             Side("ref", ref_dir, tag, mode, masq, cnitool)]
    for op in ("ADD", "DEL"):
        for i in range(1, n + 1):
            for side in (sides if i % 2 else sides[::-1]):
                side.invoke(op, i)
    for i in range(1, min(RSS_SAMPLES, n) + 1):
        for op in ("ADD", "DEL"):
            for side in sides:
                side.invoke(op, i, rss=True)
    what = {"bridge": "bridge+host-local", "macvlan": "macvlan+host-local",
            "host-local": "host-local alone", "chain": "podman's chain through cnitool"}[mode]
    print(f"{n} ADDs then {n} DELs each of {what}, alternating ours and the reference; "
          f"ipMasq={masq}")
    print(f"{'plugins':8} {'op':4} {'median ms':>10} {'p90 ms':>8} {'p99 ms':>8} {'peak RSS':>10}")
    for side in sides:
        for op in ("ADD", "DEL"):
            t = side.times[op]
            q = statistics.quantiles(t, n=100)
            print(f"{side.name:8} {op:4} {statistics.median(t):10.2f} {q[89]:8.2f} {q[98]:8.2f} "
                  f"{side.rss[op] / 1024:8.1f}MB")
    ours, ref = sides
    if mode == "host-local":
        reservation_files(ours.work)
    for op in ("ADD", "DEL"):
        mo, mr = statistics.median(ours.times[op]), statistics.median(ref.times[op])
        print(f"{op}: ours/reference median time {mo / mr:.2f} ({mr / mo:.1f}x faster), "
              f"peak RSS {ours.rss[op] / ref.rss[op]:.2f}")


if __name__ == "__main__":
    tag, n, mode, masq, ours_dir, ref_dir = sys.argv[1:]
    main(tag, int(n), mode, masq == "true", ours_dir, ref_dir)
