#!/bin/bash
# fifth session: GPU tests at HEAD; if they fail, again without the g-shared change, then without the heads-off
# plan change; the four small steps on the first tree that passes; then the wiring patch (revert of e4d3b78)
# with its GPU tests and the same steps; the full make bench on the last tree whose GPU tests passed.
set -u
out=$OUT/r; mkdir -p $out
export GPSDREC_SHARED=.shared NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
T0=$(date +%s); say() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a $out/log.txt; }
pack() { tar czf $OUT/r.tgz -C $out . 2>/dev/null; }
{ date -u +%Y-%m-%dT%H:%M:%SZ; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader;
  nvcc --version | tail -1; echo "tree: $GIT_REV"; } > $out/machine.txt 2>&1
cat $out/machine.txt
build() { make -j16 gpsdrec build/test_gpu build/bench_step build/bench_kernels > $out/build_$1.log 2>&1 || { tail -30 $out/build_$1.log; say "build $1 failed"; return 1; }; }
gputest() { timeout 120 ./build/test_gpu > $out/test_gpu_$1.log 2>&1; local rc=$?; say "test_gpu $1 rc $rc"; grep -E "FAIL|passed" $out/test_gpu_$1.log | head -30; pack; return $rc; }
steps() {
  while read name stage layers dim heads seq batch items neg freeze; do
    case "$name" in ''|\#*) continue;; L24*) continue;; esac
    timeout 40 ./build/bench_step --warmup 3 --steps 20 --json $out/steps_$1.jsonl --label "$name $stage" --items $items \
     --set stage=$stage --set n_layers=$layers --set dim=$dim --set n_heads=$heads --set max_history=$seq --set batch_size=$batch \
     --set freeze_sparse=$freeze $([ $neg -gt 0 ] && echo --set n_negatives=$neg) < /dev/null >> $out/steps_$1.txt 2>&1
    say "$1 $name $stage rc $?: $(tail -1 $out/steps_$1.txt | sed 's/.*items [0-9]* //')"
  done < benchmarks/step_configs.txt
  pack
}
ap() { git apply $2 .ab/$1.patch 2>>$out/apply.log || patch $([ -n "$2" ] && echo -R) -p1 < .ab/$1.patch >>$out/apply.log 2>&1; }
build head || { pack; exit 1; }
cat build/cuda.mk >> $out/machine.txt
tree=head
if ! gputest head; then
  if ap gshared -R && build nogshared && gputest nogshared; then tree=nogshared
  elif ap heads_off -R && build noheadsoff && gputest noheadsoff; then tree=nogshared-noheadsoff
  else say "no tree passes its GPU tests: nothing timed"; pack; exit 2; fi
fi
steps $tree
if ap wire ""; then
  if build wired && gputest wired; then tree="$tree+wired"; steps wired
  else say "wiring failed its tests: back to $tree"; ap wire -R; build back; fi
else say "wire patch did not apply: $(cat $out/apply.log)"; fi
say "full bench on $tree"
left=$(( 580 - ($(date +%s) - T0) ))
BENCH_OUT="$out/bench" BENCH_TORCH_BUDGET_S=${BENCH_TORCH_BUDGET_S:-200} BENCH_COMMAND="OUT=... bash .ab/dev15.sh (tree $GIT_REV, $tree)" \
  timeout $left sh benchmarks/run_bench.sh > "$out/bench.log" 2>&1
say "bench exit $? ($tree)"
grep -h "gpsdrec: attention" "$out/bench/steps.txt" 2>/dev/null | sort -u | tee -a $out/log.txt
pack
say packed
