#!/bin/bash
# second call: the PyTorch phase, and whether gemm_autotune changes the first step's loss
set -u
out=$OUT/r
mkdir -p "$out"
export GPSDREC_SHARED=.shared PYTHONUNBUFFERED=1
T0=$(date +%s)
say() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a "$out/log.txt"; }
pack() { tar czf "$OUT/r.tgz" -C "$out" . 2>/dev/null; }
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; } > "$out/machine.txt" 2>&1
make -j16 gpsdrec build/test_gpu build/bench_step build/bench_kernels > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
say built
for cfg in "L24H1024A16 finetune 24 1024 16 200 128 100000 0" "L4H256A4 pretrain 4 256 4 50 512 100000 4096"; do
  set -- $cfg
  for at in false true; do
    for st in 1 3; do
      neg=(); [ "$9" -gt 0 ] && neg=(--set n_negatives=$9)
      timeout 120 ./build/bench_step --warmup 0 --steps $st --label "$1 $2 autotune=$at steps=$st" --items $8 \
        --set stage=$2 --set n_layers=$3 --set dim=$4 --set n_heads=$5 --set max_history=$6 --set batch_size=$7 \
        "${neg[@]}" --set gemm_autotune=$at --ceiling-tflops 800 2>&1 | tail -1 | tee -a "$out/autotune_loss.txt"
    done
  done
done
say "autotune check done"
pack
left=$((580 - ($(date +%s) - T0)))
BENCH_OUT=$out/bench BENCH_SKIP=kernels,steps,train BENCH_TORCH_BUDGET_S=$((left - 120)) GIT_REV=${GIT_REV:-} \
  timeout $left sh benchmarks/run_bench.sh > "$out/bench.log" 2>&1
say "bench exit $?"
grep -E "^\[" "$out/bench.log" | tail -30
pack
