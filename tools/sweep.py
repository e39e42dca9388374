#!/usr/bin/env python3
"""Scaling sweeps: pretraining and finetuning over model sizes and transfer strategies, one table.

usage:
  tools/sweep.py --data FILE|synth --out DIR [--sizes L1H32A4,...] [--strategies nt,stsf]
                 [--seeds 1,2,3] [--budget configs/sweep/X.conf] [--config FILE.conf]...
                 [--budget-steps N | --budget-epochs N] [--time-cap SECONDS] [--device auto|cpu|cuda]
                 [--bin ./gpsdrec] [--dry-run] [--report-only] [--no-plots] [--keep-checkpoints] [--verbose]
                 [-- extra gpsdrec options]

For every seed and size (small to large) it runs `gpsdrec train` once for pretraining (shared by
every transfer strategy; NT alone needs none) and once per strategy for finetuning, into
DIR/runs/SIZE/seedS/{pretrain,nt,ft,st,ftsf,stsf}. A run whose result.json exists is skipped; an
interrupted one continues from its checkpoints (gpsdrec resumes by itself). Then it gathers one
row per finetuning run into DIR/sweep.csv and DIR/sweep.json, fits AUC(N) = a - b N^-c and
logloss(N) = a + b N^-c per strategy (DIR/fits.json, DIR/fits.md; tools/sweep_fit.py) and draws
the curves (DIR/plots/, tools/sweep_plot.py, when matplotlib is present). docs/sweep.md has the
details: budgets, time caps, the table's columns.
"""
import argparse
import csv
import datetime
import fcntl
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ in tools/ of the working tree
import sweep_fit  # noqa: E402
import sweep_plot  # noqa: E402  (imports matplotlib only when drawing)

PAPER_SIZES = ["L1H32A4", "L4H32A4", "L4H64A4", "L4H128A4", "L4H256A4", "L8H512A8", "L12H768A12", "L24H1024A16"]
STRATEGIES = {  # key: (display name, needs the pretrained model)
    "nt": ("NT", False), "ft": ("FT", True), "st": ("ST", True), "ftsf": ("FT&SF", True), "stsf": ("ST&SF", True),
}
# The driver's own keys in a budget file's `#@` lines: (type, smallest value allowed).
SWEEP_KEYS = {"time_cap": (float, 0.0), "pretrain.time_cap": (float, 0.0), "finetune.time_cap": (float, 0.0),
              "probe_steps": (int, 1), "cap_margin": (float, 0.01), "hard_limit_factor": (float, 1.0)}
SIZE_RE = re.compile(r"^L(\d+)H(\d+)A(\d+)$", re.IGNORECASE)

CSV_COLUMNS = ["size", "n_layers", "dim", "n_heads", "strategy", "seed", "status", "params_N", "dense_params",
               "sparse_params", "test_auc", "test_gauc", "test_logloss", "train_auc", "train_logloss",
               "train_test_gap", "steps", "planned_steps", "capped", "wall_s", "device", "gpus", "gpu_hours",
               "pretrain_steps", "pretrain_wall_s", "pretrain_gpu_hours", "pretrain_hr10", "pretrain_ndcg10",
               "ceiling_auc", "run_dir"]


class SweepError(Exception):
    pass


# ---------------------------------------------------------------- sizes, strategies, budgets

def parse_size(text):
    m = SIZE_RE.match(text.strip())
    if not m:
        raise SweepError("size %r is not of the form LxHyAz (layers, width, heads), e.g. L4H64A4" % text)
    layers, dim, heads = (int(g) for g in m.groups())
    if layers < 1 or dim < 2 or heads < 1:
        raise SweepError("size %s: layers, width and heads must be positive" % text)
    if dim % heads or (dim // heads) % 2:
        raise SweepError("size %s: the width %d must split into %d heads of an even size (RoPE)" % (text, dim, heads))
    return {"name": "L%dH%dA%d" % (layers, dim, heads), "n_layers": layers, "dim": dim, "n_heads": heads}


def block_params(layers, dim, multiple_of=32):
    """The paper's N, counted as include/model.h model_block_params does: per block wq, wk, wv, wo
    (dim x dim), the SwiGLU w1, w2, w3 (hidden x dim) and two RMSNorm weights."""
    hidden = int(2 * (4 * dim) / 3)
    ffn = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
    return layers * (4 * dim * dim + 3 * ffn * dim + 2 * dim)


def parse_strategy(text):
    key = text.strip().lower().replace("&", "")
    if key not in STRATEGIES:
        raise SweepError("strategy %r is not one of nt, ft, st, ftsf, stsf" % text)
    return key


def parse_budget(path):
    """A budget file is a gpsdrec config file (given to every run as it is) whose lines starting
    with `#@` (comments to gpsdrec) are the driver's: its own keys (time_cap, ...), optionally
    scoped to one size (`#@ L24H1024A16.time_cap = 300`), and gpsdrec settings scoped to one size
    (`#@ L24H1024A16.pretrain.lr = 1e-3`). Returns {"path", "global": [(key, value, origin)],
    "sizes": {SIZE: [(key, value, origin)]}} in file order."""
    out = {"global": [], "sizes": {}, "path": path}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise SweepError("budget file %s: %s" % (path, e.strerror))
    for no, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line.startswith("#@"):
            continue
        line = line[2:].strip()
        if "=" not in line:
            raise SweepError("%s:%d: expected `key = value`, got %r" % (path, no, raw))
        key, value = (s.strip() for s in line.split("=", 1))
        if value.startswith('"'):
            end = value.find('"', 1)
            if end < 0:
                raise SweepError("%s:%d: unterminated quote in %r" % (path, no, raw))
            value = value[1:end]
        else:
            value = re.split(r"\s#", value, 1)[0].strip()
        if not key or not value:
            raise SweepError("%s:%d: empty key or value in %r" % (path, no, raw))
        head, _, rest = key.partition(".")
        scoped = bool(rest) and SIZE_RE.match(head) is not None
        if (rest if scoped else key) in SWEEP_KEYS:
            check_sweep_value(rest if scoped else key, value, "%s:%d" % (path, no))
        if scoped:
            size = parse_size(head)["name"]
            out["sizes"].setdefault(size, []).append((rest, value, "%s:%d" % (path, no)))
        elif key in SWEEP_KEYS:
            out["global"].append((key, value, "%s:%d" % (path, no)))
        else:
            raise SweepError("%s:%d: `#@ %s` is neither a driver key (%s) nor scoped to a size (SIZE.%s); a "
                             "setting for every run goes on a plain line" % (
                                 path, no, key, ", ".join(sorted(SWEEP_KEYS)), key))
    return out


def check_sweep_value(key, value, origin):
    conv, low = SWEEP_KEYS[key]
    try:
        v = conv(value)
    except ValueError:
        raise SweepError("%s: %s = %r is not %s" % (origin, key, value, "an integer" if conv is int else "a number"))
    if not math.isfinite(v) or v < low:
        raise SweepError("%s: %s = %r must be at least %g" % (origin, key, value, low))
    return v


def sweep_value(pairs, key, default):
    """The last value of a driver key among (key, value, origin) pairs."""
    val = default
    for k, v, origin in pairs:
        if k == key:
            val = check_sweep_value(k, v, origin)
    return val


# ---------------------------------------------------------------- small file helpers

def write_atomic(path, text):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def now_iso():
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------- the plan

class Run:
    def __init__(self, size, seed, stage, strategy, out_dir):
        self.size, self.seed, self.stage, self.strategy, self.out_dir = size, seed, stage, strategy, out_dir
        self.status = "pending"

    @property
    def label(self):
        what = "pretrain" if self.stage == "pretrain" else STRATEGIES[self.strategy][0]
        return "%s seed %d %s" % (self.size["name"], self.seed, what)

    def result_path(self):
        return os.path.join(self.out_dir, "result.json")

    def state_path(self):
        return os.path.join(self.out_dir, "sweep_run.json")


def build_plan(args, sizes, strategies, seeds):
    runs = []
    for seed in seeds:
        for size in sizes:
            base = os.path.join(args.out, "runs", size["name"], "seed%d" % seed)
            pre = None
            if any(STRATEGIES[s][1] for s in strategies):
                pre = Run(size, seed, "pretrain", None, os.path.join(base, "pretrain"))
                runs.append(pre)
            for s in strategies:
                r = Run(size, seed, "finetune", s, os.path.join(base, s))
                r.pretrain = pre if STRATEGIES[s][1] else None
                runs.append(r)
    return runs


class Driver:
    def __init__(self, args, budget, sizes, strategies, seeds, extra):
        self.args, self.budget, self.extra = args, budget, extra
        self.sizes, self.strategies, self.seeds = sizes, strategies, seeds
        self.bin = args.bin
        self.failures = 0
        self.unfinished = 0

    # -- settings of one run, in precedence order (later wins) --
    def budget_pairs(self, size):
        pairs = list(self.budget["global"]) if self.budget else []
        if self.budget:
            pairs += self.budget["sizes"].get(size["name"], [])
        return pairs

    def config_files(self):
        """The budget file itself (a gpsdrec config) and --config files, for every run."""
        return ([self.budget["path"]] if self.budget else []) + list(self.args.config or [])

    def budget_conf(self, pairs, directory):
        """The budget's size-scoped gpsdrec settings as a config file in `directory` (each line
        naming the budget line it came from), given after the budget file and before the
        strategy's file; None when there are none. In a dry run the file is not written."""
        lines = []
        for k, v, origin in pairs:
            if k not in SWEEP_KEYS:
                if "#" in v or v != v.strip() or '"' in v:
                    v = '"%s"' % v
                lines.append("%s = %s  # %s\n" % (k, v, origin))
        if not lines:
            return None
        path = os.path.join(directory, "sweep_budget.conf")
        if not self.args.dry_run:
            os.makedirs(directory, exist_ok=True)
            write_atomic(path, "# gpsdrec settings of the sweep budget for this run (written by tools/sweep.py)\n" +
                         "".join(lines))
        return path

    def cli_budget_sets(self):
        sets = []
        if self.args.budget_steps is not None:
            sets += ["--set", "max_steps=%d" % self.args.budget_steps, "--set", "epochs=1000000"]
        if self.args.budget_epochs is not None:
            sets += ["--set", "epochs=%d" % self.args.budget_epochs, "--set", "max_steps=0"]
        return sets

    def time_cap(self, pairs, stage):
        if self.args.time_cap is not None:
            return self.args.time_cap
        cap = sweep_value(pairs, "time_cap", 0.0)
        return sweep_value(pairs, stage + ".time_cap", cap)

    def command(self, run):
        """The gpsdrec command of a run. Precedence, lowest first: the dataset's config files, the
        budget, the strategy's config file, the size, --budget-steps/--budget-epochs, seed and
        device, the extra options after `--`, and last the driver's own keys (stage, data, out_dir,
        init_from)."""
        pairs = self.budget_pairs(run.size)
        cmd = [self.bin, "train"] + self.config_files()
        conf = self.budget_conf(pairs, run.out_dir)
        if conf:
            cmd.append(conf)
        if run.stage == "finetune":
            cmd.append(os.path.relpath(os.path.join(ROOT, "configs", "strategies", run.strategy + ".conf")))
        cmd += ["--set", "n_layers=%d" % run.size["n_layers"], "--set", "dim=%d" % run.size["dim"],
                "--set", "n_heads=%d" % run.size["n_heads"]]
        cmd += self.cli_budget_sets()
        cmd += ["--set", "seed=%d" % run.seed]
        if self.args.device:
            cmd += ["--set", "device=%s" % self.args.device]
        cmd += list(self.extra)
        # The driver's own keys come last: where the run lives and what it starts from.
        cmd += ["--set", "stage=%s" % run.stage, "--set", "data=%s" % self.data, "--set", "out_dir=%s" % run.out_dir]
        if run.stage == "finetune":
            if run.pretrain is not None:
                cmd += ["--set", "init_from=%s" % os.path.join(run.pretrain.out_dir, "model.safetensors")]
            else:
                cmd += ["--set", "init_from="]
        return cmd, pairs

    # -- data --
    def prepare_data(self):
        a = self.args
        if a.data != "synth":
            if not os.path.isfile(a.data):
                raise SweepError("data file %s does not exist (make one with `gpsdrec prep` or `gpsdrec synth`, "
                                 "or pass --data synth)" % a.data)
            self.data = a.data
            return
        self.data = os.path.join(a.out, "data", "synth.gpsd")
        if os.path.exists(self.data):
            print("data: %s (already generated)" % self.data)
            return
        cmd = [self.bin, "synth"] + self.config_files() + list(self.extra) + ["--out", self.data]
        print("data: generating %s" % self.data)
        print("  " + " ".join(cmd))
        if a.dry_run:
            return
        os.makedirs(os.path.dirname(self.data), exist_ok=True)
        log = os.path.join(a.out, "data", "synth.log")
        with open(log, "w") as f:
            rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
        if rc != 0 or not os.path.exists(self.data):
            raise SweepError("gpsdrec synth failed (exit %d); its output is in %s:\n%s" % (rc, log, tail(log)))

    # -- one gpsdrec invocation --
    def invoke(self, run, cmd, hard_limit):
        """Runs cmd with its output appended to run_dir/stdout.log; returns (rc, wall_s, output,
        killed, started)."""
        os.makedirs(run.out_dir, exist_ok=True)
        log_path = os.path.join(run.out_dir, "stdout.log")
        lines = []
        killed = [False]
        t0 = time.monotonic()
        started = now_iso()
        with open(log_path, "a") as log:
            log.write("\n#### %s: %s\n" % (started, " ".join(cmd)))
            log.flush()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True, bufsize=1)

            def kill():
                killed[0] = True
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()

            timer = threading.Timer(hard_limit, kill) if hard_limit else None
            if timer:
                timer.daemon = True
                timer.start()
            try:
                for line in proc.stdout:
                    log.write(line)
                    lines.append(line)
                    if self.args.verbose:
                        print("    " + line.rstrip())
                rc = proc.wait()
            except KeyboardInterrupt:
                kill()
                raise
            finally:
                if timer:
                    timer.cancel()
        return rc, time.monotonic() - t0, "".join(lines), killed[0], started

    def run_one(self, run):
        state = read_json(run.state_path()) or {}
        if os.path.exists(run.result_path()):
            run.status = "skipped"
            print("  %-32s skipped (finished: %s)" % (run.label, run.result_path()))
            return
        if run.stage == "finetune" and run.pretrain is not None and not os.path.exists(run.pretrain.result_path()) \
                and not self.args.dry_run:
            run.status = "blocked"
            print("  %-32s blocked: its pretraining (%s) is not finished" % (run.label, run.pretrain.out_dir))
            return
        cmd, pairs = self.command(run)
        cap = self.time_cap(pairs, run.stage)
        probe = sweep_value(pairs, "probe_steps", 30)
        margin = sweep_value(pairs, "cap_margin", 0.85)
        hard_factor = sweep_value(pairs, "hard_limit_factor", 2.0)
        if "max_steps" in state:
            cmd += ["--set", "max_steps=%d" % state["max_steps"]]
        if self.args.dry_run:
            print("  %-32s would run%s:\n    %s" % (run.label, " (time cap %gs)" % cap if cap else "", " ".join(cmd)))
            return
        os.makedirs(run.out_dir, exist_ok=True)
        state.setdefault("wall_s", 0.0)
        state.setdefault("invocations", [])
        state["size"], state["seed"], state["stage"] = run.size["name"], run.seed, run.stage
        state["strategy"] = run.strategy
        resumed = os.path.isdir(os.path.join(run.out_dir, "checkpoints"))
        print("  %-32s %s%s" % (run.label, "resuming" if resumed else "running",
                                " (time cap %gs)" % cap if cap else ""))

        def hard_limit():
            if not cap:
                return None
            return max(cap * hard_factor - state["wall_s"], 0) + 300

        def record(kind, rc, wall, output, killed, started):
            state["wall_s"] += wall
            state["invocations"].append({"kind": kind, "started": started, "wall_s": round(wall, 3), "rc": rc,
                                         "killed": killed})
            m = re.search(r"; backend (\w+)", output)
            if m:
                state["backend"] = m.group(1)
            m = re.search(r"\] (\d+) steps \((\d+) per epoch", output)
            if m:
                state["planned_steps"] = state.get("planned_steps") or int(m.group(1))
            write_atomic(run.state_path(), json.dumps(state, indent=1))

        # Time cap: a short probe measures the step time; when the whole schedule would overrun
        # the cap, the run's max_steps shrinks to what fits. The probe stays inside the warmup (the
        # budgets keep warmup_steps >= probe_steps), where the learning rate does not depend on the
        # schedule's length, so the capped run is exactly a run planned with that max_steps.
        if cap and "capped" not in state:
            log_path = os.path.join(run.out_dir, "log.jsonl")
            offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
            rc, wall, out, killed, started = self.invoke(run, cmd + ["--set", "stop_after_steps=%d" % probe],
                                                         hard_limit())
            record("probe", rc, wall, out, killed, started)
            if self.finish_check(run, rc, out, killed, probe=True):
                state["capped"] = False
                write_atomic(run.state_path(), json.dumps(state, indent=1))
                return
            if run.status != "stopped":
                return
            m = re.search(r"stopped after \d+ steps at step (\d+) of (\d+)", out)
            step_now, total = int(m.group(1)), int(m.group(2))
            step_s = step_time(log_path, offset, wall, probe)
            budget_s = cap * margin - state["wall_s"]
            state["step_s"] = step_s
            if (total - step_now) * step_s > budget_s:
                max_steps = step_now + max(0, int(budget_s / step_s))
                state["max_steps"] = min(max_steps, total)
                state["capped"] = True
                print("    time cap: %.1f ms/step, %d steps would take %.1fs of the %gs cap; capped at %d steps" % (
                    1e3 * step_s, total, total * step_s, cap, state["max_steps"]))
                cmd += ["--set", "max_steps=%d" % state["max_steps"]]
            else:
                state["capped"] = False
            write_atomic(run.state_path(), json.dumps(state, indent=1))
        rc, wall, out, killed, started = self.invoke(run, cmd, hard_limit())
        record("run", rc, wall, out, killed, started)
        self.finish_check(run, rc, out, killed)

    def finish_check(self, run, rc, out, killed, probe=False):
        """Sets run.status from an invocation's outcome; True when the run is finished."""
        if os.path.exists(run.result_path()) and rc == 0:
            run.status = "done"
            # A finished run is never resumed: its resumable checkpoints (parameters and AdamW
            # moments, gigabytes at the large sizes) only fill the disk.
            ckpts = os.path.join(run.out_dir, "checkpoints")
            if not self.args.keep_checkpoints and os.path.isdir(ckpts):
                shutil.rmtree(ckpts, ignore_errors=True)
            r = read_json(run.result_path()) or {}
            st = read_json(run.state_path()) or {}
            if run.stage == "finetune":
                print("    test AUC %.4f  logloss %.4f  (train AUC %.4f)  %d steps, %.1fs" % (
                    r.get("test_auc") or float("nan"), r.get("test_logloss") or float("nan"),
                    r.get("train_auc") or float("nan"), r.get("steps", 0), st.get("wall_s", 0)))
            return True
        if killed:
            run.status = "timeout"
            print("    killed at the hard time limit; rerun the sweep to continue it from its last checkpoint")
        elif rc == 0 and "stopped after" in out:
            run.status = "stopped"
            m = re.search(r"stopped after \d+ steps at step (\d+) of (\d+)", out)
            if m and not probe:
                print("    stopped at step %s of %s (stop_after_steps); rerun the sweep to continue it" % m.groups())
        else:
            run.status = "failed"
            print("    FAILED (exit %d); the last lines of %s:\n%s" % (
                rc, os.path.join(run.out_dir, "stdout.log"), indent(last_lines(out, 8))))
        return False

    def run_all(self, runs):
        for run in runs:
            self.run_one(run)
        self.failures = sum(r.status == "failed" for r in runs)
        self.unfinished = sum(r.status in ("stopped", "timeout", "blocked") for r in runs)


def step_time(log_path, offset, wall, probe):
    """Seconds per optimizer step from the train lines this invocation appended to log.jsonl
    (the first logged interval dropped: it holds the start-up); the invocation's whole wall time
    over its steps when there are too few lines (an overestimate, so the cap stays safe)."""
    pts = []
    try:
        with open(log_path) as f:
            f.seek(offset)
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("event") == "train" and isinstance(rec.get("elapsed_s"), (int, float)):
                    pts.append((rec["step"], rec["elapsed_s"]))
    except OSError:
        pass
    if len(pts) >= 2 and pts[-1][0] > pts[0][0] and pts[-1][1] > pts[0][1]:
        return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])
    return wall / max(probe, 1)


def last_lines(text, n):
    return "\n".join(text.rstrip().splitlines()[-n:])


def tail(path, n=8):
    try:
        with open(path) as f:
            return indent(last_lines(f.read(), n))
    except OSError:
        return ""


def indent(text):
    return "\n".join("      " + l for l in text.splitlines())


# ---------------------------------------------------------------- gathering the table

def info_params(bin_path, ckpt):
    """(block, dense, sparse) parameter counts from `gpsdrec info CKPT`, or None."""
    try:
        out = subprocess.run([bin_path, "info", ckpt], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, timeout=600).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"parameters: (\d+) sparse \(item table\), (\d+) dense, of which (\d+) in transformer blocks", out)
    if not m:
        return None
    return int(m.group(3)), int(m.group(2)), int(m.group(1))


def run_params(bin_path, run_dir, size):
    """Parameter counts of a finished run (cached in its sweep_run.json), else N from the size."""
    state_path = os.path.join(run_dir, "sweep_run.json")
    state = read_json(state_path) or {}
    ckpt = os.path.join(run_dir, "model.safetensors")
    if "params" in state:
        return state["params"]
    if os.path.exists(os.path.join(run_dir, "result.json")) and os.path.exists(ckpt):
        p = info_params(bin_path, ckpt)
        if p:
            state["params"] = {"block": p[0], "dense": p[1], "sparse": p[2], "from": "gpsdrec info"}
            if block_params(size["n_layers"], size["dim"]) != p[0]:
                state["params"]["note"] = "differs from the size's count with multiple_of = 32"
            write_atomic(state_path, json.dumps(state, indent=1))
            return state["params"]
    return {"block": block_params(size["n_layers"], size["dim"]), "dense": None, "sparse": None, "from": "size"}


def run_summary(run_dir):
    """(status, result, state) of a run directory."""
    result = read_json(os.path.join(run_dir, "result.json"))
    state = read_json(os.path.join(run_dir, "sweep_run.json")) or {}
    if result is not None:
        return "done", result, state
    inv = state.get("invocations") or []
    if not inv:
        return "not started", {}, state
    last = inv[-1]
    if last.get("killed"):
        return "timeout", {}, state
    return ("stopped" if last.get("rc") == 0 else "failed"), {}, state


def wall_of(result, state):
    if "wall_s" in state:
        return state["wall_s"]
    return result.get("seconds")


def gpu_hours(wall, state):
    backend = state.get("backend")
    if wall is None or backend is None:
        return None, backend, None
    gpus = 1 if backend == "cuda" else 0
    return wall * gpus / 3600.0, backend, gpus


def num(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def gather(out, bin_path):
    """Every finetuning run under out/runs, one row each, plus one entry per pretraining run."""
    rows, pretrains = [], []
    runs_dir = os.path.join(out, "runs")
    if not os.path.isdir(runs_dir):
        return rows, pretrains
    sizes = []
    for name in os.listdir(runs_dir):
        try:
            sizes.append(parse_size(name))
        except SweepError:
            continue
    sizes.sort(key=lambda s: (block_params(s["n_layers"], s["dim"]), s["name"]))
    for size in sizes:
        sdir = os.path.join(runs_dir, size["name"])
        seeds = sorted(int(d[4:]) for d in os.listdir(sdir) if re.match(r"^seed\d+$", d))
        for seed in seeds:
            base = os.path.join(sdir, "seed%d" % seed)
            pre_dir = os.path.join(base, "pretrain")
            pre = None
            if os.path.isdir(pre_dir):
                st, res, state = run_summary(pre_dir)
                wall = wall_of(res, state) if st == "done" else state.get("wall_s")
                gh, backend, _ = gpu_hours(wall, state)
                pre = {"size": size["name"], "seed": seed, "status": st, "steps": res.get("steps"),
                       "planned_steps": state.get("planned_steps"), "capped": state.get("capped"),
                       "hr10": num(res.get("hr@10")), "ndcg10": num(res.get("ndcg@10")), "wall_s": wall,
                       "device": backend, "gpu_hours": gh, "run_dir": pre_dir}
                pretrains.append(pre)
            for key in STRATEGIES:
                rdir = os.path.join(base, key)
                if not os.path.isdir(rdir):
                    continue
                st, res, state = run_summary(rdir)
                params = run_params(bin_path, rdir, size)
                wall = wall_of(res, state) if st == "done" else state.get("wall_s")
                gh, backend, gpus = gpu_hours(wall, state)
                test_auc, train_auc = num(res.get("test_auc")), num(res.get("train_auc"))
                uses_pre = STRATEGIES[key][1] and pre is not None
                rows.append({
                    "size": size["name"], "n_layers": size["n_layers"], "dim": size["dim"],
                    "n_heads": size["n_heads"], "strategy": STRATEGIES[key][0], "strategy_key": key,
                    "seed": seed, "status": st, "params_N": params["block"], "dense_params": params["dense"],
                    "sparse_params": params["sparse"], "test_auc": test_auc, "test_gauc": num(res.get("test_gauc")),
                    "test_logloss": num(res.get("test_logloss")), "train_auc": train_auc,
                    "train_logloss": num(res.get("train_logloss")),
                    "train_test_gap": (train_auc - test_auc) if test_auc is not None and train_auc is not None else None,
                    "steps": res.get("steps"), "planned_steps": state.get("planned_steps"),
                    "capped": bool(state.get("capped")), "wall_s": wall, "device": backend, "gpus": gpus, "gpu_hours": gh,
                    "pretrain_steps": pre["steps"] if uses_pre else None,
                    "pretrain_wall_s": pre["wall_s"] if uses_pre else None,
                    "pretrain_gpu_hours": pre["gpu_hours"] if uses_pre else None,
                    "pretrain_hr10": pre["hr10"] if uses_pre else None,
                    "pretrain_ndcg10": pre["ndcg10"] if uses_pre else None,
                    "ceiling_auc": num(res.get("ceiling_auc")), "run_dir": rdir,
                })
    return rows, pretrains


def csv_value(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "%.6g" % v if abs(v) >= 1e-3 or v == 0 else "%.6e" % v
    return str(v)


def write_table(out, rows, pretrains, command):
    totals = {"runs": len(rows) + len(pretrains),
              "finished": sum(r["status"] == "done" for r in rows) + sum(p["status"] == "done" for p in pretrains)}
    walls = [r["wall_s"] for r in rows + pretrains if r["wall_s"] is not None]
    ghs = [r["gpu_hours"] for r in rows + pretrains if r["gpu_hours"] is not None]
    totals["wall_s"] = sum(walls)
    totals["gpu_hours"] = sum(ghs)
    doc = {"generated": now_iso(), "command": command, "rows": rows, "pretrain": pretrains, "totals": totals,
           "columns": CSV_COLUMNS}
    write_atomic(os.path.join(out, "sweep.json"), json.dumps(doc, indent=1) + "\n")
    tmp = os.path.join(out, "sweep.csv.tmp.%d" % os.getpid())
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in rows:
            w.writerow([csv_value(r.get(c)) for c in CSV_COLUMNS])
    os.replace(tmp, os.path.join(out, "sweep.csv"))
    return totals


def fmt(v, spec):
    return spec % v if v is not None else "-"


def print_table(rows, totals):
    print("\n%-12s %11s %-6s %4s %8s %8s %8s %7s %8s  %s" % (
        "size", "N", "strat", "seed", "test AUC", "logloss", "gap", "steps", "wall s", "status"))
    for r in rows:
        print("%-12s %11d %-6s %4d %8s %8s %8s %7s %8s  %s%s" % (
            r["size"], r["params_N"], r["strategy"], r["seed"], fmt(r["test_auc"], "%.4f"),
            fmt(r["test_logloss"], "%.4f"), fmt(r["train_test_gap"], "%.4f"), fmt(r["steps"], "%d"),
            fmt(r["wall_s"], "%.1f"), r["status"], " (capped)" if r.get("capped") else ""))
    print("total: %d runs (%d finished), %.1f s wall, %.4f GPU hours" % (
        totals["runs"], totals["finished"], totals["wall_s"], totals["gpu_hours"]))


# ---------------------------------------------------------------- main

def split_extra(argv):
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def parse_args(argv):
    argv, extra = split_extra(argv)
    p = argparse.ArgumentParser(prog="tools/sweep.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Everything after `--` is passed to every gpsdrec run (and to gpsdrec synth).")
    p.add_argument("--data", help="dataset file (gpsdrec prep/synth output), or `synth` to generate "
                   "one into DIR/data/synth.gpsd with the budget's synth.* settings")
    p.add_argument("--out", required=True, help="sweep directory (runs, table, fits, plots)")
    p.add_argument("--sizes", default=",".join(PAPER_SIZES), help="comma-separated LxHyAz sizes "
                   "(default: the paper's eight)")
    p.add_argument("--strategies", default="nt,stsf", help="comma-separated: nt ft st ftsf stsf (default nt,stsf)")
    p.add_argument("--seeds", default="1", help="comma-separated seeds (default 1)")
    p.add_argument("--budget", help="budget file (configs/sweep/*.conf): gpsdrec settings and time caps, "
                   "per size where prefixed with SIZE.")
    p.add_argument("--config", action="append", help="gpsdrec config file for every run (repeatable)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--budget-steps", type=int, help="optimizer steps per run (both stages), overriding the budget")
    g.add_argument("--budget-epochs", type=int, help="epochs per run (both stages), overriding the budget")
    p.add_argument("--time-cap", type=float, help="wall-clock cap per run in seconds (0 = none), overriding the budget")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="gpsdrec device for every run")
    p.add_argument("--bin", default=None, help="gpsdrec binary (default ./gpsdrec, else the repository's)")
    p.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    p.add_argument("--report-only", action="store_true", help="only gather the table, fits and plots")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep the resumable checkpoints of finished "
                   "runs (by default only their final model.safetensors stays)")
    p.add_argument("--verbose", action="store_true", help="echo every line gpsdrec prints")
    args = p.parse_args(argv)
    if args.budget_steps is not None and args.budget_steps < 1:
        p.error("--budget-steps must be at least 1")
    if args.budget_epochs is not None and args.budget_epochs < 1:
        p.error("--budget-epochs must be at least 1")
    if args.time_cap is not None and (args.time_cap < 0 or not math.isfinite(args.time_cap)):
        p.error("--time-cap must be a number of seconds >= 0")
    if args.data is None and not args.report_only:
        p.error("--data is required (except with --report-only)")
    if args.bin is None:
        args.bin = "./gpsdrec" if os.path.exists("./gpsdrec") else os.path.join(ROOT, "gpsdrec")
    return args, extra


def main(argv):
    args, extra = parse_args(argv)
    try:
        sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
        strategies = []
        for s in args.strategies.split(","):
            if s.strip() and parse_strategy(s) not in strategies:
                strategies.append(parse_strategy(s))
        seeds = []
        for s in args.seeds.split(","):
            if s.strip():
                if not s.strip().isdigit():
                    raise SweepError("seed %r is not a non-negative integer" % s)
                seeds.append(int(s))
        if not sizes or not strategies or not seeds:
            raise SweepError("--sizes, --strategies and --seeds each need at least one value")
        budget = parse_budget(args.budget) if args.budget else None
        if not args.report_only and not os.path.exists(args.bin):
            raise SweepError("gpsdrec binary %s not found (run make, or pass --bin)" % args.bin)
    except SweepError as e:
        print("sweep: error: %s" % e, file=sys.stderr)
        return 2

    os.makedirs(args.out, exist_ok=True)
    lock = open(os.path.join(args.out, ".sweep.lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print("sweep: error: another tools/sweep.py is working in %s" % args.out, file=sys.stderr)
        return 2
    command = " ".join(["tools/sweep.py"] + argv)
    driver = Driver(args, budget, sizes, strategies, seeds, extra)
    if not args.report_only:
        try:
            driver.prepare_data()
            runs = build_plan(args, sizes, strategies, seeds)
            print("sweep: %d sizes x %d seeds: %d runs into %s" % (len(sizes), len(seeds), len(runs),
                                                                   os.path.join(args.out, "runs")))
            if args.dry_run and budget:
                print("budget %s, the driver's keys:" % args.budget)
                for k, v, origin in budget["global"]:
                    print("  %s = %s" % (k, v))
                for size_name, pairs in budget["sizes"].items():
                    print("  %s: %s" % (size_name, ", ".join("%s = %s" % (k, v) for k, v, _ in pairs)))
            if not args.dry_run:
                history = os.path.join(args.out, "sweep_commands.log")
                with open(history, "a") as f:
                    f.write("%s %s\n" % (now_iso(), command))
            driver.run_all(runs)
        except SweepError as e:
            print("sweep: error: %s" % e, file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("\nsweep: interrupted; rerun the same command to continue", file=sys.stderr)
            return 130
        if args.dry_run:
            return 0
        n_skipped = sum(r.status == "skipped" for r in runs)
        n_done = sum(r.status == "done" for r in runs)
        print("sweep: %d runs trained to the end now, %d skipped (finished before), %d unfinished, %d failed" % (
            n_done, n_skipped, driver.unfinished, driver.failures))

    rows, pretrains = gather(args.out, args.bin)
    totals = write_table(args.out, rows, pretrains, command)
    print_table(rows, totals)
    print("table: %s, %s" % (os.path.join(args.out, "sweep.csv"), os.path.join(args.out, "sweep.json")))

    fits = sweep_fit.fit_table(rows)
    md = sweep_fit.markdown(fits)
    write_atomic(os.path.join(args.out, "fits.json"), json.dumps({"fits": fits, "paper": sweep_fit.PAPER}, indent=1))
    write_atomic(os.path.join(args.out, "fits.md"), md)
    print("\nfits (N = dense parameters of the transformer blocks; ± one standard error):\n")
    sys.stdout.write(md)

    if not args.no_plots:
        try:
            paths = sweep_plot.plot(rows, fits, os.path.join(args.out, "plots"))
            print("plots: %s" % ", ".join(paths))
        except sweep_plot.MatplotlibMissing as e:
            print("plots: skipped (%s); draw them later with python3 tools/sweep_plot.py %s" % (e, args.out))
    if driver.failures:
        return 1
    return 3 if driver.unfinished else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
