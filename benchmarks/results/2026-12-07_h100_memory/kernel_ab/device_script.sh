#!/bin/bash
# sixth session, call 1: GPU tests at HEAD (norm regeneration + bf16 negatives' gradient); on a
# failure, again without the bf16 gradient, then without both. Then an A/B in one process order:
# the small steps + L24H1024A16 finetuning and four kernel groups on the passing tree, then the
# same on the tree without both changes.
set -u
out=$OUT/r; mkdir -p $out
export GPSDREC_SHARED=.shared NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
T0=$(date +%s); say() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a $out/log.txt; }
pack() { tar czf $OUT/r.tgz -C $out . 2>/dev/null; }
{ date -u +%Y-%m-%dT%H:%M:%SZ; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader;
  nvcc --version | tail -1; echo "tree: ${GIT_REV:-?}"; } > $out/machine.txt 2>&1
cat $out/machine.txt
build() { make -j16 gpsdrec build/test_gpu build/bench_step build/bench_kernels > $out/build_$1.log 2>&1 || { tail -30 $out/build_$1.log; say "build $1 failed"; return 1; }; say "built $1"; }
gputest() { timeout 150 ./build/test_gpu > $out/test_gpu_$1.log 2>&1; local rc=$?; say "test_gpu $1 rc $rc: $(tail -1 $out/test_gpu_$1.log)"; grep -E "FAIL|fail" $out/test_gpu_$1.log | head -30; pack; return $rc; }
steps() {
  while read name stage layers dim heads seq batch items neg freeze; do
    case "$name" in ''|\#*) continue;; esac
    local n=20 w=3
    case "$name $stage" in "L24H1024A16 pretrain") continue;; L24*) n=10; w=2;; esac
    timeout 60 ./build/bench_step --warmup $w --steps $n --json $out/steps_$1.jsonl --label "$name $stage" --items $items \
     --set stage=$stage --set n_layers=$layers --set dim=$dim --set n_heads=$heads --set max_history=$seq --set batch_size=$batch \
     --set freeze_sparse=$freeze $([ $neg -gt 0 ] && echo --set n_negatives=$neg) < /dev/null >> $out/steps_$1.txt 2>&1
    say "$1 $name $stage rc $?: $(tail -1 $out/steps_$1.txt | sed 's/.*items [0-9]* //')"
  done < benchmarks/step_configs.txt
  pack
}
kern() {
  for g in rmsnorm_bwd swiglu_bwd scatter_add_rows_l2bwd item_head; do
    timeout 60 ./build/bench_kernels --only $g --json $out/kernels_$1.jsonl >> $out/kernels_$1.txt 2>&1
    say "kernels $1 $g rc $?"
  done
  pack
}
ap() { git apply $2 .ab/$1.patch 2>>$out/apply.log || patch $([ -n "$2" ] && echo -R) -p1 < .ab/$1.patch >>$out/apply.log 2>&1; }
build head || { pack; exit 1; }
cat build/cuda.mk >> $out/machine.txt
tree=head
if ! gputest head; then
  if ap negbf16 -R && build no_negbf16 && gputest no_negbf16; then tree=no_negbf16
  elif ap normregen -R && build base && gputest base; then tree=base
  else say "no tree passes its GPU tests"; pack; exit 2; fi
fi
steps $tree
kern $tree
if [ $tree != base ]; then
  [ $tree = head ] && ap negbf16 -R
  ap normregen -R && build base && { steps base; kern base; }
fi
say done
pack
