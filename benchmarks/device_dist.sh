#!/bin/bash
# One device call on a 4-GPU machine for the data-parallel work: build, the GPU tests (on the last
# GPU, in the background), the data-parallel checks on GPUs 0-1, then weak scaling on all four.
# Logs go to $OUT (or ./device_out).
set -u
out=${OUT:-device_out}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0
[ -d .shared ] && export GPSDREC_SHARED=.shared
{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader
  nvidia-smi topo -m 2>/dev/null | head -8
  nvcc --version | tail -1
  git rev-parse --short HEAD 2>/dev/null || true
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"
make -j32 gpsdrec build/test_gpu > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
echo "built"
last=$(( $(nvidia-smi -L | wc -l) - 1 ))
( CUDA_VISIBLE_DEVICES=$last timeout 300 ./build/test_gpu ${GPU_TESTS:-} > "$out/test_gpu.log" 2>&1; echo "test_gpu exit $?" >> "$out/test_gpu.log" ) &
tg=$!
CUDA_VISIBLE_DEVICES=0,1 timeout 300 bash tests/dist/dist_gpu_check.sh /tmp/dist_check > "$out/dist_check.log" 2>&1
echo "dist_check exit $?"; grep -E "FAIL|passed|worst|losses|killed" "$out/dist_check.log"
wait $tg
grep -E "FAIL|passed|exit" "$out/test_gpu.log" | tail -20
if [ "${SKIP_SCALING:-0}" != 1 ]; then
  timeout 240 bash benchmarks/dist_scaling.sh /tmp/dist_scaling "${COUNTS:-1 2 4}" > "$out/dist_scaling.log" 2>&1
  echo "scaling exit $?"; cat "$out/dist_scaling.log"
  cp /tmp/dist_scaling/dist_scaling.jsonl "$out/" 2>/dev/null
fi
