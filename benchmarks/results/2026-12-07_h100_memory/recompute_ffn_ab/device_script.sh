#!/bin/bash
# sixth session, call 5: GPU tests at HEAD (+ recompute_ffn); L4H64A4 and L24H1024A16 finetuning
# with recompute_ffn off and on (same binary, same process order).
set -u
out=$OUT/r; mkdir -p $out
export GPSDREC_SHARED=.shared NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
T0=$(date +%s); say() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a $out/log.txt; }
pack() { tar czf $OUT/r.tgz -C $out . 2>/dev/null; }
{ date -u +%Y-%m-%dT%H:%M:%SZ; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader;
  nvcc --version | tail -1; echo "tree: ${GIT_REV:-?}"; } > $out/machine.txt 2>&1
cat $out/machine.txt
make -j16 gpsdrec build/test_gpu build/bench_step > $out/build.log 2>&1 || { tail -30 $out/build.log; say "build failed"; pack; exit 1; }
say built
timeout 150 ./build/test_gpu > $out/test_gpu.log 2>&1; say "test_gpu rc $?: $(tail -1 $out/test_gpu.log)"; grep -E "FAIL|fail" $out/test_gpu.log | head -20
pack
run() { # label items layers dim heads seq batch freeze steps extra
  timeout 90 ./build/bench_step --warmup 3 --steps $9 --json $out/steps.jsonl --label "$1" --items $2 --set stage=finetune \
    --set n_layers=$3 --set dim=$4 --set n_heads=$5 --set max_history=$6 --set batch_size=$7 --set freeze_sparse=$8 ${10:-} \
    < /dev/null >> $out/steps.txt 2>&1
  say "$1 rc $?: $(tail -1 $out/steps.txt | sed 's/.*negs 0: //')"
}
run "L4H64A4 finetune" 1000000 4 64 4 200 2048 true 20
run "L4H64A4 finetune +recompute_ffn" 1000000 4 64 4 200 2048 true 20 "--set recompute_ffn=true"
run "L24H1024A16 finetune" 100000 24 1024 16 200 128 false 10
run "L24H1024A16 finetune +recompute_ffn" 100000 24 1024 16 200 128 false 10 "--set recompute_ffn=true"
say done
pack
