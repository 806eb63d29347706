"""Where a data path's cycles go in netfilter: builds the paths named (scripts/bench_data.py's
functions, in namespaces of their own, all gone when it exits), and per path and round runs
`perf record -e cpu-clock -a` over 7 s of a 10 s iperf3 TCP transfer, then prints the
share of the machine's non-idle samples spent in conntrack and NAT, in nf_tables' expressions
and in the netfilter hook calls, with the largest symbols among them. Load-independent where
throughput is not: bench/overlay-path.md is made of its output.

Usage: python3 scripts/bench_perf.py OURS_BIN_DIR REF_BIN_DIR PATH,... MTU ROUNDS
"""
import collections, os, re, subprocess, sys, time

sys.dont_write_bytecode = True  # no __pycache__ left in scripts/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_data as bd  # noqa: E402

IDLE = re.compile(r"(halt|idle|mwait|cpu_startup_entry)")
KINDS = [("conntrack+nat", re.compile(r"^(__)?(nf_conntrack|nf_ct|nf_nat|nf_confirm|ipv4_confirm"
                                      r"|hash_conntrack|init_conntrack)")),
         ("nftables", re.compile(r"^(__)?(nft_|nf_tables)")),
         ("nf hooks", re.compile(r"^nf_hook_slow"))]
SECONDS = 7


def shares(lab, path, out_dir):
    """(Gbit/s as iperf3's receiver reports it, share per kind, the largest symbols)."""
    server = bd.start_server(lab, path.server)
    client = subprocess.Popen(["ip", "netns", "exec", path.client, "iperf3", "-c",
                               path.server_ip, "-p", str(bd.IPERF_PORT), "-t",
                               str(SECONDS + 3)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    time.sleep(1)
    data = os.path.join(out_dir, f"{path.name}-{path.mtu}.perf")
    subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-a", "-o", data, "--",
                    "sleep", str(SECONDS)], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True, timeout=60)
    text = client.communicate(timeout=60)[0].decode()
    bd.finish_server(lab, server)
    received = [line.split() for line in text.splitlines() if "receiver" in line]
    report = subprocess.run(["perf", "report", "-i", data, "--stdio", "--sort", "sym", "-F",
                             "overhead,sym", "--percent-limit", "0"],
                            capture_output=True, text=True, check=True, timeout=120).stdout
    busy, kinds, syms = 0.0, collections.Counter(), collections.Counter()
    for line in report.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+\[.\]\s+(\S+)", line)
        if not m or IDLE.search(m.group(2)):
            continue
        pct, sym = float(m.group(1)), m.group(2)
        busy += pct
        for kind, rx in KINDS:
            if rx.search(sym):
                kinds[kind] += pct
                syms[sym] += pct
    def of_busy(v):
        return round(100 * v / busy, 2)
    return (received[-1][-3] if received else "?", {k: of_busy(v) for k, v in kinds.items()},
            {k: of_busy(v) for k, v in syms.most_common(8)})


def main():
    if len(sys.argv) != 6:
        sys.exit(__doc__.split("\n\n")[-1].strip())
    s = settings(*sys.argv[1:])
    lab = bd.Lab()
    out_dir = lab.data_dir("perf")
    try:
        paths = [p for p in bd.build_paths(lab, s) if p.name in s.only]
        for p in paths:
            bd.reachable(p)
            bd.warm_up(lab, p)
        for r in range(s.rounds):
            for p in paths if r % 2 == 0 else paths[::-1]:
                gbps, kinds, top = shares(lab, p, out_dir)
                print(f"{p.name:20} {p.mtu} {gbps} Gbit/s {kinds} {top}", flush=True)
    finally:
        lab.cleanup()


def settings(ours, ref, only, mtu, rounds):
    """What bench_data.build_paths reads of its settings, and the rounds."""
    s = type("Settings", (), {})()
    s.ours, s.ref = os.path.abspath(ours), os.path.abspath(ref)
    s.only, s.mtus, s.rounds = only.split(","), (int(mtu),), int(rounds)
    return s


if __name__ == "__main__":
    main()
