#!/usr/bin/env python3
"""Times training steps of our PyTorch model of GPSD (tools/torch_reference.py) on synthetic
full-length batches, like benchmarks/bench_step.c does for gpsdrec: forward + backward + AdamW
(torch.optim.AdamW, fused), in fp32, bf16 autocast, and bf16 autocast under torch.compile.
Warm-up steps first, then the median of timed steps (CUDA events around each step), and the peak
of torch.cuda.max_memory_allocated. One JSON line per configuration and mode to --json.

usage: tools/torch_bench.py --label L --stage pretrain|finetune --dim D --layers L --heads H
           --seq S --batch B [--items N] [--cates C] [--negatives K] [--modes fp32,bf16,compile]
"""
import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402


def make_config(a):
    meta = {
        "dim": str(a.dim), "n_layers": str(a.layers), "n_heads": str(a.heads), "embedding_dim": str(a.dim),
        "causal": "True", "item_vocab_size": str(a.items), "cate_vocab_size": str(a.cates),
        "max_history": str(a.seq), "n_samples": str(a.negatives), "temperature": "0.05", "l2_norm": "True",
        "norm_eps": "1e-05", "multiple_of": "32", "rope_theta": "10000.0",
        "item_ar_loss_weight": "1.0" if a.stage == "pretrain" else "0.0",
        "cate_ar_loss_weight": "1.0" if a.stage == "pretrain" else "0.0",
        "rank_loss_weight": "0.0" if a.stage == "pretrain" else "1.0",
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


def run_mode(c, a, mode, dev):
    torch.manual_seed(0)
    P = {n: (torch.randn(s, device=dev) * 0.02).requires_grad_(True) for n, s in ref.param_shapes(c).items()}
    for n, t in P.items():
        if n.endswith("norm.weight"):
            t.data.fill_(1.0)
    opt = torch.optim.AdamW(list(P.values()), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.1, fused=True)
    fwd = ref.forward
    if mode == "compile":
        fwd = torch.compile(ref.forward)
    batches = [make_batch(c, a, dev, i) for i in range(4)]

    def step(i):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode != "fp32"):
            out = fwd(c, P, batches[i % len(batches)])
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(list(P.values()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out["loss"]

    for i in range(a.warmup):
        step(i)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(a.steps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        loss = step(i)
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**30, float(loss)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--label", required=True)
    p.add_argument("--stage", choices=["pretrain", "finetune"], required=True)
    p.add_argument("--dim", type=int, required=True)
    p.add_argument("--layers", type=int, required=True)
    p.add_argument("--heads", type=int, required=True)
    p.add_argument("--seq", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--items", type=int, default=1000000)
    p.add_argument("--cates", type=int, default=1000)
    p.add_argument("--negatives", type=int, default=4096)
    p.add_argument("--modes", default="fp32,bf16,compile")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--json")
    a = p.parse_args()
    if a.stage == "finetune":
        a.negatives = 0
    c = make_config(a)
    dev = torch.device("cuda")
    for mode in a.modes.split(","):
        try:
            ms, peak, loss = run_mode(c, a, mode, dev)
            rec = {"label": a.label, "impl": "torch " + torch.__version__, "mode": mode, "ms_per_step": ms,
                   "peak_gib": peak, "loss": loss, "batch": a.batch, "seq": a.seq, "steps": a.steps,
                   "warmup": a.warmup}
            print(f"{a.label:<28} torch {mode:<8} {ms:8.2f} ms/step  peak {peak:6.2f} GiB  loss {loss:.4f}",
                  flush=True)
        except Exception as ex:  # a mode that fails (e.g. out of memory, compile error) is reported, not fatal
            rec = {"label": a.label, "impl": "torch " + torch.__version__, "mode": mode, "error": repr(ex)[:300]}
            print(f"{a.label:<28} torch {mode:<8} failed: {repr(ex)[:200]}", flush=True)
        torch.cuda.empty_cache()
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
