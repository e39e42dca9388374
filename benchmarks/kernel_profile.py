#!/usr/bin/env python3
"""Where one training step's GPU time goes, kernel by kernel, from two Nsight Compute captures.

benchmarks/profile_step.sh runs build/bench_step twice under ncu (gpu__time_duration of every
kernel, caches and clocks left alone): once with S1 steps and once with S2 > S1 steps, the same
configuration and warm-up. Everything that happens once per process (set-up, parameter upload,
graph capture, the first step's one-off work) is in both captures; the difference divided by
S2 - S1 is exactly one step's kernels.

usage: kernel_profile.py SHORT.csv S1 LONG.csv S2 [--step-ms MS] [--top N] [--json FILE]
  SHORT.csv / LONG.csv: `ncu --import X.ncu-rep --csv --page raw --metrics gpu__time_duration.sum
  --print-kernel-base function` of the two runs. --step-ms: the step's measured wall time (from
  bench_step without the profiler), to report what the kernels leave unaccounted (launch gaps,
  host work, synchronisation). Prints a markdown table, heaviest kernel first.
"""
import argparse
import csv
import json
import os
import sys

UNIT_TO_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3, "second": 1e6, "s": 1e6}


def read_capture(path):
    """{kernel name: [launches, total µs]} of one ncu CSV export: the raw page (one row per kernel,
    a column per metric, a units row under the header) or the details page (one row per metric:
    "Metric Name", "Metric Unit", "Metric Value", kernels told apart by "ID")."""
    try:
        with open(path, newline="") as f:
            lines = f.read().splitlines()
    except OSError as e:
        sys.exit(f"kernel_profile.py: cannot read {path}: {e.strerror}")
    start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
    if start is None:
        sys.exit(f"kernel_profile.py: {path}: no ncu CSV header (a line starting with \"ID\")")
    rows = list(csv.reader(lines[start:]))
    header = rows[0]
    if "Kernel Name" not in header:
        sys.exit(f"kernel_profile.py: {path}: no column 'Kernel Name' in the header")
    name_at = header.index("Kernel Name")
    body = rows[1:]
    details = "Metric Name" in header and "Metric Value" in header
    if details:
        metric_at, value_at = header.index("Metric Name"), header.index("Metric Value")
        unit_at = header.index("Metric Unit") if "Metric Unit" in header else None
    elif "gpu__time_duration.sum" in header:
        value_at, unit_at = header.index("gpu__time_duration.sum"), None
    else:
        sys.exit(f"kernel_profile.py: {path}: neither a 'gpu__time_duration.sum' column nor a details page")
    raw_scale, first_line = 1e-3, start + 2
    # the raw page's units row sits under the header (empty for text columns)
    if not details and body and body[0][value_at] in UNIT_TO_US and not body[0][name_at]:
        raw_scale = UNIT_TO_US[body[0][value_at]]
        body, first_line = body[1:], first_line + 1
    kernels, seen_ids = {}, set()
    for n, row in enumerate(body, start=first_line):
        if not row:
            continue
        if len(row) != len(header):
            sys.exit(f"kernel_profile.py: {path}: line {n}: {len(row)} fields, the header has {len(header)}")
        scale = raw_scale
        if details:
            if row[metric_at] not in ("gpu__time_duration.sum", "Duration"):
                continue
            unit = row[unit_at] if unit_at is not None else "nsecond"
            if unit not in UNIT_TO_US:
                sys.exit(f"kernel_profile.py: {path}: line {n}: unknown duration unit {unit!r}")
            scale = UNIT_TO_US[unit]
            if row[0] in seen_ids:
                continue
            seen_ids.add(row[0])
        try:
            t = float(row[value_at].replace(",", "")) * scale
        except ValueError:
            sys.exit(f"kernel_profile.py: {path}: line {n}: duration {row[value_at]!r} is not a number")
        k = kernels.setdefault(row[name_at], [0, 0.0])
        k[0] += 1
        k[1] += t
    if not kernels:
        sys.exit(f"kernel_profile.py: {path}: no kernel rows")
    return kernels


def per_step(short, s1, long_, s2):
    """[(name, launches per step, µs per step)], heaviest first."""
    out = []
    for name in sorted(set(short) | set(long_)):
        a, b = short.get(name, [0, 0.0]), long_.get(name, [0, 0.0])
        launches = (b[0] - a[0]) / (s2 - s1)
        us = (b[1] - a[1]) / (s2 - s1)
        if launches > 0 or us > 0.05:
            out.append((name, launches, max(us, 0.0)))
    out.sort(key=lambda r: -r[2])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("short")
    ap.add_argument("s1", type=int)
    ap.add_argument("long")
    ap.add_argument("s2", type=int)
    ap.add_argument("--step-ms", type=float)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.s1 < 0 or a.s2 <= a.s1:
        sys.exit(f"kernel_profile.py: the step counts must satisfy 0 <= S1 < S2 (got {a.s1}, {a.s2})")
    rows = per_step(read_capture(a.short), a.s1, read_capture(a.long), a.s2)
    total_us = sum(r[2] for r in rows)
    launches = sum(r[1] for r in rows)
    print(f"GPU kernel time per step: {total_us / 1e3:.3f} ms in {launches:.0f} launches", end="")
    if a.step_ms:
        print(f"; step wall time {a.step_ms:.3f} ms, {a.step_ms - total_us / 1e3:.3f} ms outside kernels "
              f"({100 * (1 - total_us / 1e3 / a.step_ms):.1f}%)")
    else:
        print()
    print()
    print("| kernel | launches/step | µs/step | share |")
    print("|---|---|---|---|")
    for name, n, us in rows[: a.top]:
        print(f"| {name} | {n:g} | {us:.1f} | {100 * us / total_us:.1f}% |")
    rest = rows[a.top:]
    if rest:
        us = sum(r[2] for r in rest)
        print(f"| {len(rest)} other kernels | {sum(r[1] for r in rest):g} | {us:.1f} | {100 * us / total_us:.1f}% |")
    if a.json:
        with open(a.json + ".tmp", "w") as f:
            json.dump({"kernel_ms_per_step": total_us / 1e3, "launches_per_step": launches, "step_ms": a.step_ms,
                       "kernels": [{"name": n, "launches": c, "us": u} for n, c, u in rows]}, f, indent=1)
        os.replace(a.json + ".tmp", a.json)


if __name__ == "__main__":
    main()
