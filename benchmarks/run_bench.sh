#!/bin/sh
# Whole-step benchmarks of the configurations in ../shared/DESIGN.md ("Where to compare"), on the
# GPU when there is one. Results are appended as JSON lines to $BENCH_JSON (default
# benchmarks/results/latest.jsonl) and printed as a table.
set -eu
cd "$(dirname "$0")/.."
out=${BENCH_JSON:-benchmarks/results/latest.jsonl}
mkdir -p "$(dirname "$out")"
b=./build/bench_step
run() { label=$1; shift; $b --json "$out" --label "$label" "$@"; }
run "L4H64A4 pretrain"  --items 1000000 --set stage=pretrain --set dim=64 --set n_layers=4 --set n_heads=4 --set max_history=200 --set n_negatives=4096 --set batch_size=512
run "L4H64A4 finetune ST&SF" --items 1000000 --set stage=finetune --set dim=64 --set n_layers=4 --set n_heads=4 --set max_history=200 --set batch_size=2048 --set freeze_sparse=true
run "L4H256A4 pretrain" --items 100000 --set stage=pretrain --set dim=256 --set n_layers=4 --set n_heads=4 --set max_history=50 --set n_negatives=4096 --set batch_size=512
run "L4H256A4 finetune" --items 100000 --set stage=finetune --set dim=256 --set n_layers=4 --set n_heads=4 --set max_history=50 --set batch_size=512
run "L24H1024A16 pretrain" --items 100000 --set stage=pretrain --set dim=1024 --set n_layers=24 --set n_heads=16 --set max_history=200 --set n_negatives=4096 --set batch_size=128
run "L24H1024A16 finetune" --items 100000 --set stage=finetune --set dim=1024 --set n_layers=24 --set n_heads=16 --set max_history=200 --set batch_size=128
