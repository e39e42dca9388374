#!/usr/bin/env python3
"""Times training steps of our PyTorch model of GPSD (tools/torch_reference.py) on synthetic
full-length batches, as benchmarks/bench_step.c does for gpsdrec: forward + backward + gradient
clipping + AdamW (torch.optim.AdamW, fused), in three modes: eager fp32, eager bf16 autocast, and
bf16 autocast under torch.compile. One JSON line per configuration and mode to --json.

  tools/torch_bench.py --configs benchmarks/step_configs.txt --json OUT [--only L4H64A4]
      [--modes fp32,bf16,compile] [--budget-s 300] [--compile-timeout-s 150]
  tools/torch_bench.py --label L --stage pretrain|finetune --dim D --layers L --heads H --seq S
      --batch B [--items N] [--negatives K] [--freeze] [--json OUT] [--modes ...]

Batches: random item and category ids (1 .. vocabulary-1), every sequence full length,
pretraining labels the next position's ids, finetuning random clicks, negatives uniform over
the item table: the shapes and distributions of bench_step's batches (not the same draws). Four
batches rotate. A frozen item table (freeze) has requires_grad off and no optimizer state, as
gpsdrec's.

Timing: warm-up steps (which include torch.compile's compilation, reported as compile_s), then
CUDA events around each timed step, the median reported; the number of timed steps is sized
from the last warm-up step to take about --step-budget-s (between --min-steps and --steps), so
the big model gets fewer. Peak memory: torch.cuda.max_memory_allocated over the timed steps
(reset after the warm-up, so compilation's transient memory is left out; parameters, gradients
and optimizer state are still counted); max_memory_reserved is recorded too.

Time bound: the eager modes of every configuration run first, in this process, one after the
other. Then torch.compile: each configuration in a child process of its own, up to --parallel
compiling at once (compilation is host work; its first steps run on the GPU alongside, which
is why the record says "compiled_alongside"); a child not compiled within --compile-timeout-s,
or by the end of --budget-s (the whole run, from the start of this process, less a reserve
for the timed steps), is killed with its compile workers. Once every compilation has finished
or been stopped, the compiled children are timed one at a time with nothing else running. A
mode that fails (a compile error, out of memory, a timeout) is recorded with "error": the
error's first line; one skipped for the time budget with "skipped". "loss_first_step" is the
loss of the first warm-up step (same parameters and batch in every mode): the modes agree on it
to bf16 precision.
"""
import argparse
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402

T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f} s] {msg}", flush=True)


def read_configs(path):
    """The configurations of benchmarks/step_configs.txt, as argparse-like namespaces."""
    out = []
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].split()
            if not line:
                continue
            if len(line) != 10:
                raise SystemExit(f"{path}: expected 10 columns, got {len(line)}: {' '.join(line)}")
            name, stage, layers, dim, heads, seq, batch, items, negs, freeze = line
            out.append(argparse.Namespace(label=f"{name} {stage}", stage=stage, layers=int(layers), dim=int(dim),
                                          heads=int(heads), seq=int(seq), batch=int(batch), items=int(items),
                                          negatives=int(negs), freeze=freeze == "true", cates=1000))
    return out


def make_config(a):
    pre = a.stage == "pretrain"
    meta = {
        "dim": str(a.dim), "n_layers": str(a.layers), "n_heads": str(a.heads), "embedding_dim": str(a.dim),
        "causal": "True", "item_vocab_size": str(a.items), "cate_vocab_size": str(a.cates),
        "max_history": str(a.seq), "n_samples": str(a.negatives if pre else 0), "temperature": "0.05",
        "l2_norm": "True", "norm_eps": "1e-05", "multiple_of": "32", "rope_theta": "10000.0",
        "item_ar_loss_weight": "1.0" if pre else "0.0",
        "cate_ar_loss_weight": "1.0" if pre else "0.0",
        "rank_loss_weight": "0.0" if pre else "1.0",
    }
    return ref.Config(meta, "torch_bench")


def make_batch(c, a, dev, step):
    g = torch.Generator(device="cpu").manual_seed(1000 + step)
    B, S = a.batch, a.seq
    items = torch.randint(1, c.n_items, (B, S), generator=g)
    cates = torch.randint(1, c.n_cates, (B, S), generator=g)
    target_item = torch.randint(1, c.n_items, (B,), generator=g)
    target_cate = torch.randint(1, c.n_cates, (B,), generator=g)
    pre = a.stage == "pretrain"
    item_labels = torch.cat([items[:, 1:], target_item[:, None]], 1) if pre else torch.full((B, S), ref.IGNORE)
    cate_labels = torch.cat([cates[:, 1:], target_cate[:, None]], 1) if pre else torch.full((B, S), ref.IGNORE)
    inp = {
        "historical_item_ids": items, "historical_cate_ids": cates,
        "historical_len": torch.full((B,), S, dtype=torch.int64),
        "target_item_id": target_item, "target_cate_id": target_cate,
        "click_label": torch.full((B,), 2) if pre else torch.randint(0, 2, (B,), generator=g),
        "item_ar_labels": item_labels, "cate_ar_labels": cate_labels,
        "negatives": torch.randint(0, c.n_items, (B, max(c.n_samples, 1)), generator=g),
    }
    return {k: v.to(dev) for k, v in inp.items()}


class Timer:
    """CUDA events on a GPU, the host clock elsewhere (the CPU check of this script)."""

    def __init__(self, dev):
        self.cuda = dev.type == "cuda"

    def start(self):
        if self.cuda:
            self.s, self.e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.s.record()
        else:
            self.t = time.perf_counter()

    def stop_ms(self):
        if self.cuda:
            self.e.record()
            torch.cuda.synchronize()
            return self.s.elapsed_time(self.e)
        return (time.perf_counter() - self.t) * 1e3


class Runner:
    """One configuration in one mode: parameters, optimizer and batches built, then warm()
    (compilation included) and timed()."""

    def __init__(self, c, a, mode, dev, opts):
        torch.manual_seed(0)
        self.dev, self.opts, self.mode = dev, opts, mode
        P = {n: (torch.randn(s, device=dev) * 0.02).requires_grad_(True) for n, s in ref.param_shapes(c).items()}
        for n, t in P.items():
            if n.endswith("norm.weight"):
                t.data.fill_(1.0)
            if "bias" in n:
                t.data.zero_()
        if a.freeze:
            P["item_embeddings.weight"].requires_grad_(False)
        self.trained = [t for t in P.values() if t.requires_grad]
        self.opt = torch.optim.AdamW(self.trained, lr=1e-4, betas=(0.9, 0.98), weight_decay=0.1,
                                     fused=dev.type == "cuda")
        self.fwd = torch.compile(ref.forward, dynamic=False) if mode == "compile" else ref.forward
        self.c, self.P = c, P
        self.batches = [make_batch(c, a, dev, i) for i in range(4)]
        self.timer = Timer(dev)
        self.rec = {"warmup": opts.warmup}
        self.i = 0

    def step(self):
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.mode != "fp32"):
            out = self.fwd(self.c, self.P, self.batches[self.i % len(self.batches)], fast=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.trained, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.i += 1
        return out["loss"]

    def warm(self):
        t0 = time.perf_counter()
        self.last_ms = 0.0
        for k in range(self.opts.warmup):
            self.timer.start()
            loss = self.step()
            self.last_ms = self.timer.stop_ms()
            if k == 0:
                # the same parameters and batch in every mode: a check that the modes agree
                self.rec["loss_first_step"] = float(loss.detach())
                self.rec["first_step_s"] = time.perf_counter() - t0
        if self.mode == "compile":
            self.rec["compile_s"] = self.rec.get("first_step_s")
        if self.dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(self):
        opts = self.opts
        n = int(opts.step_budget_s * 1e3 / max(self.last_ms, 1e-3))
        n = max(opts.min_steps, min(opts.steps, n))
        if self.dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(n):
            self.timer.start()
            loss = self.step()
            times.append(self.timer.stop_ms())
        self.rec.update({"ms_per_step": statistics.median(times), "ms_min": min(times), "ms_max": max(times),
                         "steps": n, "loss": float(loss.detach())})
        if self.dev.type == "cuda":
            self.rec["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            self.rec["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        return self.rec


def check_fast_forward(dev):
    """The timed model (forward(fast=True): nn.Embedding, SDPA, ignore_index) against the
    reference formulation, in fp32 on small causal and bidirectional cases: losses and every
    gradient must agree, or the timings would be of a different model."""
    for stage, causal in (("pretrain", True), ("finetune", True), ("finetune", False)):
        a = argparse.Namespace(label="check", stage=stage, layers=2, dim=32, heads=4, seq=12, batch=6,
                               items=300, negatives=16 if stage == "pretrain" else 0, freeze=False, cates=20)
        c = make_config(a)
        c.causal = causal
        inp = make_batch(c, a, dev, 0)
        if not causal:
            inp["historical_len"] = torch.randint(1, a.seq + 1, (a.batch,), device=dev)
        torch.manual_seed(1)
        P = {n: (torch.randn(s, device=dev) * 0.2).requires_grad_(True) for n, s in ref.param_shapes(c).items()}
        got = []
        for fast in (False, True):
            out = ref.forward(c, P, inp, fast=fast)
            grads = torch.autograd.grad(out["loss"], list(P.values()), allow_unused=True)
            got.append((float(out["loss"].detach()), grads))
        (l0, g0), (l1, g1) = got
        if abs(l0 - l1) > 1e-4 * max(1.0, abs(l0)):
            raise SystemExit(f"torch_bench: fast forward differs from the reference ({stage}, causal {causal}): "
                             f"loss {l1} vs {l0}")
        for name, x, y in zip(P, g0, g1):
            if (x is None) != (y is None):
                raise SystemExit(f"torch_bench: fast forward: gradient of {name} missing in one formulation")
            if x is not None and float((x - y).abs().max()) > 1e-4 * max(1e-3, float(x.abs().max())):
                raise SystemExit(f"torch_bench: fast forward differs from the reference ({stage}, causal {causal}): "
                                 f"gradient of {name} max diff {float((x - y).abs().max()):.3g}")
    log("fast forward matches the reference formulation (fp32 losses and gradients, causal and bidirectional)")


def base_record(a, mode, dev):
    rec = {"label": a.label, "impl": "torch " + torch.__version__, "mode": mode, "stage": a.stage, "L": a.layers,
           "H": a.dim, "A": a.heads, "batch": a.batch, "seq": a.seq, "items": a.items, "negatives": a.negatives,
           "freeze_sparse": int(a.freeze), "device": str(dev),
           "timing": "CUDA events per step (forward, backward, clip, fused AdamW), median",
           "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32)}
    if dev.type == "cuda":
        try:
            rec["gpu"] = torch.cuda.get_device_name()
        except Exception as ex:  # no usable GPU: the mode's own run records the failure
            rec["gpu"] = "unavailable: " + first_line(ex)
    return rec


def first_line(ex):
    text = f"{type(ex).__name__}: {ex}".strip()
    return text.splitlines()[0][:300] if text else type(ex).__name__


def write(path, rec):
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")


def release(dev):
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def report(a, mode, rec):
    log(f"{a.label:<24} torch {mode:<8} {rec['ms_per_step']:9.2f} ms/step ({rec['steps']} steps)  "
        f"peak {rec.get('peak_gib', float('nan')):6.2f} GiB  loss {rec['loss']:.4f}")


def bench_in_process(a, mode, dev, opts):
    rec = base_record(a, mode, dev)
    try:
        r = Runner(make_config(a), a, mode, dev, opts)
        r.warm()
        rec.update(r.timed())
        report(a, mode, rec)
        del r
    except Exception as ex:  # a mode that fails is recorded, not fatal
        rec["error"] = first_line(ex)
        log(f"{a.label:<24} torch {mode:<8} fails: {rec['error']}")
    release(dev)
    write(opts.json, rec)


def child_compile(a, dev, opts):
    """A child of compile_all: compile and warm up, say ready, wait for the go, time, record."""
    rec = base_record(a, "compile", dev)
    rec["compiled_alongside"] = opts.parallel
    ready, go = os.path.join(opts.sync_dir, "ready"), os.path.join(opts.sync_dir, "go")
    try:
        r = Runner(make_config(a), a, "compile", dev, opts)
        r.warm()
        release(dev)  # hold only what the model keeps while the others compile
        open(ready, "w").close()
        while not os.path.exists(go):
            time.sleep(0.05)
        rec.update(r.timed())
        report(a, "compile", rec)
    except Exception as ex:
        rec["error"] = first_line(ex)
        log(f"{a.label:<24} torch compile  fails: {rec['error']}")
    write(opts.json, rec)


def compile_all(configs, dev, opts):
    """torch.compile of every configuration, each in a child process so that one that runs long
    can be stopped: up to --parallel children compile at once (compilation is host work), then,
    once every compilation has finished or been stopped, they are timed one at a time with
    nothing else running."""
    import tempfile

    root = tempfile.mkdtemp(prefix="torch_bench_")
    serial_s = 6.0 * len(configs)  # kept back for the timed steps after the compilations
    deadline = T0 + opts.budget_s - serial_s
    pending = list(enumerate(configs))
    running = {}  # index -> (process, started, sync dir)
    ready = []
    errlog = open(opts.compile_log, "a") if opts.compile_log else subprocess.DEVNULL

    def fail(i, a, why):
        rec = base_record(a, "compile", dev)
        rec["error"] = why
        log(f"{a.label:<24} torch compile  fails: {why}")
        write(opts.json, rec)

    def kill(proc):
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the child and its compile workers
        except ProcessLookupError:
            pass
        proc.wait()

    while pending or running:
        while pending and len(running) < opts.parallel:
            i, a = pending.pop(0)
            left = deadline - time.monotonic()
            if left < 30:
                rec = base_record(a, "compile", dev)
                rec["skipped"] = f"time budget ({opts.budget_s:.0f} s for the PyTorch runs) spent"
                log(f"{a.label:<24} torch compile  skipped: {rec['skipped']}")
                write(opts.json, rec)
                continue
            d = os.path.join(root, str(i))
            os.makedirs(d)
            cmd = [sys.executable, os.path.abspath(__file__), "--configs", opts.configs, "--only-label", a.label,
                   "--modes", "compile", "--device", opts.device, "--warmup", str(opts.warmup), "--steps",
                   str(opts.steps), "--min-steps", str(opts.min_steps), "--step-budget-s", str(opts.step_budget_s),
                   "--parallel", str(opts.parallel), "--sync-dir", d, "--t0", repr(T0)]
            if opts.json:
                cmd += ["--json", opts.json]
            running[i] = (subprocess.Popen(cmd, start_new_session=True, stderr=errlog), time.monotonic(), d, a)
        time.sleep(0.2)
        for i in list(running):
            proc, started, d, a = running[i]
            if os.path.exists(os.path.join(d, "ready")):
                ready.append((i, running.pop(i)))
            elif proc.poll() is not None:  # failed and recorded it, or died
                if proc.returncode != 0:
                    fail(i, a, f"child process exited with status {proc.returncode}")
                running.pop(i)
            elif time.monotonic() - started > opts.compile_timeout_s or time.monotonic() > deadline:
                kill(proc)
                running.pop(i)
                fail(i, a, f"timeout: not compiled within {time.monotonic() - started:.0f} s")
    log(f"compilations done: {len(ready)} of {len(configs)} ready; timing them one at a time")
    for i, (proc, started, d, a) in sorted(ready, key=lambda x: x[0]):
        open(os.path.join(d, "go"), "w").close()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            kill(proc)
            fail(i, a, "timeout in the timed steps")
    if errlog is not subprocess.DEVNULL:
        errlog.close()
    shutil.rmtree(root, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", help="a step_configs.txt file: run its configurations")
    p.add_argument("--only", help="with --configs: only labels containing this")
    p.add_argument("--only-label", help=argparse.SUPPRESS)
    p.add_argument("--sync-dir", help=argparse.SUPPRESS)
    p.add_argument("--t0", type=float, help=argparse.SUPPRESS)  # the parent's start, for progress lines
    p.add_argument("--label")
    p.add_argument("--stage", choices=["pretrain", "finetune"])
    p.add_argument("--dim", type=int)
    p.add_argument("--layers", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--seq", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--items", type=int, default=1000000)
    p.add_argument("--cates", type=int, default=1000)
    p.add_argument("--negatives", type=int, default=4096)
    p.add_argument("--freeze", action="store_true", help="freeze the item table")
    p.add_argument("--modes", default="fp32,bf16,compile")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="at most this many timed steps")
    p.add_argument("--min-steps", type=int, default=5)
    p.add_argument("--step-budget-s", type=float, default=3.0, help="about this long of timed steps per mode")
    p.add_argument("--budget-s", type=float, default=300.0, help="the whole run, compilations included")
    p.add_argument("--compile-timeout-s", type=float, default=150.0)
    p.add_argument("--parallel", type=int, default=3, help="torch.compile children compiling at once")
    p.add_argument("--compile-log", help="the compile children's stderr (default: discarded)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--json")
    opts = p.parse_args()
    if opts.t0 is not None:
        global T0
        T0 = opts.t0
    modes = [m for m in opts.modes.split(",") if m]
    bad = [m for m in modes if m not in ("fp32", "bf16", "compile")]
    if bad:
        p.error(f"unknown mode {bad[0]} (fp32, bf16, compile)")
    if opts.configs:
        configs = read_configs(opts.configs)
        if opts.only_label:
            configs = [a for a in configs if a.label == opts.only_label]
        elif opts.only:
            configs = [a for a in configs if opts.only in a.label]
    else:
        need = [k for k in ("label", "stage", "dim", "layers", "heads", "seq", "batch") if getattr(opts, k) is None]
        if need:
            p.error("without --configs, give --" + ", --".join(need))
        configs = [argparse.Namespace(label=opts.label, stage=opts.stage, layers=opts.layers, dim=opts.dim,
                                      heads=opts.heads, seq=opts.seq, batch=opts.batch, items=opts.items,
                                      negatives=opts.negatives if opts.stage == "pretrain" else 0,
                                      freeze=opts.freeze, cates=opts.cates)]
        opts.configs = None
    dev = torch.device(opts.device)
    if opts.sync_dir:
        child_compile(configs[0], dev, opts)
        return
    if not opts.configs:
        for a in configs:
            for mode in modes:
                bench_in_process(a, mode, dev, opts)
        return
    log(f"torch {torch.__version__}, {len(configs)} configurations, modes {','.join(modes)}, "
        f"budget {opts.budget_s:.0f} s")
    check_fast_forward(dev)
    for a in configs:
        for mode in modes:
            if mode == "compile":
                continue
            if time.monotonic() - T0 > opts.budget_s:
                rec = base_record(a, mode, dev)
                rec["skipped"] = "time budget spent"
                write(opts.json, rec)
                continue
            bench_in_process(a, mode, dev, opts)
    if "compile" in modes and configs:
        release(dev)
        compile_all(configs, dev, opts)
    log("done")


if __name__ == "__main__":
    main()
