"""Driver for scripts/bench.sh: runs N ADDs then N DELs of one plugin set from inside the
host namespace (so no `ip netns exec` per call is measured) and prints one JSON line;
with --report, reads those lines and prints the table and ratios."""
import json, os, statistics, subprocess, sys, tempfile, time


def run_side(side, bindir, prefix, n, masq):
    data = tempfile.mkdtemp()
    conf = json.dumps({
        "cniVersion": "1.0.0", "name": "bench", "type": "bridge", "bridge": "cnibench0",
        "isDefaultGateway": True, "ipMasq": masq == "true",
        "ipam": {"type": "host-local", "dataDir": data, "ranges": [[{"subnet": "10.50.0.0/16"}]]},
    }).encode()
    out = {"side": side}
    for op in ("ADD", "DEL"):
        times = []
        for i in range(1, n + 1):
            start = time.perf_counter()
            invoke(bindir, op, prefix, i, conf)
            times.append((time.perf_counter() - start) * 1000)
        q = statistics.quantiles(times, n=100)
        out[op] = {"median": statistics.median(times), "p90": q[89], "p99": q[98]}
    # Peak RSS in a pass of its own, through GNU time: a child forked from this Python
    # process would report Python's high-water mark, not the plugin's.
    for op in ("ADD", "DEL"):
        out[op]["rss_kb"] = max(invoke(bindir, op, prefix, i, conf, rss=True) for i in range(1, RSS_SAMPLES + 1))
    print(json.dumps(out), flush=True)


RSS_SAMPLES = 20


def invoke(bindir, op, prefix, i, conf, rss=False):
    """One plugin call as a runtime makes it; with rss, returns the peak RSS in KiB of the
    plugin and its delegate."""
    env = dict(os.environ, CNI_COMMAND=op, CNI_CONTAINERID=f"bench{i}",
               CNI_NETNS=f"/var/run/netns/{prefix}-{i}", CNI_IFNAME="eth0", CNI_PATH=bindir)
    cmd = [os.path.join(bindir, "bridge")]
    if rss:
        cmd = ["/usr/bin/time", "-f", "%M"] + cmd
    p = subprocess.run(cmd, input=conf, env=env, capture_output=True)
    if p.returncode != 0:
        sys.exit(f"{bindir} {op} {i} failed: {p.stdout.decode()} {p.stderr.decode()}")
    return int(p.stderr.decode().split()[-1]) if rss else None


def report():
    rows = {}
    for line in sys.stdin:
        r = json.loads(line)
        rows[r["side"]] = r
    print(f"{'plugins':10} {'op':4} {'median ms':>10} {'p90 ms':>8} {'p99 ms':>8} {'peak RSS':>10}")
    for side in ("ours", "ref"):
        for op in ("ADD", "DEL"):
            m = rows[side][op]
            print(f"{side:10} {op:4} {m['median']:10.2f} {m['p90']:8.2f} {m['p99']:8.2f} {m['rss_kb']/1024:8.1f}MB")
    for op in ("ADD", "DEL"):
        o, r = rows["ours"][op], rows["ref"][op]
        print(f"{op}: ours takes {o['median']/r['median']:.2f}x the reference's median time "
              f"({r['median']/o['median']:.1f}x faster), peak RSS {o['rss_kb']/r['rss_kb']:.2f}x")


if __name__ == "__main__":
    if sys.argv[1] == "--report":
        report()
    else:
        side, bindir, prefix, n, masq = sys.argv[1:]
        run_side(side, bindir, prefix, int(n), masq)
