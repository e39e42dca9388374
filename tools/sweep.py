#!/usr/bin/env python3
"""Scaling sweeps: pretraining and finetuning over model sizes and transfer strategies, one table.

usage:
  tools/sweep.py [scheduling] --data FILE|synth --out DIR [--sizes L1H32A4,...] [--strategies nt,stsf]
                 [--seeds 1,2,3] [--budget configs/sweep/X.conf] [--config FILE.conf]...
                 [--budget-steps N | --budget-epochs N] [--time-cap SECONDS] [--device auto|cpu|cuda]
                 [--bin ./gpsdrec] [--keep-checkpoints] [-- extra gpsdrec options]
                 [--and --data ... --out DIR2 ... (another sweep over the same GPUs)]
  scheduling:    [--gpus 0,1,2,3] [--jobs-per-gpu K] [--share-below N] [--deadline-min M]
                 [--hard-stop-min M] [--dry-run | --simulate | --report-only] [--no-plots] [--verbose]

For every seed and size it runs `gpsdrec train` once for pretraining (shared by every transfer
strategy; NT alone needs none) and once per strategy for finetuning, into
DIR/runs/SIZE/seedS/{pretrain,nt,ft,st,ftsf,stsf}: concurrently over the GPUs, one run per GPU
(or up to K small ones), the longest chains of estimated work first, a finetuning after its
pretraining. A run whose result.json exists is skipped; an interrupted one continues from its
checkpoints (gpsdrec resumes by itself). Then it gathers one row per finetuning run into
DIR/sweep.csv and DIR/sweep.json, fits AUC(N) = a - b N^-c and logloss(N) = a + b N^-c per
strategy (DIR/fits.json, DIR/fits.md; tools/sweep_fit.py) and draws the curves (DIR/plots/,
tools/sweep_plot.py, when matplotlib is present). docs/sweep.md has the details: budgets, time
caps, estimates, the schedule, the table's columns.
"""
import argparse
import csv
import datetime
import fcntl
import heapq
import json
import math
import os
import queue
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
              "estimate": (float, 0.0), "pretrain.estimate": (float, 0.0), "finetune.estimate": (float, 0.0),
              "probe_steps": (int, 1), "cap_margin": (float, 0.01), "hard_limit_factor": (float, 1.0)}
SIZE_RE = re.compile(r"^L(\d+)H(\d+)A(\d+)$", re.IGNORECASE)

CSV_COLUMNS = ["size", "n_layers", "dim", "n_heads", "strategy", "seed", "status", "params_N", "dense_params",
               "sparse_params", "test_auc", "test_gauc", "test_logloss", "train_auc", "train_logloss",
               "train_test_gap", "steps", "planned_steps", "capped", "wall_s", "device", "gpus", "gpu_ids", "gpu_hours",
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
    (`#@ L24H1024A16.pretrain.lr = 1e-3`), or scoped to one strategy's finetuning, with or without
    a size (`#@ nt.finetune.lr = 1e-3`, `#@ L8H512A8.nt.finetune.lr = 1e-3`): those come after the
    strategy's own file (configs/strategies/), so they can change what it sets. Returns {"path",
    "global": [(key, value, origin)], "sizes": {SIZE: [...]}, "strategies": {(SIZE or None,
    STRATEGY): [...]}} in file order."""
    out = {"global": [], "sizes": {}, "strategies": {}, "path": path}
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
        size_name = parse_size(head)["name"] if scoped else None
        after_size = rest if scoped else key
        strat, _, setting = after_size.partition(".")
        if setting and strat.lower() in STRATEGIES:
            where = "%s:%d" % (path, no)
            if setting in SWEEP_KEYS or not setting.startswith("finetune."):
                raise SweepError("%s: `#@ %s`: a strategy scopes only finetuning settings of gpsdrec "
                                 "(%s.finetune.KEY), not %r" % (where, key, strat, setting))
            out["strategies"].setdefault((size_name, strat.lower()), []).append((setting, value, where))
            continue
        if (rest if scoped else key) in SWEEP_KEYS:
            check_sweep_value(rest if scoped else key, value, "%s:%d" % (path, no))
        if scoped:
            out["sizes"].setdefault(size_name, []).append((rest, value, "%s:%d" % (path, no)))
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


def read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


_PRINT_LOCK = threading.Lock()  # one line at a time from the runs' threads


def print_locked(text):
    with _PRINT_LOCK:
        print(text, flush=True)


def now_iso():
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------- the plan

STAGE_ORDER = {"pretrain": 0, "finetune": 1}


class Run:
    def __init__(self, driver, size, seed, stage, strategy, out_dir, index):
        self.driver, self.size, self.seed, self.stage, self.strategy = driver, size, seed, stage, strategy
        self.out_dir, self.index = out_dir, index
        self.status = "pending"
        self.pretrain = None  # the pretraining a transfer strategy starts from
        self.dependents = []  # the finetunings that start from this pretraining
        self.est = None  # expected wall seconds on one GPU of its own (the budget's `estimate`)
        self.exclusive = True  # takes a whole GPU (False: may share one, see --jobs-per-gpu)
        self.params = block_params(size["n_layers"], size["dim"])
        # set while the run is scheduled
        self.gpu = self.gpu_id = None
        self.gpu_s = 0.0  # GPU-seconds of this invocation: wall time over the runs sharing its GPU
        self.t_start = self.t_end = None
        self.reason = ""
        self.proc = None
        self.cancelled = None  # None, or why the run was stopped ("deadline")
        self.lock = threading.Lock()

    @property
    def label(self):
        what = "pretrain" if self.stage == "pretrain" else STRATEGIES[self.strategy][0]
        text = "%s seed %d %s" % (self.size["name"], self.seed, what)
        return "%s %s" % (self.driver.name, text) if self.driver.multi else text

    def result_path(self):
        return os.path.join(self.out_dir, "result.json")

    def state_path(self):
        return os.path.join(self.out_dir, "sweep_run.json")


def build_plan(driver):
    """Every run of one sweep, small sizes first (the order of the plan; the scheduler starts them
    by priority)."""
    args = driver.args
    runs = []
    for seed in driver.seeds:
        for size in driver.sizes:
            base = os.path.join(args.out, "runs", size["name"], "seed%d" % seed)
            pre = None
            if any(STRATEGIES[s][1] for s in driver.strategies):
                pre = Run(driver, size, seed, "pretrain", None, os.path.join(base, "pretrain"), len(runs))
                runs.append(pre)
            for s in driver.strategies:
                r = Run(driver, size, seed, "finetune", s, os.path.join(base, s), len(runs))
                if STRATEGIES[s][1]:
                    r.pretrain = pre
                    pre.dependents.append(r)
                runs.append(r)
    for r in runs:
        r.est = driver.estimate(r)
    return runs


class Driver:
    """One sweep: a dataset, its budget, sizes, strategies and seeds, and the directory it writes."""

    def __init__(self, args, budget, sizes, strategies, seeds, extra, opts):
        self.args, self.budget, self.extra, self.opts = args, budget, extra, opts
        self.sizes, self.strategies, self.seeds = sizes, strategies, seeds
        self.bin = args.bin
        self.name = os.path.basename(os.path.normpath(args.out)) or args.out
        self.multi = False
        self.data = args.data

    def say(self, text):
        print_locked(text)

    # -- settings of one run, in precedence order (later wins) --
    def budget_pairs(self, size):
        pairs = list(self.budget["global"]) if self.budget else []
        if self.budget:
            pairs += self.budget["sizes"].get(size["name"], [])
        return pairs

    def config_files(self):
        """The budget file itself (a gpsdrec config) and --config files, for every run."""
        return ([self.budget["path"]] if self.budget else []) + list(self.args.config or [])

    def strategy_pairs(self, size, strategy):
        """The budget's settings scoped to a strategy: those for every size, then the size's own."""
        if not self.budget:
            return []
        table = self.budget["strategies"]
        return list(table.get((None, strategy), [])) + list(table.get((size["name"], strategy), []))

    def warn_shadowed(self, pairs, run, strategy_file):
        """A size-scoped setting the strategy's file sets again does not reach that strategy's
        runs (NT's finetune.lr, say): said once per size and strategy, with the scope that would."""
        own = set()
        for line in (read_text(strategy_file) or "").splitlines():
            key = line.split("#", 1)[0].partition("=")[0].strip()
            if key:
                own.add(key)
        seen = self.__dict__.setdefault("_shadow_warned", set())
        for k, v, origin in pairs:
            if k in own and k not in SWEEP_KEYS and (run.size["name"], run.strategy, k) not in seen:
                seen.add((run.size["name"], run.strategy, k))
                self.say("warning: %s: `%s = %s` for %s does not reach %s: %s sets %s again; scope it to "
                         "the strategy (`#@ %s.%s.%s = %s`)" % (
                             origin, k, v, run.size["name"], STRATEGIES[run.strategy][0],
                             os.path.relpath(strategy_file), k, run.size["name"], run.strategy, k, v))

    def budget_conf(self, pairs, directory, name="sweep_budget.conf"):
        """The budget's scoped gpsdrec settings as a config file `name` in `directory` (each line
        naming the budget line it came from); None when there are none. The size-scoped file goes
        after the budget file and before the strategy's file, the strategy-scoped one after the
        strategy's file. In a dry run the file is not written."""
        lines = []
        for k, v, origin in pairs:
            if k not in SWEEP_KEYS:
                if "#" in v or v != v.strip() or '"' in v:
                    v = '"%s"' % v
                lines.append("%s = %s  # %s\n" % (k, v, origin))
        if not lines:
            return None
        path = os.path.join(directory, name)
        if not self.opts.dry_run and not self.opts.simulate:
            os.makedirs(directory, exist_ok=True)
            text = "# gpsdrec settings of the sweep budget for this run (written by tools/sweep.py)\n" + "".join(lines)
            if read_text(path) != text:
                write_atomic(path, text)
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

    def estimate(self, run):
        """The budget's `estimate` of a run's wall seconds on one GPU (None when it has none).
        A budget overridden by --budget-steps/--budget-epochs/--time-cap has no estimate: the
        numbers were worked out for the budget's own schedule."""
        if self.args.budget_steps is not None or self.args.budget_epochs is not None:
            return None
        pairs = self.budget_pairs(run.size)
        est = sweep_value(pairs, "estimate", 0.0)
        est = sweep_value(pairs, run.stage + ".estimate", est)
        return est if est > 0 else None

    def command(self, run):
        """The gpsdrec command of a run. Precedence, lowest first: the dataset's config files, the
        budget, its size-scoped settings, the strategy's config file, the budget's strategy-scoped
        settings, the size, --budget-steps/--budget-epochs, seed and
        device, the extra options after `--`, and last the driver's own keys (stage, data, out_dir,
        init_from)."""
        pairs = self.budget_pairs(run.size)
        cmd = [self.bin, "train"] + self.config_files()
        conf = self.budget_conf(pairs, run.out_dir)
        if conf:
            cmd.append(conf)
        if run.stage == "finetune":
            strategy_file = os.path.join(ROOT, "configs", "strategies", run.strategy + ".conf")
            self.warn_shadowed(pairs, run, strategy_file)
            cmd.append(os.path.relpath(strategy_file))
            conf = self.budget_conf(self.strategy_pairs(run.size, run.strategy), run.out_dir,
                                    "sweep_budget_strategy.conf")
            if conf:
                cmd.append(conf)
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
        if self.opts.dry_run or self.opts.simulate:
            return
        os.makedirs(os.path.dirname(self.data), exist_ok=True)
        log = os.path.join(a.out, "data", "synth.log")
        t0 = time.monotonic()
        with open(log, "w") as f:
            rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
        if rc != 0 or not os.path.exists(self.data):
            raise SweepError("gpsdrec synth failed (exit %d); its output is in %s:\n%s" % (rc, log, tail(log)))
        print("data: generated in %.1f s" % (time.monotonic() - t0))

    # -- before scheduling --
    def review(self, runs):
        """Marks finished runs skipped. A finished pretraining whose model.safetensors is gone
        (a sweep directory carried without its models) while a finetuning still needs it is run
        again: its result.json is set aside as result.json.no-model."""
        for r in runs:
            if os.path.exists(r.result_path()):
                r.status = "skipped"
        for r in runs:
            if r.status != "skipped" or r.stage != "pretrain":
                continue
            waiting = [d for d in r.dependents if d.status != "skipped"]
            model = os.path.join(r.out_dir, "model.safetensors")
            if waiting and not os.path.exists(model):
                self.say("  %-32s its model.safetensors is missing and %s needs it: pretraining again" % (
                    r.label, waiting[0].label))
                if not self.opts.dry_run and not self.opts.simulate:
                    os.replace(r.result_path(), r.result_path() + ".no-model")
                r.status = "pending"
        for r in runs:
            if r.status == "skipped":
                self.say("  %-32s skipped (finished: %s)" % (r.label, r.result_path()))

    # -- one gpsdrec invocation --
    def invoke(self, run, cmd, hard_limit, env):
        """Runs cmd with its output appended to run_dir/stdout.log; returns (rc, wall_s, output,
        killed, started, t0, t1) with killed None or why the process was stopped."""
        os.makedirs(run.out_dir, exist_ok=True)
        log_path = os.path.join(run.out_dir, "stdout.log")
        lines = []
        killed = [None]
        t_wall0 = time.time()
        t0 = time.monotonic()
        started = now_iso()
        with open(log_path, "a") as log:
            gpu_note = " [CUDA_VISIBLE_DEVICES=%s]" % env["CUDA_VISIBLE_DEVICES"] if "CUDA_VISIBLE_DEVICES" in env else ""
            log.write("\n#### %s%s: %s\n" % (started, gpu_note, " ".join(cmd)))
            log.flush()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True, bufsize=1, env=env)

            def kill(reason):
                if killed[0] is None:
                    killed[0] = reason
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()

            with run.lock:
                run.proc = (proc, kill)
                if run.cancelled:
                    threading.Thread(target=kill, args=(run.cancelled,), daemon=True).start()
            timer = threading.Timer(hard_limit, kill, args=("hard limit",)) if hard_limit else None
            if timer:
                timer.daemon = True
                timer.start()
            try:
                for line in proc.stdout:
                    log.write(line)
                    lines.append(line)
                    if self.opts.verbose:
                        self.say("    " + line.rstrip())
                rc = proc.wait()
            finally:
                if timer:
                    timer.cancel()
                with run.lock:
                    run.proc = None
        return rc, time.monotonic() - t0, "".join(lines), killed[0], started, t_wall0, time.time()

    def execute(self, run, gpu, threads):
        """Trains one run to its end (a probe first when it has a time cap); sets run.status."""
        state = read_json(run.state_path()) or {}
        cmd, pairs = self.command(run)
        cap = self.time_cap(pairs, run.stage)
        probe = sweep_value(pairs, "probe_steps", 30)
        margin = sweep_value(pairs, "cap_margin", 0.85)
        hard_factor = sweep_value(pairs, "hard_limit_factor", 2.0)
        if "max_steps" in state:
            cmd += ["--set", "max_steps=%d" % state["max_steps"]]
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        if threads and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(threads)
        os.makedirs(run.out_dir, exist_ok=True)
        state.setdefault("wall_s", 0.0)
        state.setdefault("invocations", [])
        state["size"], state["seed"], state["stage"] = run.size["name"], run.seed, run.stage
        state["strategy"] = run.strategy
        resumed = os.path.isdir(os.path.join(run.out_dir, "checkpoints"))
        where = " on GPU %s" % gpu if gpu is not None else ""
        self.say("  %-32s %s%s%s" % (run.label, "resuming" if resumed else "running", where,
                                     " (time cap %gs)" % cap if cap else ""))

        def hard_limit():
            if not cap:
                return None
            return max(cap * hard_factor - state["wall_s"], 0) + 300

        def record(kind, rc, wall, output, killed, started, t0, t1):
            state["wall_s"] += wall
            state["invocations"].append({"kind": kind, "started": started, "wall_s": round(wall, 3), "rc": rc,
                                         "killed": bool(killed), "kill_reason": killed, "gpu": gpu,
                                         "t_start": round(t0, 3), "t_end": round(t1, 3)})
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
            res = self.invoke(run, cmd + ["--set", "stop_after_steps=%d" % probe], hard_limit(), env)
            record("probe", *res)
            rc, wall, out, killed = res[:4]
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
                self.say("  %-32s time cap: %.1f ms/step, %d steps would take %.1fs of the %gs cap; capped at %d "
                         "steps" % (run.label, 1e3 * step_s, total, total * step_s, cap, state["max_steps"]))
                cmd += ["--set", "max_steps=%d" % state["max_steps"]]
            else:
                state["capped"] = False
            write_atomic(run.state_path(), json.dumps(state, indent=1))
        if run.cancelled:
            run.status = run.cancelled
            return
        res = self.invoke(run, cmd, hard_limit(), env)
        record("run", *res)
        self.finish_check(run, res[0], res[2], res[3])

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
                # the parameter counts, cached in sweep_run.json while the model is at hand
                run_params(self.bin, run.out_dir, run.size)
                self.say("  %-32s test AUC %.4f  logloss %.4f  (train AUC %.4f)  %d steps, %.1fs" % (
                    run.label, r.get("test_auc") or float("nan"), r.get("test_logloss") or float("nan"),
                    r.get("train_auc") or float("nan"), r.get("steps", 0), st.get("wall_s", 0)))
            else:
                self.say("  %-32s done: %d steps, %.1fs" % (run.label, r.get("steps", 0), st.get("wall_s", 0)))
            return True
        if killed == "deadline":
            run.status = "deadline"
            self.say("  %-32s stopped at the sweep's hard stop; rerun the sweep to continue it from its last "
                     "checkpoint" % run.label)
        elif killed:
            run.status = "timeout"
            self.say("  %-32s killed at the hard time limit; rerun the sweep to continue it from its last checkpoint"
                     % run.label)
        elif rc == 0 and "stopped after" in out:
            run.status = "stopped"
            m = re.search(r"stopped after \d+ steps at step (\d+) of (\d+)", out)
            if m and not probe:
                self.say("  %-32s stopped at step %s of %s (stop_after_steps); rerun the sweep to continue it" % (
                    (run.label,) + m.groups()))
        else:
            run.status = "failed"
            self.say("  %-32s FAILED (exit %d); the last lines of %s:\n%s" % (
                run.label, rc, os.path.join(run.out_dir, "stdout.log"), indent(last_lines(out, 8))))
        return False


# ---------------------------------------------------------------- scheduling over GPUs

def detect_gpus(device=None, env=None, smi="nvidia-smi"):
    """The GPU ids runs are spread over when --gpus is not given: CUDA_VISIBLE_DEVICES when set,
    else one id per line of `nvidia-smi -L`; [None] (one run at a time, no pinning) when there is
    no GPU or every run is on the CPU."""
    env = os.environ if env is None else env
    if device == "cpu":
        return [None]
    vis = env.get("CUDA_VISIBLE_DEVICES")
    if vis is not None:
        ids = [v.strip() for v in vis.split(",") if v.strip()]
        ids = [] if ids and ids[0].startswith("-") else ids  # "-1": no GPU
        return ids or [None]
    try:
        out = subprocess.run([smi, "-L"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return [None]
    n = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU ")) if out.returncode == 0 else 0
    return [str(i) for i in range(n)] or [None]


class Scheduler:
    """Starts the pending runs of a plan on GPU slots, highest priority first, and waits for them.

    Priority: the longest chain of estimated seconds a run starts (its own estimate plus its
    longest dependent's), so the long poles of the sweep start first; then more parameters, then
    pretraining before finetuning. A finetuning starts only after its pretraining is done (and is
    `blocked` when the pretraining ends any other way). Each GPU takes one run at a time, or up to
    jobs_per_gpu runs of models below share_below parameters (larger ones take a GPU alone; while
    one waits for a free GPU no new small run is placed, so the GPUs drain for it). With a
    deadline (seconds from the start) no run starts after it, nor one whose chain would end after
    it by its estimate (scaled by how the finished runs compared with theirs); at hard_stop the
    runs still going are stopped. GPU-seconds: each run is charged its wall time divided by the
    number of runs on its GPU at each moment.

    The executor starts runs (start(run, gpu, threads)), reports finished ones (wait(timeout) ->
    list) and stops them (terminate(run)); now() is its clock. RealExecutor runs gpsdrec,
    SimExecutor replays the estimates (--simulate, and the self-test)."""

    def __init__(self, runs, gpus, executor, jobs_per_gpu=1, share_below=1e7, deadline_s=None,
                 hard_stop_s=None, cpus=None, say=print, started_at=None):
        self.runs, self.gpus, self.ex = runs, list(gpus), executor
        self.k = max(1, int(jobs_per_gpu))
        self.deadline_s, self.hard_stop_s = deadline_s, hard_stop_s
        self.started_at = started_at  # the executor's time the deadlines count from (default: run())
        self.cpus = cpus if cpus is not None else (os.cpu_count() or 1)
        self.say = say
        for r in runs:
            r.exclusive = self.k == 1 or r.params >= share_below
        self.on_gpu = [[] for _ in self.gpus]
        self.correction = 1.0
        self.est_done = self.wall_done = 0.0
        self.started_order = []

    def chain(self, r, memo=None):
        memo = {} if memo is None else memo
        if id(r) not in memo:
            deps = [self.chain(d, memo) for d in r.dependents if d.status == "pending"]
            if r.est is None or any(d is None for d in deps):
                memo[id(r)] = None
            else:
                memo[id(r)] = r.est + max(deps, default=0.0)
        return memo[id(r)]

    def priority(self, r, memo):
        c = self.chain(r, memo)
        return (-(c if c is not None else 0.0), -r.params, STAGE_ORDER[r.stage], r.index)

    def free_gpu(self, r):
        if r.exclusive:
            free = [g for g in range(len(self.gpus)) if not self.on_gpu[g]]
        else:
            free = [g for g in range(len(self.gpus))
                    if len(self.on_gpu[g]) < self.k and not any(x.exclusive for x in self.on_gpu[g])]
        return min(free, key=lambda g: (len(self.on_gpu[g]), g)) if free else None

    def threads_for(self, r):
        share = len(self.gpus) * (1 if r.exclusive else self.k)
        return max(1, self.cpus // share)

    def account(self, now):
        dt = now - self.t_last
        self.t_last = now
        if dt <= 0:
            return
        for rs in self.on_gpu:
            for r in rs:
                r.gpu_s += dt / len(rs)

    def block_dependents(self, r):
        for d in r.dependents:
            if d.status == "pending":
                d.status = "blocked"
                d.reason = "its pretraining ended %s" % r.status
                d.driver.say("  %-32s blocked: its pretraining (%s) is not finished (%s)" % (
                    d.label, r.out_dir, r.status))
                self.block_dependents(d)

    def launch_ready(self, now):
        elapsed = now - self.t0
        if self.deadline_s is not None and elapsed >= self.deadline_s:
            return
        memo = {}
        pending = [r for r in self.runs if r.status == "pending"]
        ready = [r for r in pending if r.pretrain is None or r.pretrain.status in ("done", "skipped")]
        ready.sort(key=lambda r: self.priority(r, memo))
        draining = False
        for r in ready:
            c = self.chain(r, memo)
            if self.deadline_s is not None and c is not None and elapsed + c * self.correction > self.deadline_s:
                r.reason = "its estimate (%.0f s%s) would end after the deadline" % (
                    c, " with what depends on it" if c != r.est else "")
                continue
            if draining and not r.exclusive:
                continue
            g = self.free_gpu(r)
            if g is None:
                if r.exclusive and self.k > 1:
                    draining = True
                continue
            r.status, r.gpu, r.gpu_id, r.t_start, r.reason = "running", g, self.gpus[g], now, ""
            self.on_gpu[g].append(r)
            self.started_order.append(r)
            self.ex.start(r, self.gpus[g], self.threads_for(r))

    def finish(self, r, now):
        self.on_gpu[r.gpu].remove(r)
        r.t_end = now
        if r.status == "done" and r.est and r.exclusive:
            self.est_done += r.est
            self.wall_done += now - r.t_start
            if self.est_done >= 20:
                self.correction = min(3.0, max(0.75, self.wall_done / self.est_done))
        if r.stage == "pretrain" and r.status != "done":
            self.block_dependents(r)

    def run(self):
        """Runs the plan; returns once nothing runs and nothing more can start."""
        self.t_last = self.ex.now()
        self.t0 = self.started_at if self.started_at is not None else self.t_last
        for r in self.runs:  # a pretraining already finished or left out: its dependents as they are
            if r.status not in ("pending", "skipped") and r.stage == "pretrain":
                self.block_dependents(r)
        stopping = False
        try:
            while True:
                now = self.ex.now()
                self.account(now)
                if not stopping:
                    self.launch_ready(now)
                running = [r for rs in self.on_gpu for r in rs]
                if not running:
                    break
                timeout = None
                if self.hard_stop_s is not None and not stopping:
                    timeout = max(0.0, self.t0 + self.hard_stop_s - now)
                done = self.ex.wait(timeout)
                now = self.ex.now()
                self.account(now)
                for r in done:
                    self.finish(r, now)
                if not stopping and self.hard_stop_s is not None and now - self.t0 >= self.hard_stop_s:
                    stopping = True
                    for r in [r for rs in self.on_gpu for r in rs]:
                        self.say("  %-32s still running at the hard stop (%.1f min): stopping it" % (
                            r.label, self.hard_stop_s / 60))
                        self.ex.terminate(r, "deadline")
        except KeyboardInterrupt:
            for r in [r for rs in self.on_gpu for r in rs]:
                self.ex.terminate(r, "interrupted")
            self.ex.drain()
            raise
        for r in self.runs:
            if r.status == "pending":
                r.status = "not started"
                if not r.reason:
                    r.reason = "the deadline passed" if self.deadline_s is not None else "not reached"
        return self.ex.now() - self.t0


class RealExecutor:
    """Runs each run's gpsdrec invocations in a thread of its own (they are subprocesses)."""

    def __init__(self):
        self.done = queue.Queue()
        self.threads = []

    def now(self):
        return time.monotonic()

    def start(self, run, gpu, threads):
        def work():
            try:
                run.driver.execute(run, gpu, threads)
            except Exception as e:  # noqa: BLE001  (a bug in one run must not hang the sweep)
                run.status = "failed"
                run.driver.say("  %-32s FAILED in the sweep driver: %r" % (run.label, e))
            finally:
                self.done.put(run)

        t = threading.Thread(target=work, daemon=True)
        self.threads.append(t)
        t.start()

    def wait(self, timeout):
        try:
            first = self.done.get(timeout=timeout) if timeout is None or timeout > 0 else self.done.get_nowait()
        except queue.Empty:
            return []
        out = [first]
        while True:
            try:
                out.append(self.done.get_nowait())
            except queue.Empty:
                return out

    def terminate(self, run, reason):
        with run.lock:
            run.cancelled = reason
            proc = run.proc
        if proc:
            threading.Thread(target=proc[1], args=(reason,), daemon=True).start()

    def drain(self):
        for t in self.threads:
            t.join(60)


class SimExecutor:
    """Replays runs on a simulated clock: each takes run.sim_s seconds (default its estimate) and
    ends with run.sim_status (default done)."""

    def __init__(self):
        self.clock = 0.0
        self.events = []
        self.seq = 0
        self.log = []  # (start, end, gpu, run)

    def now(self):
        return self.clock

    def start(self, run, gpu, threads):
        dur = getattr(run, "sim_s", None)
        dur = dur if dur is not None else (run.est or 0.0)
        self.seq += 1
        heapq.heappush(self.events, (self.clock + dur, self.seq, run))
        run.sim_gpu, run.sim_threads = gpu, threads

    def wait(self, timeout):
        if not self.events:
            return []
        t = self.events[0][0]
        if timeout is not None and t > self.clock + timeout:
            self.clock += timeout
            return []
        self.clock = max(self.clock, t)
        out = []
        while self.events and self.events[0][0] <= self.clock:
            _, _, run = heapq.heappop(self.events)
            run.status = run.cancelled or getattr(run, "sim_status", None) or "done"
            self.log.append((run.t_start, self.clock, run.sim_gpu, run))
            out.append(run)
        return out

    def terminate(self, run, reason):
        run.cancelled = reason
        self.events = [e for e in self.events if e[2] is not run]
        heapq.heapify(self.events)
        self.seq += 1
        heapq.heappush(self.events, (self.clock, self.seq, run))

    def drain(self):
        pass


def record_gpu_time(runs):
    """Adds this invocation's GPU-seconds and GPU ids to every run's sweep_run.json."""
    for r in runs:
        if r.t_start is None:
            continue
        state = read_json(r.state_path())
        if state is None:
            continue
        state["gpu_s"] = state.get("gpu_s", 0.0) + r.gpu_s
        ids = state.get("gpu_ids") or []
        gid = r.gpu_id
        if gid is not None and gid not in ids:
            ids.append(gid)
        state["gpu_ids"] = ids
        write_atomic(r.state_path(), json.dumps(state, indent=1))


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
    if last.get("kill_reason") == "deadline":
        return "deadline", {}, state
    if last.get("killed"):
        return "timeout", {}, state
    return ("stopped" if last.get("rc") == 0 else "failed"), {}, state


def wall_of(result, state):
    if "wall_s" in state:
        return state["wall_s"]
    return result.get("seconds")


def gpu_hours(wall, state):
    """(GPU hours, backend, GPUs) of a run: the GPU-seconds the scheduler charged it (its wall time
    divided by the runs sharing its GPU at each moment; sweep_run.json's gpu_s), else its wall
    time; 0 on the CPU backend."""
    backend = state.get("backend")
    if wall is None or backend is None:
        return None, backend, None
    gpus = 1 if backend == "cuda" else 0
    gpu_s = state.get("gpu_s")
    return (gpu_s if isinstance(gpu_s, (int, float)) else wall) * gpus / 3600.0, backend, gpus


def num(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


# A finished finetuning whose AUC is 0.5 on the train split as well as on test has learned nothing
# it can rank by: the model gives (nearly) one probability to every sample, as a from-scratch model
# does when a step past the warmup drives its rank head to a constant. Such a point says the run
# failed, not how AUC scales with N, so it stays in the table and the plots, marked, and out of the
# fits. The train split decides: a model that learned anything ranks its own training samples.
COLLAPSE_AUC_TOLERANCE = 0.002


def is_collapsed(test_auc, train_auc):
    return (test_auc is not None and train_auc is not None
            and abs(test_auc - 0.5) < COLLAPSE_AUC_TOLERANCE and abs(train_auc - 0.5) < COLLAPSE_AUC_TOLERANCE)


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
                if st == "done" and is_collapsed(test_auc, train_auc):
                    st = "collapsed"
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
                    "capped": bool(state.get("capped")), "wall_s": wall, "device": backend, "gpus": gpus,
                    "gpu_ids": " ".join(str(g) for g in state.get("gpu_ids") or []) or None, "gpu_hours": gh,
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


def write_table(out, rows, pretrains, command, schedule=None):
    totals = {"runs": len(rows) + len(pretrains),
              "finished": sum(r["status"] in ("done", "collapsed") for r in rows)
              + sum(p["status"] == "done" for p in pretrains),
              "collapsed": sum(r["status"] == "collapsed" for r in rows)}
    walls = [r["wall_s"] for r in rows + pretrains if r["wall_s"] is not None]
    ghs = [r["gpu_hours"] for r in rows + pretrains if r["gpu_hours"] is not None]
    totals["wall_s"] = sum(walls)
    totals["gpu_hours"] = sum(ghs)
    doc = {"generated": now_iso(), "command": command, "rows": rows, "pretrain": pretrains, "totals": totals,
           "columns": CSV_COLUMNS}
    old = read_json(os.path.join(out, "sweep.json")) or {}
    doc["schedules"] = (old.get("schedules") or []) + ([schedule] if schedule else [])
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
    print("\n%-12s %11s %-6s %4s %8s %8s %8s %7s %8s %8s  %s" % (
        "size", "N", "strat", "seed", "test AUC", "logloss", "gap", "steps", "wall s", "GPU h", "status"))
    for r in rows:
        print("%-12s %11d %-6s %4d %8s %8s %8s %7s %8s %8s  %s%s" % (
            r["size"], r["params_N"], r["strategy"], r["seed"], fmt(r["test_auc"], "%.4f"),
            fmt(r["test_logloss"], "%.4f"), fmt(r["train_test_gap"], "%.4f"), fmt(r["steps"], "%d"),
            fmt(r["wall_s"], "%.1f"), fmt(r["gpu_hours"], "%.4f"), r["status"], " (capped)" if r.get("capped") else ""))
    print("total: %d runs (%d finished), %.1f s wall, %.4f GPU hours" % (
        totals["runs"], totals["finished"], totals["wall_s"], totals["gpu_hours"]))


# ---------------------------------------------------------------- self-test of the scheduler

class _FakeDriver:
    """Just enough of a Driver for Run labels and messages in the self-test."""

    def __init__(self, name="t"):
        self.name, self.multi, self.lines = name, False, []

    def say(self, text):
        self.lines.append(text)


def _sim_plan(spec, driver=None):
    """Runs from (size, est_pretrain or None, est_nt, est_stsf) tuples; pretrain + NT + ST&SF each."""
    driver = driver or _FakeDriver()
    runs = []
    for size, ep, en, es in spec:
        sz = parse_size(size)
        pre = None
        if ep is not None:
            pre = Run(driver, sz, 1, "pretrain", None, "/nonexistent/%s/pretrain" % size, len(runs))
            pre.est = ep
            runs.append(pre)
        for key, e in (("nt", en), ("stsf", es)):
            if e is None:
                continue
            r = Run(driver, sz, 1, "finetune", key, "/nonexistent/%s/%s" % (size, key), len(runs))
            r.est = e
            if key == "stsf":
                r.pretrain = pre
                pre.dependents.append(r)
            runs.append(r)
    return runs


def _simulate(runs, gpus, k=1, deadline=None, hard=None, share_below=1e7, cpus=8):
    ex = SimExecutor()
    sched = Scheduler(runs, gpus, ex, k, share_below, deadline, hard, cpus=cpus, say=lambda t: None)
    end = sched.run()
    return sched, ex, end


def self_test():
    """Checks the scheduler on simulated runs; returns a list of failures (empty when it passes)."""
    fails = []

    def check(cond, what):
        if not cond:
            fails.append(what)

    paper = [("L1H32A4", 7, 4, 4), ("L4H64A4", 8, 5, 5), ("L4H256A4", 13, 8, 8), ("L8H512A8", 27, 23, 23),
             ("L12H768A12", 50, 52, 52), ("L24H1024A16", 120, 140, 140)]

    # 1. dependencies, priority, the list-scheduling bound, GPU-seconds
    for gpus, k in (([None], 1), (["0", "1"], 1), (["0", "1", "2", "3"], 1), (["0", "1", "2", "3"], 3)):
        runs = _sim_plan(paper)
        sched, ex, end = _simulate(runs, gpus, k)
        tag = "%d GPU(s) x %d" % (len(gpus), k)
        check(all(r.status == "done" for r in runs), "%s: every run done" % tag)
        for r in runs:
            if r.pretrain is not None:
                check(r.t_start >= r.pretrain.t_end - 1e-9, "%s: %s starts before its pretraining ends" % (tag, r.label))
        first = sched.started_order[0]
        check(first.size["name"] == "L24H1024A16" and first.stage == "pretrain",
              "%s: the longest chain (L24H1024A16 pretraining + ST&SF) starts first, not %s" % (tag, first.label))
        work = sum(r.est for r in runs)
        longest = max(sched.chain(r) for r in runs if r.stage == "pretrain")
        check(end <= work / len(gpus) + longest + 1e-6 and end >= longest - 1e-6,
              "%s: %.1f s outside [%.1f, %.1f]" % (tag, end, longest, work / len(gpus) + longest))
        # GPU-seconds: the runs' shares add up to the time each GPU was busy
        for g in gpus:
            spans = sorted((t0, t1) for t0, t1, gg, _ in ex.log if gg == g)
            busy, cur0, cur1 = 0.0, None, None
            for t0, t1 in spans:
                if cur1 is None or t0 > cur1:
                    busy += (cur1 - cur0) if cur1 is not None else 0.0
                    cur0, cur1 = t0, t1
                else:
                    cur1 = max(cur1, t1)
            busy += (cur1 - cur0) if cur1 is not None else 0.0
            charged = sum(r.gpu_s for _, _, gg, r in ex.log if gg == g)
            check(abs(busy - charged) < 1e-6, "%s GPU %s: busy %.3f s, charged %.3f s" % (tag, g, busy, charged))
        if k == 1:
            check(all(abs(r.gpu_s - r.est) < 1e-6 for r in runs), "%s: a run alone on its GPU is charged its wall" % tag)

    # 2. slots: small runs share a GPU up to k at a time, large ones never share
    runs = _sim_plan(paper)
    sched, ex, end = _simulate(runs, ["0", "1"], 3)
    for g in ("0", "1"):
        ev = [(t0, t1, r) for t0, t1, gg, r in ex.log if gg == g]
        for t0, t1, r in ev:
            mid = [x for a, b, x in ev if a <= t0 < b]
            if r.exclusive:
                check(len(mid) == 1, "GPU %s: %s shares its GPU with %d runs" % (g, r.label, len(mid) - 1))
            else:
                check(len(mid) <= 3 and not any(x.exclusive for x in mid), "GPU %s: %d runs at %.1f s" % (g, len(mid), t0))
    small = [r for r in runs if not r.exclusive]
    check(len(small) == 9 and all(r.params < 1e7 for r in small), "L4H256A4 and smaller share, the rest do not")
    check(any(r.sim_threads == 8 // 2 for r in runs if r.exclusive) and all(
        r.sim_threads == max(1, 8 // 6) for r in small), "threads: CPUs over the GPUs, and over the slots when shared")

    # a large run waiting for a whole GPU: no new small run is placed meanwhile, so it gets the
    # first GPU that empties (GPU 0 holds X to 100 s; E would otherwise wait for 20 small runs)
    runs = _sim_plan([("L24H1024A16", None, 100, None), ("L4H256A4", None, 30, None), ("L8H512A8", None, 20, None)]
                     + [("L1H%dA4" % (8 * (i + 1)), None, 7, None) for i in range(20)])
    sched, ex, end = _simulate(runs, ["0", "1"], 3)
    e = runs[2]
    check(e.exclusive and e.t_start == 30, "draining: %s started at %s s, expected 30" % (e.label, e.t_start))

    # 3. skip finished: skipped runs never start; a finished pretraining's finetunings start at once
    runs = _sim_plan(paper)
    for r in runs:
        if r.size["name"] in ("L24H1024A16", "L1H32A4") and r.stage == "pretrain":
            r.status = "skipped"
    sched, ex, end = _simulate(runs, ["0", "1"], 1)
    check(all(r.t_start is None for r in runs if r.status == "skipped"), "skipped runs are not started")
    l24 = [r for r in runs if r.size["name"] == "L24H1024A16" and r.stage == "finetune"]
    check(all(r.status == "done" and r.t_start == 0 for r in l24), "a finished pretraining's finetunings start at 0")

    # 4. deadline: nothing starts after it, nor anything its estimate says would end after it
    runs = _sim_plan(paper)
    sched, ex, end = _simulate(runs, ["0", "1"], 1, deadline=200.0)
    started = [r for r in runs if r.t_start is not None]
    check(all(r.t_start <= 200 and r.t_end <= 200 + 1e-6 for r in started), "deadline: a run ends after 200 s")
    left = [r for r in runs if r.status == "not started"]
    check(left and all(r.reason for r in left), "deadline: runs left, each with a reason")
    check(all(r.status in ("done", "not started") for r in runs), "deadline: runs are done or not started")
    # the estimates scaled by how the finished runs compared with theirs: A takes twice its estimate,
    # B fits even at twice its own, C would fit by its estimate but not at twice it
    runs = _sim_plan([("L4H32A4", None, 30, None), ("L4H64A4", None, 15, None), ("L4H128A4", None, 8, None)])
    runs[0].sim_s, runs[1].sim_s = 60, 30
    sched, ex, end = _simulate(runs, [None], 1, deadline=100.0)
    check([r.status for r in runs] == ["done", "done", "not started"],
          "correction: statuses %s, expected done, done, not started" % [r.status for r in runs])
    check(abs(sched.correction - 2.0) < 1e-9, "correction %.3f, expected 2" % sched.correction)

    # without estimates: nothing starts after the deadline
    runs = _sim_plan([("L4H%dA4" % (32 * (i + 1)), None, 1, None) for i in range(3)])
    for r in runs:
        r.est, r.sim_s = None, 50
    sched, ex, end = _simulate(runs, [None], 1, deadline=60.0)
    check([r.status for r in runs] == ["not started", "done", "done"] and runs[1].t_start == 50,
          "deadline without estimates: %s" % [(r.status, r.t_start) for r in runs])

    # 5. hard stop: runs still going are stopped ("deadline"), their finetunings blocked
    runs = _sim_plan(paper)
    sched, ex, end = _simulate(runs, ["0", "1"], 1, hard=100.0)
    pre24 = [r for r in runs if r.size["name"] == "L24H1024A16" and r.stage == "pretrain"][0]
    check(pre24.status == "deadline", "hard stop: the L24H1024A16 pretraining is %s" % pre24.status)
    check(pre24.dependents[0].status == "blocked", "hard stop: its ST&SF is %s" % pre24.dependents[0].status)
    check(abs(end - 100.0) < 1e-9, "hard stop: the sweep ends at %.1f s" % end)
    check(all(r.t_start is None or r.t_start <= 100 for r in runs), "hard stop: nothing starts after it")

    # 6. a failed pretraining blocks its finetunings, NT goes on
    runs = _sim_plan(paper)
    bad = [r for r in runs if r.size["name"] == "L8H512A8" and r.stage == "pretrain"][0]
    bad.sim_status = "failed"
    sched, ex, end = _simulate(runs, ["0", "1"], 1)
    nt8 = [r for r in runs if r.size["name"] == "L8H512A8" and r.strategy == "nt"][0]
    check(bad.dependents[0].status == "blocked" and nt8.status == "done",
          "failed pretraining: ST&SF %s, NT %s" % (bad.dependents[0].status, nt8.status))
    check(sum(r.status == "done" for r in runs) == len(runs) - 2, "failed pretraining: the others are done")

    # 7. GPU detection
    check(detect_gpus(env={"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"], "CUDA_VISIBLE_DEVICES=2,3")
    check(detect_gpus(env={"CUDA_VISIBLE_DEVICES": "-1"}) == [None], "CUDA_VISIBLE_DEVICES=-1")
    check(detect_gpus(env={}, smi="/nonexistent/nvidia-smi") == [None], "no nvidia-smi")
    check(detect_gpus("cpu", env={"CUDA_VISIBLE_DEVICES": "0,1"}) == [None], "device cpu")
    return fails


# ---------------------------------------------------------------- main

GLOBAL_OPTIONS = ["gpus", "jobs_per_gpu", "share_below", "deadline_min", "hard_stop_min", "dry_run", "simulate",
                  "report_only", "no_plots", "verbose"]
GLOBAL_DEFAULTS = {"jobs_per_gpu": 1, "share_below": 1e7, "dry_run": False, "simulate": False,
                   "report_only": False, "no_plots": False, "verbose": False}


def split_extra(argv):
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def split_groups(argv):
    groups, cur = [], []
    for a in argv:
        if a == "--and":
            groups.append(cur)
            cur = []
        else:
            cur.append(a)
    groups.append(cur)
    return groups


def make_parser():
    p = argparse.ArgumentParser(prog="tools/sweep.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Everything after `--` is passed to every gpsdrec run (and to gpsdrec synth) of "
                                "that sweep. `--and` starts another sweep (its own --data, --out, budget, sizes ...) "
                                "scheduled over the same GPUs; the scheduling options (--gpus, --jobs-per-gpu, "
                                "--share-below, --deadline-min, --hard-stop-min) and --dry-run, --simulate, "
                                "--report-only, --no-plots, --verbose go before the first --and.")
    p.add_argument("--data", help="dataset file (gpsdrec prep/synth output), or `synth` to generate "
                   "one into DIR/data/synth.gpsd with the budget's synth.* settings")
    p.add_argument("--out", required=True, help="sweep directory (runs, table, fits, plots)")
    p.add_argument("--sizes", default=",".join(PAPER_SIZES), help="comma-separated LxHyAz sizes "
                   "(default: the paper's eight)")
    p.add_argument("--strategies", default="nt,stsf", help="comma-separated: nt ft st ftsf stsf (default nt,stsf)")
    p.add_argument("--seeds", default="1", help="comma-separated seeds (default 1)")
    p.add_argument("--budget", help="budget file (configs/sweep/*.conf): gpsdrec settings, time caps and "
                   "estimates, per size where prefixed with SIZE.")
    p.add_argument("--config", action="append", help="gpsdrec config file for every run (repeatable)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--budget-steps", type=int, help="optimizer steps per run (both stages), overriding the budget")
    g.add_argument("--budget-epochs", type=int, help="epochs per run (both stages), overriding the budget")
    p.add_argument("--time-cap", type=float, help="wall-clock cap per run in seconds (0 = none), overriding the budget")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="gpsdrec device for every run")
    p.add_argument("--bin", default=None, help="gpsdrec binary (default ./gpsdrec, else the repository's)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep the resumable checkpoints of finished "
                   "runs (by default only their final model.safetensors stays)")
    s = p.add_argument_group("scheduling (for every sweep of the invocation; before the first --and)")
    s.add_argument("--gpus", help="comma-separated GPU ids to spread the runs over, one run per GPU at a time "
                   "(each run sees only its own through CUDA_VISIBLE_DEVICES); default: CUDA_VISIBLE_DEVICES, "
                   "else every GPU nvidia-smi lists, else none (one run at a time)")
    s.add_argument("--jobs-per-gpu", type=int, help="runs of small models (below --share-below parameters) that "
                   "may share one GPU (default 1)")
    s.add_argument("--share-below", type=float, help="block parameters below which a model may share a GPU "
                   "(default 1e7: L4H256A4 and smaller)")
    s.add_argument("--deadline-min", type=float, help="start no run after this many minutes, nor one whose "
                   "estimate says it would end later; what is left waits for the next invocation")
    s.add_argument("--hard-stop-min", type=float, help="stop the runs still going after this many minutes "
                   "(resumable from their last checkpoint)")
    s.add_argument("--dry-run", action="store_true", default=None, help="print what would run, run nothing")
    s.add_argument("--simulate", action="store_true", default=None, help="print the schedule the budget's "
                   "estimates predict on these GPUs, run nothing")
    s.add_argument("--report-only", action="store_true", default=None, help="only gather the table, fits and plots")
    s.add_argument("--no-plots", action="store_true", default=None, help="skip the plots")
    s.add_argument("--verbose", action="store_true", default=None, help="echo every line gpsdrec prints")
    return p


def parse_invocation(argv):
    """(opts, [(args, extra)]): the scheduling options and one (args, extra) per sweep."""
    p = make_parser()
    groups = []
    opts = argparse.Namespace(**GLOBAL_DEFAULTS)
    for gi, part in enumerate(split_groups(argv)):
        part, extra = split_extra(part)
        args = p.parse_args(part)
        for key in GLOBAL_OPTIONS:
            v = getattr(args, key)
            if gi == 0:
                setattr(opts, key, v if v is not None else GLOBAL_DEFAULTS.get(key))
            elif v is not None:
                p.error("--%s is an option of the whole invocation: give it before the first --and" %
                        key.replace("_", "-"))
        if args.budget_steps is not None and args.budget_steps < 1:
            p.error("--budget-steps must be at least 1")
        if args.budget_epochs is not None and args.budget_epochs < 1:
            p.error("--budget-epochs must be at least 1")
        if args.time_cap is not None and (args.time_cap < 0 or not math.isfinite(args.time_cap)):
            p.error("--time-cap must be a number of seconds >= 0")
        if args.bin is None:
            args.bin = "./gpsdrec" if os.path.exists("./gpsdrec") else os.path.join(ROOT, "gpsdrec")
        groups.append((args, extra))
    if any(a.data is None for a, _ in groups) and not opts.report_only:
        p.error("--data is required (except with --report-only)")
    if opts.jobs_per_gpu < 1:
        p.error("--jobs-per-gpu must be at least 1")
    for key in ("deadline_min", "hard_stop_min"):
        v = getattr(opts, key)
        if v is not None and (v < 0 or not math.isfinite(v)):
            p.error("--%s must be a number of minutes >= 0" % key.replace("_", "-"))
    if opts.deadline_min is not None and opts.hard_stop_min is not None and opts.hard_stop_min < opts.deadline_min:
        p.error("--hard-stop-min must not be earlier than --deadline-min")
    if opts.gpus is not None:
        ids = [g.strip() for g in opts.gpus.split(",")]
        if not ids or any(not g for g in ids) or len(set(ids)) != len(ids):
            p.error("--gpus takes distinct comma-separated ids, e.g. 0,1,2,3")
        opts.gpus = ids
    outs = [os.path.realpath(a.out) for a, _ in groups]
    if len(set(outs)) != len(outs):
        p.error("every sweep of one invocation needs its own --out")
    return opts, groups


def parse_lists(args):
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
    return sizes, strategies, seeds


def print_simulation(sched, ex, gpus):
    print("\nsimulated schedule (the budgets' estimates; a run sharing a GPU is assumed as fast as alone):")
    print("%8s %8s  %-5s %-44s %s" % ("start s", "end s", "gpu", "run", "estimate s"))
    for t0, t1, gpu, r in sorted(ex.log, key=lambda e: (e[0], e[1])):
        print("%8.1f %8.1f  %-5s %-44s %s" % (t0 - sched.t0, t1 - sched.t0, gpu if gpu is not None else "-", r.label,
                                             "%.1f" % r.est if r.est is not None else "none"))
    busy = sum(t1 - t0 for t0, t1, _, r in ex.log if r.exclusive) + sum(
        (t1 - t0) / sched.k for t0, t1, _, r in ex.log if not r.exclusive)
    end = max((t1 for _, t1, _, _ in ex.log), default=sched.t0) - sched.t0
    print("simulated: %d runs end after %.0f s (%.1f min) on %d GPU(s); GPU busy %.0f s (%.0f%%); "
          "%.0f GPU-seconds of estimates in all" % (
              len(ex.log), end, end / 60, len(gpus), busy, 100 * busy / max(end * len(gpus), 1e-9),
              sum(r.est or 0 for _, _, _, r in ex.log)))
    left = [r for r in sched.runs if r.status in ("not started", "blocked")]
    for r in left:
        print("  %-32s %s: %s" % (r.label, r.status, r.reason))
    missing = [r for _, _, _, r in ex.log if r.est is None]
    if missing:
        print("  (%d runs have no estimate in their budget: simulated as taking no time)" % len(missing))


def main(argv):
    if argv == ["--self-test"]:
        fails = self_test()
        for f in fails:
            print("FAIL: %s" % f)
        print("scheduler self-test %s" % ("passed" if not fails else "failed (%d)" % len(fails)))
        return 1 if fails else 0
    t_start = time.monotonic()  # the deadlines count from here (generating data included)
    opts, groups = parse_invocation(argv)
    drivers = []
    try:
        for args, extra in groups:
            sizes, strategies, seeds = parse_lists(args)
            budget = parse_budget(args.budget) if args.budget else None
            if not opts.report_only and not os.path.exists(args.bin):
                raise SweepError("gpsdrec binary %s not found (run make, or pass --bin)" % args.bin)
            drivers.append(Driver(args, budget, sizes, strategies, seeds, extra, opts))
    except SweepError as e:
        print("sweep: error: %s" % e, file=sys.stderr)
        return 2
    for d in drivers:
        d.multi = len(drivers) > 1

    locks = []
    for d in drivers:
        os.makedirs(d.args.out, exist_ok=True)
        lock = open(os.path.join(d.args.out, ".sweep.lock"), "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print("sweep: error: another tools/sweep.py is working in %s" % d.args.out, file=sys.stderr)
            return 2
        locks.append(lock)
    command = " ".join(["tools/sweep.py"] + argv)
    schedule = None
    if not opts.report_only:
        executing = not opts.dry_run and not opts.simulate
        try:
            runs = []
            for d in drivers:
                plan = build_plan(d)
                print("sweep%s: %d sizes x %d seeds: %d runs into %s" % (
                    " " + d.name if d.multi else "", len(d.sizes), len(d.seeds), len(plan),
                    os.path.join(d.args.out, "runs")))
                if opts.dry_run and d.budget:
                    print("budget %s, the driver's keys:" % d.args.budget)
                    for k, v, origin in d.budget["global"]:
                        print("  %s = %s" % (k, v))
                    for size_name, pairs in d.budget["sizes"].items():
                        print("  %s: %s" % (size_name, ", ".join("%s = %s" % (k, v) for k, v, _ in pairs)))
                    for (size_name, strat), pairs in d.budget["strategies"].items():
                        print("  %s%s: %s" % (size_name + " " if size_name else "", STRATEGIES[strat][0],
                                              ", ".join("%s = %s" % (k, v) for k, v, _ in pairs)))
                if executing:
                    with open(os.path.join(d.args.out, "sweep_commands.log"), "a") as f:
                        f.write("%s %s\n" % (now_iso(), command))
                    for r in plan:  # every planned run has its directory: the table lists what is not started
                        os.makedirs(r.out_dir, exist_ok=True)
                d.review(plan)
                if any(r.status == "pending" for r in plan):  # nothing to train: no dataset needed
                    d.prepare_data()
                runs += plan
            devices = {d.args.device for d in drivers}
            gpus = opts.gpus or detect_gpus("cpu" if devices == {"cpu"} else None)
            if opts.dry_run:
                sched = Scheduler(runs, gpus, None, opts.jobs_per_gpu, opts.share_below)
                memo = {}
                for r in sorted([r for r in runs if r.status == "pending"], key=lambda r: sched.priority(r, memo)):
                    cmd, pairs = r.driver.command(r)
                    cap = r.driver.time_cap(pairs, r.stage)
                    print("  %-32s would run%s:\n    %s" % (r.label, " (time cap %gs)" % cap if cap else "",
                                                            " ".join(cmd)))
                return 0
            ex = SimExecutor() if opts.simulate else RealExecutor()
            sched = Scheduler(runs, gpus, ex, opts.jobs_per_gpu, opts.share_below,
                              None if opts.deadline_min is None else 60 * opts.deadline_min,
                              None if opts.hard_stop_min is None else 60 * opts.hard_stop_min,
                              say=print_locked, started_at=None if opts.simulate else t_start)
            n_pending = sum(r.status == "pending" for r in runs)
            print("schedule: %d runs to train on %s%s%s%s" % (
                n_pending, "GPUs " + ",".join(gpus) if gpus != [None] else "one slot (no GPU pinning)",
                ", up to %d runs of models below %.3g parameters a GPU" % (opts.jobs_per_gpu, opts.share_below)
                if opts.jobs_per_gpu > 1 else "",
                ", no start after %.1f min" % opts.deadline_min if opts.deadline_min is not None else "",
                ", hard stop at %.1f min" % opts.hard_stop_min if opts.hard_stop_min is not None else ""), flush=True)
            elapsed = sched.run()
            if opts.simulate:
                print_simulation(sched, ex, gpus)
                return 0
            record_gpu_time(runs)
            schedule = {"gpus": gpus, "jobs_per_gpu": opts.jobs_per_gpu, "share_below": opts.share_below,
                        "deadline_min": opts.deadline_min, "hard_stop_min": opts.hard_stop_min,
                        "elapsed_s": round(elapsed, 1), "finished": now_iso()}
        except SweepError as e:
            print("sweep: error: %s" % e, file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("\nsweep: interrupted; rerun the same command to continue", file=sys.stderr)
            return 130
        for d in drivers:
            mine = [r for r in runs if r.driver is d]
            d.failures = sum(r.status == "failed" for r in mine)
            d.unfinished = sum(r.status in ("stopped", "timeout", "deadline", "blocked", "not started") for r in mine)
            print("sweep%s: %d runs trained to the end now, %d skipped (finished before), %d unfinished, %d failed" % (
                " " + d.name if d.multi else "", sum(r.status == "done" for r in mine),
                sum(r.status == "skipped" for r in mine), d.unfinished, d.failures))
            for r in mine:
                if r.status == "not started":
                    print("  %-32s not started: %s" % (r.label, r.reason))
        print("schedule: %.1f s wall (%.2f min)" % (elapsed, elapsed / 60))

    for d in drivers:
        report(d, opts, command, schedule)
    if any(getattr(d, "failures", 0) for d in drivers):
        return 1
    return 3 if any(getattr(d, "unfinished", 0) for d in drivers) else 0


def report(d, opts, command, schedule):
    out = d.args.out
    if d.multi:
        print("\n==== %s" % out)
    rows, pretrains = gather(out, d.args.bin)
    totals = write_table(out, rows, pretrains, command, schedule)
    print_table(rows, totals)
    for r in rows:
        if r["status"] == "collapsed":
            print("collapsed: %s seed %d %s: AUC %.4f on test and %.4f on train, logloss %.4f: the model gives one "
                  "probability to every sample; kept in the table and plots, left out of the fits" % (
                      r["size"], r["seed"], r["strategy"], r["test_auc"], r["train_auc"],
                      r["test_logloss"] if r["test_logloss"] is not None else float("nan")))
    print("table: %s, %s" % (os.path.join(out, "sweep.csv"), os.path.join(out, "sweep.json")))

    fits = sweep_fit.fit_table(rows)
    md = sweep_fit.markdown(fits)
    write_atomic(os.path.join(out, "fits.json"), json.dumps({"fits": fits, "paper": sweep_fit.PAPER}, indent=1))
    write_atomic(os.path.join(out, "fits.md"), md)
    print("\nfits (N = dense parameters of the transformer blocks; ± one standard error):\n")
    sys.stdout.write(md)

    if not opts.no_plots:
        try:
            paths = sweep_plot.plot(rows, fits, os.path.join(out, "plots"))
            print("plots: %s" % ", ".join(paths))
        except sweep_plot.MatplotlibMissing as e:
            print("plots: skipped (%s); draw them later with python3 tools/sweep_plot.py %s" % (e, out))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
