#!/bin/sh
# gpsdrec and our PyTorch model of GPSD (tools/torch_bench.py) timed in the same run on the same
# kind of synthetic full-length batches, for the L4H64A4 configurations of DESIGN.md.
# usage: benchmarks/torch_compare.sh OUT.jsonl
set -u
out=${1:-benchmarks/results/latest_torch_compare.jsonl}
b=./build/bench_step
$b --json "$out" --label "L4H64A4 pretrain" --items 1000000 --set stage=pretrain --set dim=64 --set n_layers=4 \
   --set n_heads=4 --set max_history=200 --set n_negatives=4096 --set batch_size=512
$b --json "$out" --label "L4H64A4 finetune ST&SF" --items 1000000 --set stage=finetune --set dim=64 --set n_layers=4 \
   --set n_heads=4 --set max_history=200 --set batch_size=2048 --set freeze_sparse=true
python3 tools/torch_bench.py --json "$out" --label "L4H64A4 pretrain" --stage pretrain --dim 64 --layers 4 --heads 4 \
   --seq 200 --batch 512 --items 1000000 --negatives 4096
python3 tools/torch_bench.py --json "$out" --label "L4H64A4 finetune" --stage finetune --dim 64 --layers 4 --heads 4 \
   --seq 200 --batch 2048 --items 1000000
