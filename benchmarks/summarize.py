#!/usr/bin/env python3
"""The tables of one benchmark run (a directory written by benchmarks/run_bench.sh), from its
recorded JSON alone; pure python3 standard library.

  benchmarks/summarize.py DIR                    summary.md on stdout: machine, step table with
                                                 the issue's goals, kernels against the ceilings
  benchmarks/summarize.py DIR --brief            the ceilings and the step table only
  benchmarks/summarize.py DIR --readme README.md replace the block between <!-- bench:begin -->
                                                 and <!-- bench:end --> with the step table

DIR holds machine.txt, kernels.jsonl, steps.jsonl, train.jsonl and torch.jsonl (any may be
missing). Training-run table (train.jsonl, benchmarks/train_bench.py): `gpsdrec train`'s median
ms/step with the loader's thread on and off, the step's median wait for its batch, and the ratio to
bench_step's ms/step in the same run (above 1: the whole job is slower than the step alone).
Step table: gpsdrec's median ms/step, samples/s, tokens/s, peak GiB and MFU (bench_step); our
PyTorch model in the same run (tools/torch_bench.py) per mode, ms and peak GiB; the speed-up
(best PyTorch ms / gpsdrec ms, best = the fastest mode that ran), the memory ratio (gpsdrec's
peak / the lowest PyTorch peak among the modes that ran) and the issue's goal, met or missed.
The official PyTorch model's best figure from ../shared/DESIGN.md (measured elsewhere, on an
H200) is shown beside for reference; the goals are judged on the same-run figures, and a status
says so where the speed goal is missed against the official figure.
"""
import argparse
import json
import os
import sys
import textwrap

# The goals of issue 7, per configuration label (benchmarks/step_configs.txt: "name stage").
GOALS = {
    "L4H64A4 pretrain": {"speedup": 6.0},
    "L4H64A4 finetune": {"speedup": 5.0},
    "L4H256A4 pretrain": {"speedup": 6.0},
    "L4H256A4 finetune": {"speedup": 6.0},
    "L24H1024A16 pretrain": {"speedup": 2.0},
    "L24H1024A16 finetune": {"mfu": 0.55},
}
MEMORY_GOAL = 1.0 / 3.0  # gpsdrec's peak <= 1/3 of PyTorch's, for every configuration

# The official PyTorch model on one H200, ms/step (../shared/DESIGN.md, "Where to compare"):
# fp32, bf16 autocast, bf16 + torch.compile; None = fails.
OFFICIAL = {
    "L4H64A4 pretrain": (69.8, 64.7, 24.5),
    "L4H64A4 finetune": (62.3, 35.9, 20.7),
    "L4H256A4 pretrain": (56.1, 60.7, None),
    "L4H256A4 finetune": (18.2, 21.6, None),
    "L24H1024A16 pretrain": (393.0, 255.0, None),
    "L24H1024A16 finetune": (328.0, 192.0, None),
}
MODES = ("fp32", "bf16", "compile")
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def read_jsonl(path):
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as ex:
                print(f"summarize.py: {path}:{n}: skipped, not JSON ({ex})", file=sys.stderr)
    return rows


def read_machine(path):
    info = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                key, sep, val = line.partition(":")
                if sep:
                    info[key.strip()] = val.strip()
    return info


def fnum(x, fmt="{:.1f}"):
    return "—" if x is None else fmt.format(x)


def by_label(rows):
    """The last record per label (a rerun replaces an earlier one)."""
    out = {}
    for r in rows:
        out[r.get("label", "?")] = r
    return out


def torch_by_label(rows):
    out = {}
    for r in rows:
        out.setdefault(r.get("label", "?"), {})[r.get("mode", "?")] = r
    return out


def torch_cell(r):
    if r is None:
        return "—"
    if "error" in r:
        return "fails: " + r["error"][:60].replace("|", "/")
    if "skipped" in r:
        return "skipped (time budget)"
    return f"{r['ms_per_step']:.1f} ms, {fnum(r.get('peak_gib'), '{:.2f}')} GiB"


def base_label(label):
    """The configuration a variant run belongs to: "L24H1024A16 finetune +recompute" is judged
    against the goals, the PyTorch runs and the official figures of "L24H1024A16 finetune"."""
    return label.split(" +", 1)[0]


def judge(label, step, torch_modes):
    """(goal text, status text, speed-up, memory ratio, best mode)."""
    goal = GOALS.get(base_label(label), {})
    ran = [(m, r) for m, r in torch_modes.items() if "ms_per_step" in r]
    best = min(ran, key=lambda mr: mr[1]["ms_per_step"]) if ran else None
    ms = step.get("ms_per_step") if step else None
    speedup = best[1]["ms_per_step"] / ms if best and ms else None
    peaks = [r["peak_gib"] for _, r in ran if r.get("peak_gib")]
    mem = step["peak_gib"] / min(peaks) if step and step.get("peak_gib") and peaks else None
    mfu = step.get("mfu") if step else None
    parts, fails, unknown = [], [], False
    if "speedup" in goal:
        parts.append(f"{goal['speedup']:g}x faster")
        if speedup is None:
            unknown = True
        elif speedup < goal["speedup"]:
            fails.append(f"{speedup:.2f}x")
    if "mfu" in goal:
        parts.append(f"{100 * goal['mfu']:.0f}% MFU")
        if mfu is None:
            unknown = True
        elif mfu < goal["mfu"]:
            fails.append(f"MFU {100 * mfu:.1f}%")
    parts.append("memory <= 1/3")
    if mem is None:
        unknown = True
    elif mem > MEMORY_GOAL:
        fails.append(f"memory {mem:.2f}")
    if fails:
        status = "missed (" + ", ".join(fails) + ")"
    elif unknown:
        status = "n/a (not measured)"
    else:
        status = "met"
    off = OFFICIAL.get(base_label(label))
    if status == "met" and "speedup" in goal and off and ms:
        ratio = min(x for x in off if x is not None) / ms
        if ratio < goal["speedup"]:
            status = f"met against our PyTorch; missed against the official figure ({ratio:.2f}x)"
    return "; ".join(parts), status, speedup, mem, best[0] if best else None


def step_table(steps, torch_rows):
    st, tr = by_label(steps), torch_by_label(torch_rows)
    labels = [label for label in st] + [label for label in tr if label not in st]
    head = ("| configuration | gpsdrec ms/step | samples/s | tokens/s | peak GiB | MFU | PyTorch fp32 | "
            "PyTorch bf16 | PyTorch compile | speed-up vs best PyTorch | memory vs PyTorch | "
            "official best (DESIGN.md) | goal | status |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for label in labels:
        s = st.get(label)
        modes = tr.get(label) or tr.get(base_label(label), {})
        goal, status, speedup, mem, best = judge(label, s, modes)
        if s:
            shape = f"batch {s['batch']}, seq {s['seq']}" + (f", {s['negatives']} negs" if s.get("negatives") else "")
            if s.get("freeze_sparse"):
                shape += ", item table frozen"
            mfu = s.get("mfu")
            mfu_txt = f"{100 * mfu:.1f}%" if mfu is not None else "—"
            peak = fnum(s.get("peak_gib"), "{:.2f}")
            if s.get("allocated_gib") is not None:
                peak += f" ({s['allocated_gib']:.2f})"
            cells = [f"{label} ({shape})", f"{s['ms_per_step']:.2f}", f"{s['samples_per_s']:.0f}",
                     f"{s['tokens_per_s'] / 1e6:.2f}M", peak, mfu_txt]
        else:
            cells = [label, "—", "—", "—", "—", "—"]
        cells += [torch_cell(modes.get(m)) for m in MODES]
        cells.append(f"{speedup:.2f}x ({best})" if speedup else "—")
        cells.append(f"{mem:.2f}" if mem else "—")
        off = OFFICIAL.get(base_label(label))
        if off and s:
            ob = min(x for x in off if x is not None)
            cells.append(f"{ob:g} ms: {ob / s['ms_per_step']:.2f}x")
        else:
            cells.append("—")
        cells += [goal, status]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def step_notes(steps, torch_rows):
    notes = []
    s0 = steps[0] if steps else None
    if s0:
        notes.append(f"- gpsdrec: build/bench_step, {s0.get('warmup')} warm-up then the median of {s0.get('steps')} "
                     f"steps, {s0.get('timing', 'host clock')}; peak = drop in free device memory over the steps, which "
                     f"counts the CUDA context's growth and the libraries' loaded kernels too (in brackets, where "
                     f"recorded: what gpsdrec allocated itself, the counterpart of PyTorch's figure; the memory ratio "
                     f"uses the drop, the larger). MFU = model FLOPs / "
                     f"time / the bf16 GEMM ceiling ({s0.get('ceiling_source', '?')}: "
                     f"{fnum(s0.get('ceiling_tflops'), '{:.0f}')} TFLOP/s). FLOPs: {s0.get('flops_convention', '?')}.")
    t0 = next((r for r in torch_rows if "ms_per_step" in r), None)
    if t0:
        notes.append(f"- PyTorch: our model (tools/torch_reference.py) through tools/torch_bench.py, {t0.get('impl')}, "
                     f"{t0.get('timing')}; peak = torch.cuda.max_memory_allocated over the timed steps. "
                     "Same shapes and id distributions as gpsdrec's batches.")
    notes.append("- speed-up = fastest PyTorch mode's ms / gpsdrec's ms; memory = gpsdrec's peak / the lowest "
                 "PyTorch peak; the official column is DESIGN.md's best figure for the official model "
                 "(another run, not re-measured).")
    return "\n".join(notes)


def train_table(train_rows, steps):
    st = by_label(steps)
    runs = {}
    for r in train_rows:
        runs.setdefault(r.get("label", "?"), {})[bool(r.get("prefetch"))] = r
    head = ("| configuration | gpsdrec train ms/step, prefetch on (data wait ms) | prefetch off (data wait ms) | "
            "bench_step ms/step | train / bench_step |")
    lines = [head, "|---|---|---|---|---|"]

    def cell(r):
        if r is None:
            return "—"
        if "error" in r:
            return "fails: " + r["error"][:60].replace("|", "/")
        wait = r.get("data_wait_ms")
        return f"{r['ms_per_step']:.2f} ({fnum(wait, '{:.2f}')})"

    for label, by_pf in runs.items():
        on, off = by_pf.get(True), by_pf.get(False)
        s = st.get(label)
        ratio = "—"
        best = on if on and "ms_per_step" in on else off if off and "ms_per_step" in off else None
        if s and best:
            ratio = f"{best['ms_per_step'] / s['ms_per_step']:.2f}" + ("" if best is on else " (prefetch off)")
        lines.append("| " + " | ".join([label, cell(on), cell(off), f"{s['ms_per_step']:.2f}" if s else "—", ratio])
                     + " |")
    return "\n".join(lines)


def ceilings(kernels):
    out = {}
    for r in kernels:
        if r.get("kind") == "ceiling":
            out[r["name"]] = r
    return out


def ceiling_lines(kernels):
    c = ceilings(kernels)
    lines = []
    if "copy" in c:
        r = c["copy"]
        lines.append(f"- copy ceiling: {r['median']:.0f} GB/s ({r['how']}, {r['size'] / 2**30:.1f} GiB, "
                     f"median of {r['reps']}; min {r['min']:.0f}, max {r['max']:.0f})")
    if "gemm_bf16" in c:
        r = c["gemm_bf16"]
        lines.append(f"- GEMM ceiling: {r['median']:.1f} TFLOP/s ({r['how']}, {r['size']:.0f}^3, median of "
                     f"{r['reps']}; min {r['min']:.1f}, max {r['max']:.1f})")
    if "h2d_pinned" in c:
        r = c["h2d_pinned"]
        lines.append(f"- host-to-device: {r['median']:.1f} GB/s ({r['how']}, {r['size'] / 2**20:.0f} MiB in "
                     f"{r['median_ms']:.3f} ms, median of {r['reps']}; min {r['min']:.1f}, max {r['max']:.1f}): "
                     "the link each step's batch metadata crosses")
    return lines


def kernel_table(kernels):
    head = "| kernel | shape | variant | time µs | GB/s | % copy | TFLOP/s | % GEMM | vs ours |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in kernels:
        if r.get("kind") != "kernel":
            continue
        variant = r.get("variant", "")
        if r.get("skipped"):
            lines.append(f"| {r['group']} | {r['shape']} | {variant} | skipped: {r['skipped'][:80]} | | | | | |")
            continue
        if r.get("modeled"):
            variant += " (modeled lower bound)"
        if r.get("outputs_finite") is False:
            variant += " **NaN in output**"
        ratio = r.get("alt_over_ours")
        lines.append("| " + " | ".join([
            r["group"], r["shape"], variant, fnum(r.get("time_us"), "{:.2f}"), fnum(r.get("gbps"), "{:.0f}"),
            fnum(r.get("pct_copy"), "{:.0f}"), fnum(r.get("tflops"), "{:.1f}"), fnum(r.get("pct_gemm"), "{:.1f}"),
            f"{ratio:.2f}x" if ratio is not None else ""]) + " |")
    return "\n".join(lines)


def summary(d, brief=False):
    machine = read_machine(os.path.join(d, "machine.txt"))
    kernels = read_jsonl(os.path.join(d, "kernels.jsonl"))
    steps = read_jsonl(os.path.join(d, "steps.jsonl"))
    torch_rows = read_jsonl(os.path.join(d, "torch.jsonl"))
    train_rows = read_jsonl(os.path.join(d, "train.jsonl"))
    out = []
    if not brief:
        out.append(f"# Benchmarks: {machine.get('gpu', '?')}, {machine.get('date', '?')}")
        out.append("")
        out += [f"- {k}: {v}" for k, v in machine.items()]
        out.append("")
        out.append("Regenerate: `python3 benchmarks/summarize.py DIR` (this file), "
                   "`--readme README.md` (the README's step table).")
        out.append("")
        out.append("## Ceilings (measured in this run)")
        out.append("")
    out += ceiling_lines(kernels) or ["- no kernel benchmark in this run"]
    out.append("")
    if not brief:
        out.append("## Training step (forward + backward + AdamW, synthetic full-length batches)")
        out.append("")
    out.append(step_table(steps, torch_rows) if steps or torch_rows else "no step benchmark in this run")
    if not brief:
        out.append("")
        out.append(step_notes(steps, torch_rows))
        out.append("")
        if train_rows:
            out.append("## Training runs (gpsdrec train on synthetic data, data loading included)")
            out.append("")
            t0 = next((r for r in train_rows if "timing" in r), {})
            out.append(f"benchmarks/train_bench.py: {t0.get('warmup', '?')} warm-up steps, then the median of "
                       f"{t0.get('steps_asked', '?')}; {t0.get('timing', 'host clock per step')}. Data wait = the "
                       "median time a step waited for its micro-batch (records read, negatives drawn).")
            out.append("")
            out.append(train_table(train_rows, steps))
            out.append("")
        out.append("## Kernels against the ceilings and the simplest alternative")
        out.append("")
        out.append("GB/s = the fewest bytes the job must move / time; TFLOP/s = useful FLOPs / time; "
                   "vs ours = the alternative's time / ours (above 1: ours is faster). Modeled rows are not "
                   "run: a lower bound for an alternative nothing here implements.")
        out.append("")
        out.append(kernel_table(kernels) if kernels else "no kernel benchmark in this run")
    return "\n".join(out) + "\n"


def readme_block(d):
    machine = read_machine(os.path.join(d, "machine.txt"))
    steps = read_jsonl(os.path.join(d, "steps.jsonl"))
    torch_rows = read_jsonl(os.path.join(d, "torch.jsonl"))
    gpu = machine.get("gpu", "?").split(",")[0]
    rev = machine.get("git", "?")[:12]
    intro = (f"Training step time on one {gpu} (forward + backward + AdamW, synthetic full-length batches; "
             f"`make bench`, run of {machine.get('date', '?')[:10]} at {rev}, recorded in `{d.rstrip('/')}/`; "
             "PyTorch = our model of GPSD timed in the same run; the goals are issue 7's):")
    notes = [textwrap.fill(n, 100, subsequent_indent="  ", break_on_hyphens=False) for n in step_notes(steps, torch_rows).split("\n")]
    train_rows = read_jsonl(os.path.join(d, "train.jsonl"))
    train = []
    if train_rows:
        train = ["", textwrap.fill("Whole `gpsdrec train` runs in the same run (benchmarks/train_bench.py: synthetic data, "
                                   "data loading included, ms/step between consecutive log lines, median; in brackets "
                                   "the median time a step waited for its batch):", 100, break_on_hyphens=False),
                 "", train_table(train_rows, steps)]
    return "\n".join([BEGIN, textwrap.fill(intro, 100, break_on_hyphens=False), "", step_table(steps, torch_rows), ""]
                     + notes + train + [END])


def replace_readme(path, block):
    with open(path) as f:
        text = f.read()
    b, e = text.find(BEGIN), text.find(END)
    if b < 0 or e < b:
        raise SystemExit(f"summarize.py: {path} has no {BEGIN} ... {END} block")
    new = text[:b] + block + text[e + len(END):]
    with open(path, "w") as f:
        f.write(new)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir")
    p.add_argument("--brief", action="store_true")
    p.add_argument("--readme", metavar="README.md")
    a = p.parse_args()
    if not os.path.isdir(a.dir):
        raise SystemExit(f"summarize.py: {a.dir}: not a directory")
    if a.readme:
        replace_readme(a.readme, readme_block(a.dir))
    else:
        sys.stdout.write(summary(a.dir, a.brief))


if __name__ == "__main__":
    main()
