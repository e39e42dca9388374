#!/bin/bash
# One device call on one GPU: build for sm_90, the GPU tests (make test-gpu), then make bench
# (kernels, whole steps with the attention each configuration's probe picks, our PyTorch model).
# Everything is packed into $OUT/session.tgz (the device tool returns at most 8 files) with the
# short summary $OUT/summary.txt beside it.
#
# usage: OUT=DIR bash benchmarks/device_session.sh
# environment: BENCH_TORCH_BUDGET_S (default 150), SESSION_SKIP_TESTS=1, SESSION_SANITIZE=1 (compute-sanitizer
# memcheck on a subset of the GPU tests; racecheck group by group, SESSION_RACECHECK_S in all and
# SESSION_RACECHECK_GROUP_S a group), SESSION_PROFILE="L4H64A4 pretrain;L4H64A4 finetune"
# (benchmarks/profile_step.sh: the kernel-by-kernel time of those steps under ncu), SESSION_SKIP_BENCH=1,
# SESSION_GATE=1 (stop after the GPU tests when they fail: no device time spent timing broken code),
# BENCH_SKIP (run_bench.sh)
set -u
out_root=${OUT:-device_out}
out=$out_root/session
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
# ../shared does not travel to the device: a copy carried as .shared stands in for it
[ -d .shared ] && export GPSDREC_SHARED=.shared
T0=$(date +%s)
say() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a "$out/session.log"; }
pack() { tar czf "$out_root/session.tgz" -C "$out" . 2>/dev/null; }
{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  nvcc --version | tail -1
  echo "${GIT_REV:-$(git rev-parse --short HEAD 2>/dev/null)}"
  ls /usr/lib/x86_64-linux-gnu/libcudnn.so* 2>/dev/null | head -3
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"
make -j"$(nproc)" gpsdrec build/test_gpu build/bench_step build/bench_kernels > "$out/build.log" 2>&1 \
  || { tail -40 "$out/build.log"; say "build failed"; pack; exit 1; }
cat build/cuda.mk >> "$out/machine.txt"
say "built"
if [ "${SESSION_SKIP_TESTS:-0}" != 1 ]; then
  timeout ${SESSION_TEST_S:-180} ./build/test_gpu > "$out/test_gpu.log" 2>&1
  test_rc=$?
  say "test_gpu exit $test_rc"
  grep -E "FAIL|probe:|skipped|passed" "$out/test_gpu.log" | tail -40 | tee -a "$out/session.log"
  pack
  if [ "${SESSION_GATE:-0}" = 1 ] && [ $test_rc != 0 ]; then
    say "SESSION_GATE: the GPU tests failed, nothing else run"
    cp "$out/session.log" "$out_root/summary.txt"
    pack
    exit 2
  fi
fi
if [ "${SESSION_SANITIZE:-0}" = 1 ]; then
  # memcheck over the cuDNN paths, the own attention and loss, the new row kernels, recompute and graph replay
  timeout ${SESSION_MEMCHECK_S:-200} compute-sanitizer --tool memcheck --error-exitcode 3 ./build/test_gpu \
    cudnn_attn_smaller_batch cudnn_attn_rejects kattn_causal kloss_ kb_l2norm kb_scatter_add_rows \
    gpu_random_pretrain_projected gpu_recompute_blocks gpu_graph_capture_and_replay_match_direct_cudnn \
    > "$out/memcheck.log" 2>&1
  say "memcheck exit $?: $(grep -E 'ERROR SUMMARY|passed' "$out/memcheck.log" | tr '\n' ' ')"
  # racecheck over the own kernels only: cuDNN's generated Hopper SDPA kernels (TMA/mbarrier hand-offs) draw
  # reports racecheck cannot attribute to us, so they are checked apart below and recorded, not counted.
  # One sanitizer run per group with its own time limit: a slow group (racecheck serialises every shared
  # memory access) cannot hide the verdict on the others, and each group's log says how far it got.
  race_groups="kb_ kattn_ kloss_ gpu_random_pretrain_projected gpu_recompute_blocks \
    gpu_graph_capture_and_replay_match_direct gpu_batch_packing"
  race_t0=$(date +%s)
  race_total=0; race_done=0; race_cut=0
  : > "$out/racecheck.log"
  for g in $race_groups; do
    left=$(( ${SESSION_RACECHECK_S:-300} - ($(date +%s) - race_t0) ))
    [ $left -lt 10 ] && { echo "racecheck group $g: not run (SESSION_RACECHECK_S spent)" >> "$out/racecheck.log"; race_cut=$((race_cut + 1)); continue; }
    limit=${SESSION_RACECHECK_GROUP_S:-150}
    [ $limit -gt $left ] && limit=$left
    glog="$out/racecheck_$g.log"
    timeout $limit compute-sanitizer --tool racecheck --error-exitcode 3 --kernel-name-exclude kns=cudnn \
      ./build/test_gpu "$g" > "$glog" 2>&1
    rc=$?
    if grep -qiE "unrecognized|unknown option|invalid option" "$glog"; then
      timeout $limit compute-sanitizer --tool racecheck --error-exitcode 3 ./build/test_gpu "$g" > "$glog" 2>&1
      rc=$?
    fi
    own=$(grep "Race reported" "$glog" | grep -vc "cudnn_generated")
    race_total=$((race_total + own))
    if [ $rc = 124 ]; then race_cut=$((race_cut + 1)); else race_done=$((race_done + 1)); fi
    echo "racecheck group $g: exit $rc after $(( $(date +%s) - race_t0 )) s, own-kernel race reports $own:" \
      "$(grep -E '^ok|FAIL|RACECHECK SUMMARY|passed' "$glog" | sed 's/  */ /g' | tr '\n' ';')" >> "$out/racecheck.log"
    cat "$glog" >> "$out/racecheck_full.log"; rm -f "$glog"
  done
  say "racecheck (own kernels): $race_done groups finished, $race_cut cut short, own-kernel race reports $race_total"
  cat "$out/racecheck.log" | tee -a "$out/session.log"
  timeout ${SESSION_RACECHECK_CUDNN_S:-60} compute-sanitizer --tool racecheck ./build/test_gpu cudnn_attn_smaller_batch \
    > "$out/racecheck_cudnn.log" 2>&1
  say "racecheck (cuDNN attention, recorded only) exit $?: $(grep "Race reported" "$out/racecheck_cudnn.log" | sed 's/.*access at \([a-z_0-9]*\)+.*/\1/' | sort | uniq -c | tr '\n' ' ') $(grep -E 'RACECHECK SUMMARY|passed' "$out/racecheck_cudnn.log" | tr '\n' ' ')"
  pack
fi
if [ -n "${SESSION_PROFILE:-}" ]; then
  IFS=';' read -ra labels <<< "$SESSION_PROFILE"
  PROFILE_OUT="$out/profile" timeout ${SESSION_PROFILE_S:-240} bash benchmarks/profile_step.sh "${labels[@]}" \
    > "$out/profile.log" 2>&1
  say "profile exit $?"
  cat "$out/profile.log" | tee -a "$out/session.log"
  rm -f "$out"/profile/*.ncu-rep
  pack
fi
[ "${SESSION_SKIP_BENCH:-0}" = 1 ] && { cp "$out/session.log" "$out_root/summary.txt"; pack; say "packed"; exit 0; }
BENCH_OUT="$out/bench" BENCH_TORCH_BUDGET_S=${BENCH_TORCH_BUDGET_S:-150} BENCH_COMMAND="OUT=... bash benchmarks/device_session.sh" \
  timeout ${SESSION_BENCH_S:-320} sh benchmarks/run_bench.sh > "$out/bench.log" 2>&1
say "bench exit $?"
grep -h "gpsdrec: attention" "$out/bench/steps.txt" 2>/dev/null | tee -a "$out/session.log"
tail -45 "$out/bench.log"
{ cat "$out/session.log"; echo; cat "$out/bench/summary.md" 2>/dev/null; } > "$out_root/summary.txt"
pack
say "packed"
