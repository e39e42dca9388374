#!/usr/bin/env python3
"""Compare golden-format files (official golden vectors, or gpsdrec dumps from build/parity_dump)
with the independent PyTorch reference in tools/torch_reference.py.

usage: python3 tools/parity.py FILE... [--tol-loss 1e-5] [--tol-grad 1e-4]
                               [--precision fp32|bf16|fp64] [--device cpu|cuda] [--quiet] [--json OUT]

For each file it prints the relative error of each loss (|file - ref| / |ref|), the rank outputs'
largest error relative to the largest rank output, and, for every parameter, the gradient's
largest absolute error relative to the largest magnitude of the reference gradient (the golden
README's measure; ||file - ref|| / ||ref||, the GPU tests' measure, is shown beside it). A loss or rank output passes when |file - ref| <= tol_loss * |ref| + 1e-7; a
gradient when that relative error <= tol_grad; a reference gradient that is exactly zero (a
parameter off this stage's loss path) needs the file's to be zero too (|g| <= 1e-9). Parameters the
file lists in its `frozen_params` metadata (a frozen item table) must have a zero gradient in the
file and are not compared further.

The defaults are for fp32 CPU dumps. For CUDA dumps (bf16 compute) see docs/parity.md: --tol-loss
1e-2 and --tol-grad 5e-2 (pretraining) or 0.3 (finetuning), with weights rounded to bf16 in the
dump (parity_dump --bf16-weights) so that both sides start from the same weights.
Exit status: 0 when every file passes, 1 when any fails, 2 on a bad file or argument.
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402

LOSSES = ("loss", "item_ar_loss", "cate_ar_loss", "rank_loss")


def compare(case, res, grads, tol_loss, tol_grad):
    """Per-quantity errors and pass/fail for one file against the reference results."""
    rows = []
    for k in LOSSES:
        got, want = float(case.expect[k].reshape(-1)[0]), res[k]
        err = abs(got - want)
        rel = err / abs(want) if want != 0 else err
        rows.append({"what": k, "file": got, "ref": want, "error": rel,
                     "pass": err <= tol_loss * abs(want) + 1e-7})
    got = case.expect["rank_outputs"].double().reshape(-1)
    want = res["rank_outputs"].reshape(-1)
    if got.shape != want.shape:
        raise ValueError(f"{case.path}: expect.rank_outputs has {got.numel()} values, the batch {want.numel()}")
    diff = (got - want).abs()
    scale = float(want.abs().max()) if want.numel() else 0.0
    md = float(diff.max()) if diff.numel() else 0.0
    rows.append({"what": "rank_outputs", "error": md / scale if scale > 0 else md,
                 "pass": bool((diff <= tol_loss * want.abs() + 1e-7).all())})
    frozen = set(case.list_meta("frozen_params"))
    for name, g in grads.items():
        fg = case.grads[name].double()
        if tuple(fg.shape) != tuple(g.shape):
            raise ValueError(f"{case.path}: grad.{name} is {tuple(fg.shape)}, expected {tuple(g.shape)}")
        if name in frozen:
            mx = float(fg.abs().max()) if fg.numel() else 0.0
            rows.append({"what": "grad " + name, "error": mx, "scale": 0.0, "note": "frozen", "pass": mx == 0.0})
            continue
        md = float((fg - g).abs().max()) if g.numel() else 0.0
        mr = float(g.abs().max()) if g.numel() else 0.0
        if mr == 0.0:
            rows.append({"what": "grad " + name, "error": md, "scale": 0.0, "note": "zero", "pass": md <= 1e-9})
        else:
            # ||file - ref|| / ||ref||, the GPU tests' measure, reported beside the pass/fail one.
            l2 = float(torch.linalg.vector_norm(fg - g) / torch.linalg.vector_norm(g))
            rows.append({"what": "grad " + name, "error": md / mr, "scale": mr, "rel_l2": l2,
                         "pass": md <= tol_grad * mr})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--tol-loss", type=float, default=1e-5, help="relative tolerance of losses and rank outputs")
    ap.add_argument("--tol-grad", type=float, default=1e-4,
                    help="gradient tolerance, relative to the largest magnitude of each reference gradient")
    ap.add_argument("--precision", choices=("fp32", "bf16", "fp64"), default="fp32", help="the reference's arithmetic")
    ap.add_argument("--device", default="cpu", help="torch device of the reference (cpu, cuda)")
    ap.add_argument("--quiet", action="store_true", help="one summary line per file (and failing rows)")
    ap.add_argument("--json", help="append one JSON object per file to this file")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    failed = 0
    for path in a.files:
        try:
            case = ref.Case(path)
            res, grads = ref.reference(case, precision=a.precision, device=a.device)
            rows = compare(case, res, grads, a.tol_loss, a.tol_grad)
        except (ValueError, OSError, KeyError) as ex:
            print(f"{path}: error: {ex}", file=sys.stderr)
            return 2
        ok = all(r["pass"] for r in rows)
        failed += not ok
        m = case.meta
        worst_loss = max(r["error"] for r in rows if r["what"] in LOSSES)
        grad_rows = [r for r in rows if r["what"].startswith("grad ") and r.get("note") is None]
        worst_grad = max(grad_rows, key=lambda r: r["error"]) if grad_rows else None
        worst_l2 = max((r["rel_l2"] for r in grad_rows), default=0.0)
        desc = (f"{m.get('stage', '?')} L{m['n_layers']}H{m['dim']}A{m['n_heads']} emb {m['embedding_dim']} "
                f"{'causal' if m['causal'] == 'True' else 'bidirectional'} B={case.inputs['historical_len'].numel()} "
                f"S={m['max_history']} N={m['n_samples']} items={m['item_vocab_size']}; "
                f"{m.get('producer', 'official golden')}" + (f" ({m['backend']})" if "backend" in m else ""))
        print(f"{'PASS' if ok else 'FAIL'} {path}: {desc}")
        print(f"  losses: max rel error {worst_loss:.3g} (tol {a.tol_loss:g}); worst gradient "
              + (f"{worst_grad['what'][5:]} {worst_grad['error']:.3g} (tol {a.tol_grad:g}; largest rel L2 {worst_l2:.3g})"
                 if worst_grad else "none")
              + f"; reference {a.precision} on {a.device}")
        for r in rows:
            if a.quiet and r["pass"]:
                continue
            mark = "ok  " if r["pass"] else "FAIL"
            if r["what"] in LOSSES:
                print(f"    {mark} {r['what']:<44} file {r['file']:.9g} ref {r['ref']:.9g} rel err {r['error']:.3g}")
            elif r["what"] == "rank_outputs":
                print(f"    {mark} {'rank_outputs':<44} max err / max {r['error']:.3g}")
            else:
                note = f" ({r['note']})" if r.get("note") else f" (max |ref| {r['scale']:.3g}, rel L2 {r['rel_l2']:.3g})"
                print(f"    {mark} {r['what']:<44} max err / max {r['error']:.3g}{note}")
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps({"file": path, "pass": ok, "precision": a.precision, "device": a.device,
                                    "tol_loss": a.tol_loss, "tol_grad": a.tol_grad, "meta": m,
                                    "max_loss_rel_error": worst_loss,
                                    "max_grad_rel_error": worst_grad["error"] if worst_grad else 0.0,
                                    "max_grad_rel_l2": worst_l2,
                                    "rows": rows}) + "\n")
    n = len(a.files)
    print(f"{n - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
