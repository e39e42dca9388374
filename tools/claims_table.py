#!/usr/bin/env python3
"""Gathers tools/paper_claims.sh's runs into a markdown table: test AUC per strategy (mean and
sample standard deviation over seeds), the train-test AUC gap, and NT's test AUC after each epoch.
usage: tools/claims_table.py OUT_DIR"""
import json
import os
import statistics
import sys

STRATS = [("nt", "NT"), ("ft", "FT"), ("st", "ST"), ("ftsf", "FT&SF"), ("stsf", "ST&SF")]


def load(path):
    with open(path) as f:
        return json.load(f)


def epoch_aucs(log_path):
    """Test AUC at the end of every epoch (the last eval line of each epoch)."""
    by_epoch = {}
    with open(log_path) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("event") == "eval" and rec.get("split") == "test" and rec.get("auc") is not None:
                by_epoch[rec["epoch"]] = rec["auc"]
    return [by_epoch[k] for k in sorted(by_epoch)]


def main(out):
    runs = os.path.join(out, "runs")
    print("| dataset | metric | " + " | ".join(name for _, name in STRATS) + " |")
    print("|---|---|" + "---|" * len(STRATS))
    curves = {}
    for ds in sorted(os.listdir(runs)):
        seeds = sorted(d for d in os.listdir(os.path.join(runs, ds)) if os.path.isdir(os.path.join(runs, ds, d)))
        test, gap = [], []
        for key, _ in STRATS:
            t, g = [], []
            for seed in seeds:
                p = os.path.join(runs, ds, seed, key, "result.json")
                if not os.path.exists(p):
                    continue
                r = load(p)
                t.append(r["test_auc"])
                g.append(r["train_auc"] - r["test_auc"])
                if key == "nt":
                    curves.setdefault(ds, []).append(epoch_aucs(os.path.join(runs, ds, seed, key, "log.jsonl")))
            sd = statistics.stdev(t) if len(t) > 1 else float("nan")
            test.append("%.3f ± %.3f" % (statistics.mean(t), sd) if t else "-")
            gap.append("%.3f" % statistics.mean(g) if g else "-")
        print("| %s (%d seeds) | test AUC | %s |" % (ds, len(seeds), " | ".join(test)))
        print("| %s | train AUC − test AUC | %s |" % (ds, " | ".join(gap)))
    print()
    print("NT test AUC after each epoch (mean over seeds):")
    print()
    for ds, cs in sorted(curves.items()):
        n = min(len(c) for c in cs)
        means = [statistics.mean(c[i] for c in cs) for i in range(n)]
        print("- %s: %s" % (ds, ", ".join("%.3f" % m for m in means)))


if __name__ == "__main__":
    main(sys.argv[1])
