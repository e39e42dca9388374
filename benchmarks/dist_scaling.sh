#!/bin/bash
# Weak scaling of data-parallel pretraining: samples/s on 1, 2 and 4 GPUs at a fixed per-GPU
# batch, for L4H64A4 and L12H768A12 (max_history 200, 4096 negatives, 1M-item synthetic
# catalogue), through `gpsdrec train --nproc N` (real data loading, NCCL, the item exchange).
#   bash benchmarks/dist_scaling.sh OUT_DIR [GPU counts, default "1 2 4"]
# samples/s = the median of the log intervals (10 steps each) after the first; efficiency =
# samples/s on N GPUs / (N x samples/s on 1). Writes OUT_DIR/dist_scaling.jsonl and prints a table.
set -eu
export NCCL_NVLS_ENABLE=0
OUT=${1:?usage: dist_scaling.sh OUT_DIR [counts]}
COUNTS=${2:-1 2 4}
mkdir -p "$OUT"
DATA=$OUT/scaling.gpsd
[ -f "$DATA" ] || ./gpsdrec synth --set synth.users=160000 --set synth.items=1000000 --set synth.cates=1000 \
    --set synth.mean_len=120 --set synth.max_len=400 --out "$DATA" > "$OUT/scaling_synth.log" 2>&1
# More ranks than GPUs would share cards and measure that instead of scaling.
n_gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
for n in $COUNTS; do
    if [ "$n" -gt "${n_gpus:-0}" ]; then
        echo "dist_scaling.sh: $n ranks asked for, $n_gpus GPUs visible; drop $n from the counts" >&2
        exit 2
    fi
done
JSON=$OUT/dist_scaling.jsonl
: > "$JSON"
# the revision measured, marked when the tree differs from it (the recorded figures must name it)
rev=$(git rev-parse --short HEAD 2> /dev/null || echo unknown)
[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && rev="$rev+dirty-$(git diff HEAD | sha1sum | cut -c1-8)"
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)
run() { # label per_gpu_batch n settings...
    local label=$1 pb=$2 n=$3; shift 3
    local dir=$OUT/run_${label}_$n
    rm -rf "$dir"
    ./gpsdrec train --set data="$DATA" --set stage=pretrain --set device=cuda --set max_history=200 \
        --set n_negatives=4096 --set batch_size=$((pb * n)) --set max_steps=60 --set log_every=10 \
        --set warmup_steps=10 --set eval_max_samples=256 --set eval_batch_size=256 --set checkpoint_every=0 \
        --set out_dir="$dir" --set nproc="$n" "$@" > "$dir.log" 2>&1 || { echo "run $label x$n failed:"; tail -5 "$dir.log"; return 1; }
    python3 - "$dir/log.jsonl" "$label" "$n" "$pb" "$rev" "$gpu" >> "$JSON" <<'PY'
import json, statistics, sys, datetime
log, label, n, pb, rev, gpu = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
sps = [d["samples_per_s"] for d in map(json.loads, open(log)) if d.get("event") == "train"][1:]
print(json.dumps({"date": datetime.date.today().isoformat(), "gpu": gpu, "git": rev, "config": label, "gpus": n,
                  "per_gpu_batch": pb, "global_batch": pb * n, "samples_per_s": statistics.median(sps),
                  "intervals": len(sps), "command": "benchmarks/dist_scaling.sh"}))
PY
}
for n in $COUNTS; do
    run L4H64A4 512 "$n" --set dim=64 --set n_layers=4 --set n_heads=4
    run L12H768A12 64 "$n" --set dim=768 --set n_layers=12 --set n_heads=12
done
python3 - "$JSON" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
base = {r["config"]: r["samples_per_s"] for r in rows if r["gpus"] == 1}
print(f"{'config':<12} {'GPUs':>4} {'per-GPU batch':>13} {'samples/s':>11} {'efficiency':>10}")
for r in rows:
    eff = r["samples_per_s"] / (r["gpus"] * base[r["config"]]) if r["config"] in base else float("nan")
    print(f"{r['config']:<12} {r['gpus']:>4} {r['per_gpu_batch']:>13} {r['samples_per_s']:>11.0f} {eff:>10.1%}")
PY
