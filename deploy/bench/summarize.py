#!/usr/bin/env python3
"""Summarize a `make bench` run (deploy/bench/relay.sh) into one table:
median (min-max) per load and MTA, and the Sluice/Postfix ratio. A load
with the suffix -proc (services as processes) or -lowmem (low-memory
settings) is Sluice only and is compared with Postfix's plain runs."""
import csv, os, statistics, sys

out = sys.argv[1]

def rows(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))

e2e = rows(os.path.join(out, "e2e", "results.tsv"))
lat = rows(os.path.join(out, "lat", "latency.tsv"))
mem = rows(os.path.join(out, "memory.tsv"))

def collect(rs, key, per_msg=False):
    d = {}
    for r in rs:
        try:
            v = float(r[key])
            if per_msg:
                v = v / float(r["N"]) * 1000
        except (KeyError, ValueError, ZeroDivisionError):
            continue
        d.setdefault(r["label"], []).append(v)
    return d

def fmt(vs, prec=0):
    if not vs:
        return "-"
    m = statistics.median(vs)
    if len(vs) == 1:
        return f"{m:.{prec}f}"
    return f"{m:.{prec}f} ({min(vs):.{prec}f}-{max(vs):.{prec}f})"

def peak_memory(rs):
    """Peak resident memory of each run, all of the MTA's processes together
    (VmHWM per Sluice process, RSS per Postfix daemon), in MiB."""
    d = {}
    for r in rs:
        total = 0.0
        for part in r.get("mem", "").split():
            try:
                total += float(part.split("=", 1)[1])
            except (IndexError, ValueError):
                pass
        if total > 0:
            d.setdefault(r["label"], []).append(total)
    return d

def base(load):
    return load.removesuffix("-lowmem").removesuffix("-proc")

metrics = [
    ("ingress msg/s", collect(e2e, "ingress_msg_s") or collect(lat, "ingress_msg_s"), 0, True),
    ("e2e msg/s", collect(e2e, "e2e_msg_s") or collect(lat, "e2e_msg_s"), 0, True),
    ("lat p50 ms", collect(lat, "lat_p50_ms"), 1, False),
    ("lat p90 ms", collect(lat, "lat_p90_ms"), 1, False),
    ("lat p99 ms", collect(lat, "lat_p99_ms"), 1, False),
    ("CPU s/1k msg", collect(e2e, "other_cpu_s", per_msg=True) or collect(lat, "other_cpu_s", per_msg=True), 2, False),
    ("peak MiB", peak_memory(mem), 0, False),
]
# latency-only loads (paced) have no e2e rows: take throughput from the latency run
for name, d, _, _ in metrics[:2]:
    for k, v in collect(lat, "e2e_msg_s" if "e2e" in name else "ingress_msg_s").items():
        d.setdefault(k, v)

loads = []
for r in e2e + lat:
    load = r["label"].split("-", 1)[1]
    if load not in loads:
        loads.append(load)

print(f"Sluice vs Postfix, median (min-max) of runs; ratio = Sluice/Postfix (higher is better for msg/s, lower for ms and CPU)\n")
hdr = f"{'load':<18}{'metric':<15}{'sluice':>26}{'postfix':>26}{'ratio':>8}"
print(hdr)
print("-" * len(hdr))
for load in loads:
    for name, d, prec, _ in metrics:
        # a -proc or -lowmem load runs Sluice only; Postfix's figures are its plain runs
        s, p = d.get("sluice-" + load, []), d.get("postfix-" + base(load), [])
        if not s and not p:
            continue
        ratio = "-"
        if s and p and statistics.median(p) > 0:
            ratio = f"{statistics.median(s) / statistics.median(p):.2f}"
        print(f"{load:<18}{name:<15}{fmt(s, prec):>26}{fmt(p, prec):>26}{ratio:>8}")
    print()
print("Peak MiB is all of the MTA's processes together (VmHWM of each Sluice process, RSS of")
print("Postfix's daemons). Per process, last run of each load:")
last = {}
for r in mem:
    last[r["label"]] = r["mem"]
for k in sorted(last):
    print(f"  {k:<24} {last[k]}")
