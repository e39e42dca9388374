#!/usr/bin/env python3
"""Whole training runs (`gpsdrec train`) at the step configurations, data loading included, with
the loader's background thread on and off: what a user's job gets per step, next to what
bench_step measures for the step alone. Pure python3 standard library.

  benchmarks/train_bench.py --configs benchmarks/step_configs.txt --out DIR [--only LABEL]...
      [--steps 20] [--warmup 3] [--prefetch both|on|off] [--device auto|cpu|cuda]
      [--gpsdrec ./gpsdrec] [--extra key=value]...

For each configuration ("name stage" of step_configs.txt) it writes a synthetic dataset once per
(history, items, stage) with `gpsdrec synth` (every user long enough that each history is full
length, as bench_step's batches are, and enough of them for warmup + steps optimizer steps in one
epoch), then runs `gpsdrec train` for warmup + steps steps with log_every = 1 and reads the
per-step lines of its log.jsonl: ms/step = batch / samples_per_s of a line (the host clock from
one log line to the next: the wait for the batch, the step, the optimizer, the logging), and
data_wait_ms (the time the step waited for its micro-batch). The first warmup lines (graph
capture, the allocator's first touches) are left out; the median is reported, with min and max.

One JSON line per configuration and prefetch setting to DIR/train.jsonl (replaced), a table on
stdout; the runs' directories under DIR/train_runs/ are deleted afterwards (their logs are kept as
DIR/train_logs/<label>_<prefetch>.jsonl), the datasets under DIR/train_data/ too.
"""
import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time


def read_configs(path):
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            cols = line.split("#", 1)[0].split()
            if not cols:
                continue
            if len(cols) != 10:
                raise SystemExit(f"{path}:{n}: expected 10 columns, got {len(cols)}: {' '.join(cols)}")
            name, stage, layers, dim, heads, seq, batch, items, negs, freeze = cols
            if stage not in ("pretrain", "finetune"):
                raise SystemExit(f"{path}:{n}: stage {stage!r} is neither pretrain nor finetune")
            try:
                nums = [int(x) for x in (layers, dim, heads, seq, batch, items, negs)]
            except ValueError:
                raise SystemExit(f"{path}:{n}: a numeric column is not an integer: {' '.join(cols)}")
            if freeze not in ("true", "false"):
                raise SystemExit(f"{path}:{n}: freeze {freeze!r} is neither true nor false")
            out.append(dict(label=f"{name} {stage}", stage=stage, layers=nums[0], dim=nums[1], heads=nums[2],
                            seq=nums[3], batch=nums[4], items=nums[5], negatives=nums[6], freeze=freeze == "true"))
    return out


def run(cmd, log_path):
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return rc


def tail(path, n=5):
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:]).rstrip()
    except OSError:
        return ""


# Records a user gives the split: one pretraining sequence each; CTR train samples per user
# (a positive and ctr_negatives negatives per training interaction kept by the protocol) were
# 1.40 a user on a 3,000-user test; 1.2 leaves a margin.
YIELD = {"pretrain": 1.0, "finetune": 1.2}


def dataset_for(a, c, data_dir, log_path):
    """The dataset of c's history length, vocabulary and stage, written on first use."""
    steps_needed = a.warmup + a.steps + 1
    users = int(math.ceil(c["batch"] * steps_needed / YIELD[c["stage"]] * 1.1))
    path = os.path.join(data_dir, f"seq{c['seq']}_items{c['items']}_{c['stage']}_u{users}.gpsd")
    if os.path.exists(path):
        return path, None
    seq = c["seq"]
    cmd = [a.gpsdrec, "synth", "--out", path, "--set", f"synth.users={users}",
           "--set", f"synth.items={c['items'] - 1}", "--set", "synth.cates=999",
           "--set", f"synth.min_len={seq + 20}", "--set", f"synth.mean_len={int(seq * 1.3) + 20}",
           "--set", f"synth.max_len={2 * seq + 40}", "--set", f"max_history={seq}", "--set", f"window={seq}"]
    if run(cmd, log_path) != 0:
        return None, f"gpsdrec synth failed: {tail(log_path, 3)}"
    return path, None


def per_step(log_file, batch, warmup):
    ms, wait = [], []
    with open(log_file) as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("event") != "train" or not r.get("samples_per_s"):
                continue
            ms.append(1e3 * batch / r["samples_per_s"])
            wait.append(r.get("data_wait_ms"))
    return ms[warmup:], wait[warmup:]


def bench_one(a, c, prefetch, data, run_dir, log_path):
    shutil.rmtree(run_dir, ignore_errors=True)
    sets = {"data": data, "stage": c["stage"], "n_layers": c["layers"], "dim": c["dim"], "n_heads": c["heads"],
            "max_history": c["seq"], "batch_size": c["batch"], "freeze_sparse": str(c["freeze"]).lower(),
            "max_steps": a.warmup + a.steps, "epochs": 1, "log_every": 1, "eval_max_samples": 64,
            "prefetch": "true" if prefetch else "false", "device": a.device, "out_dir": run_dir, "resume": "never"}
    if c["negatives"] > 0:
        sets["n_negatives"] = c["negatives"]
    cmd = [a.gpsdrec, "train"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    for kv in a.extra:
        cmd += ["--set", kv]
    t0 = time.monotonic()
    rc = run(cmd, log_path)
    row = {"label": c["label"], "prefetch": prefetch, "batch": c["batch"], "seq": c["seq"], "device": a.device,
           "steps_asked": a.steps, "warmup": a.warmup, "wall_s": round(time.monotonic() - t0, 2)}
    log_file = os.path.join(run_dir, "log.jsonl")
    if rc != 0 or not os.path.exists(log_file):
        row["error"] = f"gpsdrec train exit {rc}: {tail(log_path, 2)}"[:300]
        return row
    ms, wait = per_step(log_file, c["batch"], a.warmup)
    if not ms:
        row["error"] = "no timed steps in the log (too few records for warmup + steps?)"
        return row
    med = statistics.median(ms)
    waits = [w for w in wait if isinstance(w, (int, float))]
    row.update({"steps": len(ms), "ms_per_step": round(med, 4), "ms_min": round(min(ms), 4),
                "ms_max": round(max(ms), 4), "samples_per_s": round(1e3 * c["batch"] / med, 1),
                "data_wait_ms": round(statistics.median(waits), 4) if waits else None,
                "data_wait_ms_max": round(max(waits), 4) if waits else None,
                "timing": "gpsdrec train, log_every = 1: host clock between consecutive log lines "
                          "(batch wait, step, optimizer, logging), median"})
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="benchmarks/step_configs.txt")
    p.add_argument("--out", required=True)
    p.add_argument("--only", action="append", default=[], help="a configuration label (repeatable)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--prefetch", choices=("both", "on", "off"), default="both")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--gpsdrec", default="./gpsdrec")
    p.add_argument("--extra", action="append", default=[], metavar="key=value")
    a = p.parse_args()
    if a.steps < 1 or a.warmup < 0:
        raise SystemExit("train_bench.py: --steps must be >= 1 and --warmup >= 0")
    configs = read_configs(a.configs)
    if a.only:
        unknown = [x for x in a.only if x not in {c["label"] for c in configs}]
        if unknown:
            raise SystemExit(f"train_bench.py: no configuration {unknown[0]!r} in {a.configs}")
        configs = [c for c in configs if c["label"] in a.only]
    os.makedirs(a.out, exist_ok=True)
    data_dir, runs_dir, logs_dir = (os.path.join(a.out, d) for d in ("train_data", "train_runs", "train_logs"))
    for d in (data_dir, runs_dir, logs_dir):
        os.makedirs(d, exist_ok=True)
    out_path = os.path.join(a.out, "train.jsonl")
    tmp_path = out_path + ".tmp"
    log_path = os.path.join(a.out, "train.log")
    settings = {"both": (True, False), "on": (True,), "off": (False,)}[a.prefetch]
    failed = 0
    with open(tmp_path, "w") as out:
        for c in configs:
            data, err = dataset_for(a, c, data_dir, log_path)
            for pf in settings:
                tag = c["label"].replace(" ", "_") + ("_prefetch" if pf else "_inline")
                if err:
                    row = {"label": c["label"], "prefetch": pf, "error": err[:300]}
                else:
                    run_dir = os.path.join(runs_dir, tag)
                    row = bench_one(a, c, pf, data, run_dir, log_path)
                    if os.path.exists(os.path.join(run_dir, "log.jsonl")):
                        shutil.copy(os.path.join(run_dir, "log.jsonl"), os.path.join(logs_dir, tag + ".jsonl"))
                    shutil.rmtree(run_dir, ignore_errors=True)
                out.write(json.dumps(row) + "\n")
                out.flush()
                if "error" in row:
                    failed += 1
                    print(f"[train] {c['label']} prefetch {'on' if pf else 'off'}: {row['error']}", flush=True)
                else:
                    print(f"[train] {c['label']} prefetch {'on' if pf else 'off'}: {row['ms_per_step']:.2f} ms/step "
                          f"(min {row['ms_min']:.2f} max {row['ms_max']:.2f}, {row['steps']} steps), "
                          f"{row['samples_per_s']:.0f} samples/s, data wait {row['data_wait_ms']} ms", flush=True)
    os.replace(tmp_path, out_path)
    shutil.rmtree(data_dir, ignore_errors=True)
    shutil.rmtree(runs_dir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
