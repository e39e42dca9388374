#!/bin/bash
# one device call: build, GPU tests, then make bench without the PyTorch phase (kernels, steps, train)
set -u
out=$OUT/r
mkdir -p "$out"
export GPSDREC_SHARED=.shared NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
T0=$(date +%s)
say() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a "$out/log.txt"; }
pack() { tar czf "$OUT/r.tgz" -C "$out" . 2>/dev/null; }
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; nproc; echo "${GIT_REV:-?}"; } > "$out/machine.txt" 2>&1
cat "$out/machine.txt"
make -j16 gpsdrec build/test_gpu build/bench_step build/bench_kernels > "$out/build.log" 2>&1 \
  || { tail -30 "$out/build.log"; say "build failed"; pack; exit 1; }
say built
timeout 210 ./build/test_gpu > "$out/test_gpu.log" 2>&1
say "test_gpu exit $?"
grep -E "^FAIL|passed|failed check|probe" "$out/test_gpu.log" | tail -40
grep -B2 -A8 "^FAIL" "$out/test_gpu.log" | head -80 > "$out/test_gpu_failures.txt"
pack
left=$((585 - ($(date +%s) - T0)))
say "bench with ${left} s left"
BENCH_OUT=$out/bench BENCH_SKIP=${BENCH_SKIP:-torch} BENCH_STEPS=${BENCH_STEPS:-20} BENCH_TRAIN_STEPS=${BENCH_TRAIN_STEPS:-10} \
  GIT_REV=${GIT_REV:-} timeout $left sh benchmarks/run_bench.sh > "$out/bench.log" 2>&1
say "bench exit $?"
grep -E "^\[|ms/step|ceiling|host-to-device" "$out/bench.log" | tail -45
pack
