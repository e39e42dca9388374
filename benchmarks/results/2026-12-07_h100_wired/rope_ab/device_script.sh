#!/bin/bash
# fifth session, last call: the attention kernels with rope folded in against the separate passes
# kernel-by-kernel profile of the three small pretraining/finetuning steps at HEAD (wiring in).
set -u
out=$OUT/r; mkdir -p $out
export GPSDREC_SHARED=.shared PYTHONUNBUFFERED=1
T0=$(date +%s); say() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a $out/log.txt; }
pack() { tar czf $OUT/r.tgz -C $out . 2>/dev/null; }
{ date -u +%Y-%m-%dT%H:%M:%SZ; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; echo "tree: $GIT_REV"; } > $out/machine.txt 2>&1
cat $out/machine.txt
make -j16 gpsdrec build/bench_step build/bench_kernels > $out/build.log 2>&1 || { tail -30 $out/build.log; say build failed; pack; exit 1; }
say built
timeout 60 ./build/bench_kernels --only attention --json $out/kernels_attn.jsonl > $out/kernels_attn.txt 2>&1; say "attention kernels rc $?"
grep -E "L4H64A4|L4H128A4" $out/kernels_attn.txt | grep -E "rope|ours|tiled" | head -30
pack
pack
say packed
