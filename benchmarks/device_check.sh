#!/bin/bash
# One device session: build for sm_90, run the GPU tests, compute-sanitizer on a subset, and the
# whole-step benchmarks; logs go to $OUT (or ./device_out). Usage: benchmarks/device_check.sh [quick]
set -u
out=${OUT:-device_out}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0
# ../shared does not travel to the device: a copy carried as .shared stands in for it.
[ -d .shared ] && export GPSDREC_SHARED=.shared
{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  nvcc --version | tail -1
  git rev-parse --short HEAD 2>/dev/null || true
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"
make -j16 gpsdrec build/test_gpu build/bench_step > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
cat build/cuda.mk >> "$out/machine.txt"
timeout 300 ./build/test_gpu ${GPU_TESTS:-} > "$out/test_gpu.log" 2>&1
echo "test_gpu exit $?"; grep -E "FAIL|passed" "$out/test_gpu.log" | tail -30
if [ "${1:-}" != quick ]; then
  timeout 240 compute-sanitizer --tool memcheck --error-exitcode 3 ./build/test_gpu gpu_random_pretrain_projected gpu_random_finetune_hd32 > "$out/memcheck.log" 2>&1
  echo "memcheck exit $?"; tail -3 "$out/memcheck.log"
  timeout 240 compute-sanitizer --tool racecheck --error-exitcode 3 ./build/test_gpu gpu_random_pretrain_projected > "$out/racecheck.log" 2>&1
  echo "racecheck exit $?"; tail -3 "$out/racecheck.log"
  BENCH_OUT="$out/bench" BENCH_SKIP=kernels,torch timeout 300 sh benchmarks/run_bench.sh > "$out/bench.log" 2>&1
  echo "bench exit $?"; cat "$out/bench.log"
  cat "$out/memcheck.log" "$out/racecheck.log" > "$out/sanitizers.log" && rm -f "$out/memcheck.log" "$out/racecheck.log"
fi
