"""Writes bench/RESULTS.md and draws bench/latency.png and bench/dataplane.png (gnuplot)
from whatever figures scripts/bench.sh has left in the directory: control.json,
scale.json, agent.json, data.json. Every table says which machine and versions made it.

  bench_report.py OUT OURS_BIN_DIR REF_BIN_DIR"""
import csv
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

CONFIGS = {"bridge": "bridge+host-local", "masq": "bridge+host-local, ipMasq",
           "macvlan": "macvlan+host-local", "ptp": "ptp+host-local",
           "chain": "podman's chain via cnitool"}


def load(out, name):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def cmd(*args):
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return "?"


def pct(t, q):
    s = sorted(t)
    return s[min(len(s) - 1, int(q * len(s)))]


def cpu_model():
    return next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                 if l.startswith("model name")), "?")


def machine():
    model = cpu_model()
    mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    return (f"{os.cpu_count()} cores ({model}), {mem / 1048576:.0f} GiB, "
            f"Linux {platform.release()}")


def versions():
    ours = cmd("git", "describe", "--always", "--dirty")
    ref = cmd("dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins")
    iperf = cmd("iperf3", "--version").split("\n")[0]
    etcd = cmd("etcd", "--version").split("\n")[0]
    rustc = cmd("rustc", "--version")
    return f"ours {ours} ({rustc}); reference containernetworking-plugins {ref}; {iperf}; {etcd}"


def control_tables(c):
    lines = ["## Control plane",
             f"{c['n']} sequential ADDs then {c['n']} DELs per config, calls alternating "
             "ours and the reference (and, for bridge+host-local, the floor: bench/floor, "
             "the least such an ADD/DEL must do: two static process starts, the kernel "
             "calls on one netlink socket per namespace, the reservation files; its DEL, "
             "like ours, leaves the kernel's deletion of the pair to a child it does not wait "
             "for); wall time "
             "per call (ms), CPU per call (ms, the plugin and its delegates), peak RSS of "
             "one call (MB, the largest of 20).", "",
             "| config | op | ours median / p90 / p99 | reference median / p90 / p99 | "
             "floor median / p90 / p99 | ours faster by | CPU ours / ref / floor | "
             "peak RSS ours / ref / floor |",
             "|---|---|---|---|---|---|---|---|"]
    for config, rows in c["sequential"].items():
        o, r, f = rows["ours"], rows["ref"], rows.get("floor")
        for op in ("ADD", "DEL"):
            def q(t):
                return f"{statistics.median(t):.1f} / {pct(t, .9):.1f} / {pct(t, .99):.1f}"
            cpu = [statistics.median(x[op + "_cpu"]) for x in (o, r)]
            rss = [x[op + "_rss"] / 1024 for x in (o, r)]
            if f:
                cpu.append(statistics.median(f[op + "_cpu"]))
                rss.append(f[op + "_rss"] / 1024)
            lines.append(
                f"| {CONFIGS[config]} | {op} | {q(o[op])} | {q(r[op])} | "
                f"{q(f[op]) if f else '–'} | "
                f"{statistics.median(r[op]) / statistics.median(o[op]):.2f}x | "
                f"{' / '.join(f'{x:.1f}' for x in cpu)} | "
                f"{' / '.join(f'{x:.1f}' for x in rss)} |")
    g = c["del_vs_gone"]
    lines += ["", "DEL returned vs the veth pair gone from the kernel (bridge+host-local, "
              f"{len(g['ours']['returned'])} DELs one at a time, the host polled by netlink): "
              "ours retires the pair (the container's end down and renamed, the host's "
              "labelled) and a detached child deletes it; the reference deletes it before "
              "returning.", "",
              "| | DEL returned (median ms) | veth gone (median ms) |", "|---|---|---|"]
    for side in ("ours", "ref"):
        lines.append(f"| {side} | {statistics.median(g[side]['returned']):.1f} | "
                     f"{statistics.median(g[side]['gone']):.1f} |")
    p = c["parallel"]
    lines += ["", f"{c['n']} ADDs then {c['n']} DELs of bridge+host-local, 20 at a time:", "",
              "| | op | wall total (ms) | per call median / p99 (ms) | unique addresses | "
              "store empty after |", "|---|---|---|---|---|---|"]
    for side in ("ours", "ref"):
        for op in ("ADD", "DEL"):
            t = p[side][op]["calls"]
            lines.append(f"| {side} | {op} | {p[side][op]['wall_total_ms']:.0f} | "
                         f"{statistics.median(t):.1f} / {pct(t, .99):.1f} | "
                         f"{p[side]['unique_addresses']} | {p[side]['store_empty']} |")
    lines += ["", "Binary sizes (bytes; ours static musl executables, the reference Go):", "",
              "| binary | ours | reference |", "|---|---|---|"]
    for b, s in c["sizes"].items():
        lines.append(f"| {b} | {s['ours']:,} | {s['ref']:,} |")
    return lines


def scale_table(s):
    lines = ["", "## Scale: host-local with allocations already in the store",
             "A /16 holding N allocations in the reference's file format (both read it); "
             "40 ADDs then 40 DELs per size, alternating; median ms per call.", "",
             "| allocations | ADD ours | ADD reference | DEL ours | DEL reference |",
             "|---|---|---|---|---|"]
    for size, by in s.items():
        m = {(side, op): statistics.median(t) for side, ops in by.items() for op, t in ops.items()}
        lines.append(f"| {int(size):,} | {m['ours', 'ADD']:.1f} | {m['ref', 'ADD']:.1f} | "
                     f"{m['ours', 'DEL']:.1f} | {m['ref', 'DEL']:.1f} |")
    return lines


def agent_table(a):
    lines = ["", "## Scale: vxlan-overlay-agent",
             "N hosts (namespaces on one switch), an agent each, one etcd; then one more "
             "host starts its agent. Join = until every other host has the new host's route "
             "(programmed after its neighbour and FDB entry; seen by its route notification); "
             "its lease = when an etcd watcher sees the new host's key, or the first host "
             "programs it if that is earlier. Steady state over 30 s.", "",
             "| hosts | join from agent start (ms) | join from its lease (ms) | etcd messages "
             "per agent per minute | routes / neighbours / FDB entries per host | agent RSS "
             "median / max (MB) | agent CPU (ms per minute, mean; + the nft/iptables it runs) |",
             "|---|---|---|---|---|---|---|"]
    for r in a:
        lines.append(f"| {r['n']} | {r['join_ms_from_start']:.0f} | {r['join_ms_from_lease']:.1f} | "
                     f"{r['etcd_msgs_per_host_per_min']:.1f} | {r['routes_per_host']} / "
                     f"{r['neighbours_per_host']} / {r['fdb_per_host']} | "
                     f"{r['agent_rss_mb_median']:.1f} / {r['agent_rss_mb_max']:.1f} | "
                     f"{r['agent_cpu_ms_per_min_mean']:.1f}"
                     + (f" + {r['agent_children_cpu_ms_per_min_mean']:.1f}"
                        if "agent_children_cpu_ms_per_min_mean" in r else "") + " |")
    return lines


def data_table(d):
    lines = ["", "## Data plane",
             "iperf3 TCP (Gbit/s, and as a fraction of the path's raw kernel path: a veth "
             "pair between two namespaces for same-host rows, the underlay host to host for "
             "cross-host rows), machine CPU seconds per Gbit transferred, ping RTT median of "
             "100 (ms), UDP loss at 100 Mbit/s (%); medians of the runs. Cross host: overlay "
             "is our vxlan-overlay's default config (ipMasq on), overlay-nomasq with ipMasq "
             "false, directrouting with directRouting (ipMasq false); vxlan-hand is flannel's "
             "VXLAN built with iproute2, vxlan-hand-fwd the same plus the FLANNEL-FWD accept "
             "a flanneld v0.20.2 node keeps by default, vxlan-hand-masq plus its --ip-masq "
             "rules as well (its masquerade and FLANNEL-FWD), routing-hand plain routing "
             "between the hosts (pods on a bridge, no encapsulation, the underlay's MTU), "
             "directrouting-hand the same as flanneld's DirectRouting programs it (pods at "
             "the VXLAN MTU, FLANNEL-FWD).", "",
             "| path | MTU | TCP Gbit/s | of raw | CPU s/Gbit | RTT ms | UDP loss % |",
             "|---|---|---|---|---|---|---|"]
    for r in d:
        lines.append(f"| {r['path']} | {r['mtu']} | {r['tcp_gbps']:.2f} | {r['tcp_ratio']:.2f} | "
                     f"{r['cpu_s_per_gbit']:.2f} | {r['rtt_ms']:.3f} | {r['udp_loss_pct']:.2f} |")
    lines += ["", "Where the overlay paths' cycles go, setting by setting (perf): overlay-path.md."]
    return lines


def trace_table(t):
    """Where one bridge+host-local ADD and DEL spend their time (scripts/bench.sh trace)."""
    lines = ["", "## Where the time goes",
             "The phases the plugins mark with `CNI_RS_TRACE` (median ms since the runtime's "
             "exec of the plugin, over the traced calls of `scripts/bench.sh trace`; "
             "`(runtime)` is the call returning to the caller). The two programs run "
             "side by side: the gap before a line is the time since the line above it, "
             "whichever program that was. host-local, of the same build as bridge, runs on "
             "a thread of bridge's process.", "",
             "| op | ms since exec | gap | program | phase |", "|---|---|---|---|---|"]
    last = {}
    for r in t:
        ms = float(r["median_ms_since_exec"])
        gap = ms - last.get(r["op"], 0.0)
        last[r["op"]] = ms
        lines.append(f"| {r['op']} | {ms:.2f} | +{gap:.2f} | {r['program']} | {r['phase']} |")
    return lines


# Cross-host targets: ours against the path built by hand in the same run. Like with like
# is the hand-built path with the rules a flanneld node keeps by default (FLANNEL-FWD, and
# with --ip-masq its masquerade); the bare paths, with no rule at all, are kept beside them.
SIDE_BY_SIDE = [("overlay (default, ipMasq)", "overlay", "vxlan-hand-masq"),
                ("overlay, ipMasq false", "overlay-nomasq", "vxlan-hand-fwd"),
                ("overlay, ipMasq false", "overlay-nomasq", "vxlan-hand"),
                ("directRouting", "directrouting", "directrouting-hand"),
                ("directRouting", "directrouting", "routing-hand")]
HAND = {"vxlan-hand-masq": "hand-built VXLAN with flanneld's masquerade and forward accept",
        "vxlan-hand-fwd": "hand-built VXLAN with flanneld's forward accept (no NAT)",
        "vxlan-hand": "hand-built VXLAN, no rules",
        "directrouting-hand": "plain routing as flanneld's DirectRouting programs it (pods at "
                              "the VXLAN MTU, its forward accept)",
        "routing-hand": "plain routing between the hosts, no rules"}


def paired(ours, hand):
    """Median over the rounds of ours' TCP / the hand-built path's TCP in the same round
    (they saw the same background load); the ratio of medians for older data."""
    if "per_run" in ours and "per_run" in hand:
        return statistics.median(o["tcp_gbps"] / h["tcp_gbps"]
                                 for o, h in zip(ours["per_run"], hand["per_run"]))
    return ours["tcp_gbps"] / hand["tcp_gbps"]


def targets(c, s, d, a):
    """Every target of the benchmark issue with our figure and the reference's."""
    rows = []

    def add(what, ours, ref, met, floor=""):
        rows.append(f"| {what} | {ours} | {ref} | {floor} | {'met' if met else 'missed'} |")
    if c:
        seq = c["sequential"]
        for config in seq:
            if "floor" not in seq[config]:
                o, r = (statistics.median(seq[config][x]["ADD"]) for x in ("ours", "ref"))
                add(f"ADD median ≤ 1/3 of the reference's ({CONFIGS[config]})",
                    f"{o:.1f} ms ({o / r:.2f})", f"{r:.1f} ms", o <= r / 3)
                continue
            # the floor (bench/floor) measured in the same run on this machine's CPU
            for op in ("ADD", "DEL"):
                o, r, f = (statistics.median(seq[config][x][op]) for x in ("ours", "ref", "floor"))
                add(f"{op} median ≤ 1/3 of the reference's and ≤ 1.5× the floor "
                    f"({CONFIGS[config]}; CPU {cpu_model()})",
                    f"{o:.1f} ms ({o / r:.2f} of the reference, {o / f:.2f}× the floor)",
                    f"{r:.1f} ms", o <= r / 3 and o <= 1.5 * f, f"{f:.1f} ms")
        po, pr = (c["parallel"][x]["ADD"]["wall_total_ms"] + c["parallel"][x]["DEL"]["wall_total_ms"]
                  for x in ("ours", "ref"))
        add("20-way parallel wall ≤ 1/2 of the reference's (ADD+DEL)",
            f"{po:.0f} ms ({po / pr:.2f})", f"{pr:.0f} ms", po <= pr / 2)
        for op in ("ADD", "DEL"):
            qo, qr = (pct(c["parallel"][x][op]["calls"], 0.99) for x in ("ours", "ref"))
            add(f"20-way parallel {op} per-call p99 no worse than the reference's",
                f"{qo:.0f} ms", f"{qr:.0f} ms", qo <= qr)
        for config in seq:
            ro, rr = (max(seq[config][x][op + "_rss"] for op in ("ADD", "DEL"))
                      for x in ("ours", "ref"))
            add(f"peak RSS below the reference's ({CONFIGS[config]})",
                f"{ro / 1024:.1f} MB", f"{rr / 1024:.1f} MB", ro < rr)
    if s:
        med = {size: statistics.median(s[size]["ours"]["ADD"]) for size in s}
        lo, hi = med[min(s, key=int)], med[max(s, key=int)]
        r_lo, r_hi = (statistics.median(s[k]["ref"]["ADD"]) for k in (min(s, key=int), max(s, key=int)))
        add("host-local ADD flat from 100 to 10,000 allocations (within 25%)",
            f"{lo:.1f} → {hi:.1f} ms", f"{r_lo:.1f} → {r_hi:.1f} ms", hi <= lo * 1.25)
    if d:
        by = {(r["path"], r["mtu"]): r for r in d}

        def ratio(path, mtu=1500):
            return by[(path, mtu)]["tcp_ratio"] if (path, mtu) in by else None
        if ratio("bridge-ours") is not None:
            add("same-host bridge ≥ 0.95 of the raw veth pair", f"{ratio('bridge-ours'):.2f}",
                f"{ratio('bridge-ref'):.2f}", ratio("bridge-ours") >= 0.95)
        for mtu, goal in ((1500, 0.85), (9000, 0.93)):
            o = ratio("overlay", mtu)
            if o is not None:
                add(f"overlay (default config) ≥ {goal} of the underlay at MTU {mtu}",
                    f"{o:.3f}", "", o >= goal)
        for what, ours, hand in SIDE_BY_SIDE:
            for mtu in (1500, 9000):
                if (ours, mtu) in by and (hand, mtu) in by:
                    o, h = by[(ours, mtu)], by[(hand, mtu)]
                    r = paired(o, h)
                    add(f"{what} ≥ 0.97 of {HAND[hand]}, MTU {mtu}",
                        f"{o['tcp_gbps']:.2f} Gbit/s ({r:.3f})",
                        f"hand-built {h['tcp_gbps']:.2f} Gbit/s", r >= 0.97)
        worst = max(r["udp_loss_pct"] for r in d)
        add("no UDP loss at 100 Mbit/s on any path", f"worst {worst:.2f}%", "", worst == 0)
    if a:
        # issue 21 goal 4: N=100 and N=250 (the largest run, if neither is there)
        rows_a = [r for r in a if r["n"] in (100, 250)] or [max(a, key=lambda r: r["n"])]
        for r in sorted(rows_a, key=lambda r: r["n"]):
            add(f"a joining host programmed everywhere in under 2 s at N={r['n']}",
                f"{r['join_ms_from_start']:.0f} ms", "", r["join_ms_from_start"] < 2000)
    if not rows:
        return []
    return (["", "## Targets", "", "| target | ours | reference | floor | |",
             "|---|---|---|---|---|"] + rows)


def gnuplot(script):
    subprocess.run(["gnuplot"], input=script, text=True, check=True, timeout=60)


def cdf_file(out, name, t):
    path = os.path.join(out, f".{name}.dat")
    s = sorted(t)
    with open(path, "w") as f:
        for k, v in enumerate(s):
            f.write(f"{v} {(k + 1) / len(s)}\n")
    return path


def latency_png(out, c, s):
    plots = []
    colors = {"bridge": "#1f77b4", "masq": "#ff7f0e", "macvlan": "#2ca02c", "ptp": "#9467bd",
              "chain": "#d62728"}
    for op in ("ADD", "DEL"):
        series = []
        for config, rows in (c["sequential"].items() if c else []):
            for side, dash in (("ours", 1), ("ref", 2), ("floor", 3)):
                if side not in rows:
                    continue
                f = cdf_file(out, f"{config}-{side}-{op}", rows[side][op])
                # one key entry per config: the colour; solid ours, dashed the reference;
                # the floor (bridge+host-local) dotted, black, a key entry of its own
                title = f"title \"{CONFIGS[config]}\"" if side == "ours" else "notitle"
                color = colors[config]
                if side == "floor":
                    title, color = f"title \"{CONFIGS[config]}: the floor\"", "#000000"
                series.append(f"'{f}' using 1:2 with lines lw 2 dt {dash} "
                              f"lc rgb '{color}' {title}")
        if series:
            plots.append(f"set title '{op}: latency per call (solid ours, dashed reference, "
                         "dotted floor)'\n"
                         "set logscale x\nset xlabel 'ms per call (log scale)'\n"
                         "set ylabel 'fraction of calls'\nset yrange [0:1]\n"
                         "set key outside bottom center maxrows 3 font ',9'\n"
                         "plot " + ", ".join(series))
    if s:
        path = os.path.join(out, ".scale.dat")
        with open(path, "w") as f:
            for size in sorted(s, key=int):
                m = [statistics.median(s[size][side][op]) for side in ("ours", "ref")
                     for op in ("ADD", "DEL")]
                f.write(f"{size} {' '.join(map(str, m))}\n")
        plots.append("set title 'host-local with N allocations in the store'\n"
                     "set logscale x\nset xlabel 'allocations already in the store (log scale)'\n"
                     "set ylabel 'median ms per call'\nunset logscale y\nset yrange [0:*]\n"
                     "set key outside bottom center maxrows 2 font ',9'\n"
                     f"plot '{path}' using 1:2 with linespoints lw 2 title 'ADD ours', "
                     f"'' using 1:3 with linespoints lw 2 title 'DEL ours', "
                     f"'' using 1:4 with linespoints lw 2 dt 2 title 'ADD reference', "
                     f"'' using 1:5 with linespoints lw 2 dt 2 title 'DEL reference'")
    if not plots:
        return False
    gnuplot(f"set terminal pngcairo size {560 * len(plots)},640 font ',10'\n"
            f"set output '{os.path.join(out, 'latency.png')}'\n"
            f"set multiplot layout 1,{len(plots)}\nset grid\n"
            + "\n".join(p + "\nunset logscale\n" for p in plots) + "unset multiplot\n")
    return True


def dataplane_png(out, d):
    if not d:
        return False
    path = os.path.join(out, ".dataplane.dat")
    with open(path, "w") as f:
        for k, r in enumerate(d):
            f.write(f"{k} {r['tcp_ratio']} \"{r['path']} (MTU {r['mtu']})\"\n")
    gnuplot(f"set terminal pngcairo size 900,{120 + 32 * len(d)} font ',10'\n"
            f"set output '{os.path.join(out, 'dataplane.png')}'\n"
            "set title 'TCP throughput as a fraction of the raw kernel path (same host: veth "
            "pair; cross host: underlay)'\n"
            "set xrange [0:1.2]\nset xlabel 'fraction of the raw path (1.0 = the kernel path)'\n"
            f"set yrange [-0.6:{len(d) - 0.4}]\nset ytics nomirror\nset grid x\nunset key\n"
            "set style fill solid 0.6\nset arrow from 1,graph 0 to 1,graph 1 nohead dt 2\n"
            f"plot '{path}' using (0):1:(0):2:($1-0.35):($1+0.35):ytic(3) with boxxyerror, "
            f"'' using ($2+0.01):1:(sprintf('%.2f',$2)) with labels left\n")
    return True


def main(out, ours, ref):
    c, s, a, d = (load(out, n) for n in ("control.json", "scale.json", "agent.json", "data.json"))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Benchmark results", "",
             f"Made by `scripts/bench.sh` on {now}: {machine()}.", f"Versions: {versions()}.",
             "Ours and the reference ran side by side in the same run, each in network "
             "namespaces of its own; ratios are taken within the run.", ""]
    if latency_png(out, c, s):
        lines += ["![latency](latency.png)", ""]
    if dataplane_png(out, d):
        lines += ["![data plane](dataplane.png)", ""]
    lines += targets(c, s, d, a)
    if c:
        lines += [""] + control_tables(c)
    trace_csv = os.path.join(out, "trace.csv")
    if os.path.exists(trace_csv):
        with open(trace_csv, newline="") as f:
            lines += trace_table(list(csv.DictReader(f)))
    if s:
        lines += scale_table(s)
    if a:
        lines += agent_table(a)
    if d:
        lines += data_table(d)
    lines += ["", "Raw figures: control.json, scale.json, agent.json, data.json and the CSV "
              "tables beside this file."]
    with open(os.path.join(out, "RESULTS.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    for name in os.listdir(out):
        if name.startswith(".") and name.endswith(".dat"):
            os.remove(os.path.join(out, name))
    print(f"wrote {os.path.join(out, 'RESULTS.md')}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
