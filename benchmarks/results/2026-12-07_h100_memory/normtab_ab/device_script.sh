#!/bin/bash
# sixth session, call 4: GPU tests at HEAD (+ negatives from the normalised table); the pretraining
# steps on HEAD and without that change; the l2 forward kernel group.
set -u
out=$OUT/r; mkdir -p $out
export GPSDREC_SHARED=.shared NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
T0=$(date +%s); say() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a $out/log.txt; }
pack() { tar czf $OUT/r.tgz --exclude='*.ncu-rep' -C $out . 2>/dev/null; }
{ date -u +%Y-%m-%dT%H:%M:%SZ; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader;
  nvcc --version | tail -1; echo "tree: ${GIT_REV:-?}"; } > $out/machine.txt 2>&1; mkdir -p $out/profile
cat $out/machine.txt
build() { make -j16 gpsdrec build/test_gpu build/bench_step build/bench_kernels > $out/build_$1.log 2>&1 || { tail -30 $out/build_$1.log; say "build $1 failed"; return 1; }; say "built $1"; }
gputest() { timeout 150 ./build/test_gpu > $out/test_gpu_$1.log 2>&1; local rc=$?; say "test_gpu $1 rc $rc: $(tail -1 $out/test_gpu_$1.log)"; grep -E "FAIL|fail" $out/test_gpu_$1.log | head -30; pack; return $rc; }
steps() {
  while read name stage layers dim heads seq batch items neg freeze; do
    case "$name" in ''|\#*) continue;; esac
    case "$stage" in pretrain) ;; *) continue;; esac
    local n=20 w=3
    case "$name" in L24*) n=10; w=2;; esac
    timeout 60 ./build/bench_step --warmup $w --steps $n --json $out/steps_$1.jsonl --label "$name $stage" --items $items \
     --set stage=$stage --set n_layers=$layers --set dim=$dim --set n_heads=$heads --set max_history=$seq --set batch_size=$batch \
     --set freeze_sparse=$freeze $([ $neg -gt 0 ] && echo --set n_negatives=$neg) < /dev/null >> $out/steps_$1.txt 2>&1
    say "$1 $name $stage rc $?: $(tail -1 $out/steps_$1.txt | sed 's/.*items [0-9]* //')"
  done < benchmarks/step_configs.txt
  pack
}
ap() { git apply $2 .ab/$1.patch 2>>$out/apply.log || patch $([ -n "$2" ] && echo -R) -p1 < .ab/$1.patch >>$out/apply.log 2>&1; }
build head || { pack; exit 1; }
tree=head
if ! gputest head; then
  ap normtab -R && build no_normtab && gputest no_normtab && tree=no_normtab || { say "no tree passes"; pack; exit 2; }
fi
steps $tree
timeout 60 ./build/bench_kernels --only l2norm_fwd_rows --json $out/kernels_l2.jsonl > $out/kernels_l2.txt 2>&1; say "kernels rc $?"
if [ $tree = head ]; then ap normtab -R && build no_normtab && steps no_normtab; fi
say done
pack
