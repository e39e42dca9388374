#!/usr/bin/env python3
"""The budget arithmetic of docs/sweep.md: seconds per run of a scaling sweep on one H200, from a
step-time model fitted to the measured H200 step times (benchmarks/results/2026-11-28_h200_*).

usage:
  tools/sweep_estimate.py PRESET [--ckpt-gbs G] [--lines]
      PRESET: beauty, ml100k or synth30m (the datasets and settings of configs/sweep/*.conf);
      prints each size's pretraining, NT and ST&SF seconds (and the parts: training, evaluation,
      checkpoints), the whole sweep's total, and with --lines the `#@ SIZE.STAGE.estimate` lines
      of the budget file. --ckpt-gbs: checkpoint write speed in GB/s (default 1, a disk with fsync).

The model (ms per optimizer step of B sequences of S history positions plus the candidate slot):
    t_step = T * max(6N / R, alpha * L * H) + (0.5 + 0.15 L) ms [+ B (15 + 0.05 H) us pretraining]
with T = B (S + 1) tokens, N the block parameters, R = 373 TFLOP/s (the L24H1024A16 finetuning
step), alpha = 0.19 ns (memory-bound small models), a launch cost growing with the layers, and the
sampled-softmax heads of pretraining. A run adds 3 s of start-up, its evaluations (a forward pass
is a third of a training step per token; next-item ranking also scores every item), a resumable
checkpoint at every epoch end (12 bytes a trained parameter: weights and AdamW moments) and the
final model (4 bytes a parameter).
"""
import math
import sys

R_FLOPS = 373e12
ALPHA = 0.19e-9
STARTUP_S = 3.0
SIZES = [(1, 32, 4), (4, 32, 4), (4, 64, 4), (4, 128, 4), (4, 256, 4), (8, 512, 8), (12, 768, 12),
         (24, 1024, 16)]

# Records of each split (gpsdrec info), the CTR test users that pretraining ranks for, the item
# vocabulary, and the budget's settings.
PRESETS = {
    "beauty": dict(pretrain=22363, train=31318, test=13408, test_users=6704, items=12102, cates=444, B=512, S=50,
                   pretrain_epochs=10, finetune_epochs=10, eval_every=0, eval_max=0, eval_batch=2048),
    "ml100k": dict(pretrain=943, train=1322, test=564, test_users=282, items=1683, cates=19, B=64, S=50,
                   pretrain_epochs=20, finetune_epochs=10, eval_every=0, eval_max=0, eval_batch=1024),
    "synth30m": dict(pretrain=326306, train=456278, test=196334, test_users=98167, items=250001, cates=501, B=512,
                     S=50, pretrain_epochs=1, finetune_epochs=1, eval_every=0, eval_max=200000, eval_batch=2048),
}


def block_params(layers, dim):
    ffn = 32 * math.ceil(int(8 * dim / 3) / 32)
    return layers * (4 * dim * dim + 3 * ffn * dim + 2 * dim)


def token_s(layers, dim):
    """Seconds of a training step per token (forward and backward)."""
    return max(6 * block_params(layers, dim) / R_FLOPS, ALPHA * layers * dim)


def step_s(layers, dim, B, S, pretrain):
    t = B * (S + 1) * token_s(layers, dim) + (0.5 + 0.15 * layers) * 1e-3
    if pretrain:
        t += B * (15 + 0.05 * dim) * 1e-6
    return t


def estimate(p, layers, dim, stage, strategy, ckpt_gbs=1.0):
    """(seconds, parts) of one run: parts = (steps, training s, evaluation s, checkpoint s)."""
    pre = stage == "pretrain"
    B, S = p["B"], p["S"]
    epochs = p["pretrain_epochs" if pre else "finetune_epochs"]
    steps = (p["pretrain" if pre else "train"] // B) * epochs
    train = steps * step_s(layers, dim, B, S, pre)
    fwd = token_s(layers, dim) / 3
    launch = (0.5 + 0.15 * layers) * 1e-3

    def forward(n):
        if p["eval_max"]:
            n = min(n, p["eval_max"])
        return n * (S + 1) * fwd + math.ceil(n / p["eval_batch"]) * launch

    n_evals = epochs + (steps // p["eval_every"] if p["eval_every"] else 0)
    if pre:
        users = p["test_users"]
        evals = n_evals * (forward(users) + 2 * users * p["items"] * dim / R_FLOPS)
    else:
        evals = n_evals * forward(p["test"]) + forward(p["train"])
    n = block_params(layers, dim)
    table = (p["items"] + p["cates"]) * dim
    trained = n + (0 if strategy in ("st", "stsf") and not pre else table)
    ckpt = (12 * trained * epochs + 4 * (n + table)) / 1e9 / ckpt_gbs
    return STARTUP_S + train + evals + ckpt, (steps, train, evals, ckpt)


def main(argv):
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in PRESETS:
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    p = PRESETS[argv[0]]
    ckpt = 1.0
    if "--ckpt-gbs" in argv:
        ckpt = float(argv[argv.index("--ckpt-gbs") + 1])
    total = 0.0
    lines = []
    print("%-12s %11s | %-31s | %-31s | %-31s" % ("size", "N", "pretrain s (steps, ms/step)", "NT s", "ST&SF s"))
    for L, H, A in SIZES:
        name = "L%dH%dA%d" % (L, H, A)
        cells = []
        for stage, strat in (("pretrain", None), ("finetune", "nt"), ("finetune", "stsf")):
            s, (steps, train, evals, ck) = estimate(p, L, H, stage, strat, ckpt)
            total += s
            ms = 1e3 * step_s(L, H, p["B"], p["S"], stage == "pretrain")
            cells.append("%6.1f (%d x %.1f; ev %.0f ck %.0f)" % (s, steps, ms, evals, ck))
            if strat != "stsf":
                lines.append("#@ %s.%s.estimate = %d" % (name, stage, math.ceil(s)))
        print("%-12s %11d | %-31s | %-31s | %-31s" % (name, block_params(L, H), cells[0], cells[1], cells[2]))
    print("whole sweep (NT and ST&SF): %.0f s = %.1f min on one H200 (checkpoints at %g GB/s)" % (
        total, total / 60, ckpt))
    if "--lines" in argv:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
