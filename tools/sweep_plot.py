#!/usr/bin/env python3
"""Plots of a scaling sweep, like the paper's Figure 5: test AUC and test logloss against N (dense
parameters of the transformer blocks) on a log axis, the points of every strategy (each seed), the
fitted power law dashed and its bound a as a dotted horizontal line.

usage: tools/sweep_plot.py SWEEP_DIR [--out PLOT_DIR]
  reads SWEEP_DIR/sweep.json (tools/sweep.py's table), fits it again with tools/sweep_fit.py and
  writes PLOT_DIR (default SWEEP_DIR/plots)/auc.png, logloss.png and figure5.png (both panels).
Needs matplotlib (python3 -m pip install matplotlib); exits with status 3 and says so without it.
"""
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ in tools/ of the working tree
import sweep_fit  # noqa: E402

COLORS = {"NT": "#d62728", "FT": "#ff7f0e", "ST": "#2ca02c", "FT&SF": "#9467bd", "ST&SF": "#1f77b4"}
MARKERS = {"NT": "s", "FT": "^", "ST": "v", "FT&SF": "D", "ST&SF": "o"}
LABEL = {"auc": "test AUC", "logloss": "test logloss"}


class MatplotlibMissing(Exception):
    pass


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        raise MatplotlibMissing("matplotlib is not installed (python3 -m pip install matplotlib)")


def _panel(ax, rows, fits, metric):
    col = sweep_fit.COLUMN[metric]
    strategies = []
    for r in rows:
        if r["strategy"] not in strategies:
            strategies.append(r["strategy"])
    shown = ("done", "collapsed")
    ns_all = [r["params_N"] for r in rows if r.get("status") in shown and r.get(col) is not None]
    if not ns_all:
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
        return
    lo, hi = min(ns_all) / 1.6, max(ns_all) * 1.6
    ys_all = [r[col] for r in rows if r.get("status") in shown and r.get(col) is not None]
    y_lo, y_hi = min(ys_all), max(ys_all)
    span = max(y_hi - y_lo, 1e-3)
    for strat in strategies:
        color = COLORS.get(strat, "black")
        pts = [(r["params_N"], r[col]) for r in rows
               if r["strategy"] == strat and r.get("status") == "done" and r.get(col) is not None]
        dead = [(r["params_N"], r[col]) for r in rows
                if r["strategy"] == strat and r.get("status") == "collapsed" and r.get(col) is not None]
        if dead:
            ax.scatter([p[0] for p in dead], [p[1] for p in dead], color=color, marker="x", s=36, zorder=3,
                       label="%s collapsed (AUC 0.5 on train and test; not fitted)" % strat)
        if not pts:
            continue
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=color, marker=MARKERS.get(strat, "o"),
                   s=28, zorder=3, label=strat)
        fit = next((f for f in fits if f["strategy"] == strat and f["metric"] == metric and "error" not in f), None)
        if fit is None:
            continue
        xs = [math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * i / 200) for i in range(201)]
        ys = [sweep_fit.predict(sweep_fit.SIGN[metric], fit["a"], fit["b"], fit["c"], x) for x in xs]
        # AUC = a - b N^-c and loss = a + b N^-c, written with the sign b actually has.
        plus = (fit["b"] >= 0) == (metric == "logloss")
        r2 = "%.3f" % fit["r2"] if fit["r2"] is not None else "-"
        label = "%s fit: %.4f %s %.4g·N$^{-%.4f}$ (R²=%s)" % (strat, fit["a"], "+" if plus else "-", abs(fit["b"]),
                                                           fit["c"], r2)
        if fit.get("note"):
            label += "; not a power law" if "power law" in fit["note"] else ""
        ax.plot(xs, ys, "--", color=color, linewidth=1.2, label=label)
        # The bound, where it is near the points (a degenerate fit can put it anywhere).
        if y_lo - 2 * span <= fit["a"] <= y_hi + 2 * span:
            ax.axhline(fit["a"], color=color, linestyle=":", linewidth=1.0, alpha=0.8)
            y_lo, y_hi = min(y_lo, fit["a"]), max(y_hi, fit["a"])
    ax.plot([], [], ":", color="grey", label="fitted bound a")
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    pad = 0.08 * max(y_hi - y_lo, 1e-3)
    ax.set_ylim(y_lo - pad, y_hi + pad)
    ax.set_xlabel("dense parameters of the transformer blocks N")
    ax.set_ylabel(LABEL[metric])
    ax.grid(True, which="both", alpha=0.25)
    # Below the axes: inside them, even loc="best" covered a point (a fixed corner covered NT's large
    # sizes on beauty, "best" NT's L4H128A4 on the 30M synthetic set).
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)


def plot(rows, fits, out_dir):
    """Writes auc.png, logloss.png and figure5.png into out_dir; returns their paths. Raises
    MatplotlibMissing without matplotlib."""
    plt = _pyplot()
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for metric in ("auc", "logloss"):
        fig, ax = plt.subplots(figsize=(6.4, 5.6))
        _panel(ax, rows, fits, metric)
        ax.set_title("%s against model size (dotted: fitted bound a)" % LABEL[metric], fontsize=10)
        fig.tight_layout()
        p = os.path.join(out_dir, "%s.png" % metric)
        fig.savefig(p, dpi=130)
        plt.close(fig)
        paths.append(p)
    fig, axes = plt.subplots(1, 2, figsize=(12.0, 5.6))
    for ax, metric in zip(axes, ("auc", "logloss")):
        _panel(ax, rows, fits, metric)
    fig.tight_layout()
    p = os.path.join(out_dir, "figure5.png")
    fig.savefig(p, dpi=130)
    plt.close(fig)
    paths.append(p)
    return paths


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    src, out_dir = argv[0], None
    if len(argv) == 3 and argv[1] == "--out":
        out_dir = argv[2]
    elif len(argv) != 1:
        print("sweep_plot.py: usage: tools/sweep_plot.py SWEEP_DIR [--out PLOT_DIR]", file=sys.stderr)
        return 2
    try:
        rows = sweep_fit.load_rows(src)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print("sweep_plot.py: cannot read a sweep table from %s: %s" % (src, e), file=sys.stderr)
        return 1
    if out_dir is None:
        out_dir = os.path.join(src if os.path.isdir(src) else os.path.dirname(src), "plots")
    try:
        paths = plot(rows, sweep_fit.fit_table(rows), out_dir)
    except MatplotlibMissing as e:
        print("sweep_plot.py: %s" % e, file=sys.stderr)
        return 3
    print("wrote " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
