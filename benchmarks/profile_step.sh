#!/bin/bash
# Kernel-by-kernel GPU time of whole training steps, on the GPU machine: build/bench_step under
# Nsight Compute (gpu__time_duration only, caches and clocks left alone), run twice with S1 and S2
# timed steps; benchmarks/kernel_profile.py turns the difference into one step's kernels, beside
# the step's wall time measured without the profiler.
#
# usage: PROFILE_OUT=DIR bash benchmarks/profile_step.sh [config label ...]
#   labels are "name stage" pairs of benchmarks/step_configs.txt, e.g. "L4H64A4 pretrain"
#   (default: L4H64A4 pretrain, L4H64A4 finetune). Writes DIR/<name>_<stage>.md and .json.
# environment: PROFILE_S1 (default 1), PROFILE_S2 (default 4), NCU (default: ncu on the PATH,
#   else the newest /opt/nvidia/nsight-compute/*/ncu)
set -u
cd "$(dirname "$0")/.."
out=${PROFILE_OUT:-profile_out}
mkdir -p "$out" || exit 1
s1=${PROFILE_S1:-1} s2=${PROFILE_S2:-4}
ncu=${NCU:-$(command -v ncu || ls -d /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -1)}
[ -n "$ncu" ] && [ -x "$ncu" ] || { echo "profile_step.sh: no ncu found (set NCU)"; exit 1; }
[ $# -gt 0 ] || set -- "L4H64A4 pretrain" "L4H64A4 finetune"
rc_all=0
for label in "$@"; do
  line=$(grep -v '^#' benchmarks/step_configs.txt | awk -v l="$label" '$1 " " $2 == l' | head -1)
  [ -n "$line" ] || { echo "profile_step.sh: no configuration \"$label\" in benchmarks/step_configs.txt"; rc_all=1; continue; }
  set -- $line
  name=$1 stage=$2
  args="--items $8 --set stage=$2 --set n_layers=$3 --set dim=$4 --set n_heads=$5 --set max_history=$6"
  # --ceiling-tflops 1 skips measuring the GEMM ceiling: the MFU in $tag.wall.txt means nothing, only ms/step is used
  args="$args --set batch_size=$7 --set freeze_sparse=${10} --ceiling-tflops 1"
  [ "$9" -gt 0 ] && args="$args --set n_negatives=$9"
  tag=${name}_${stage}
  # the wall time without the profiler, same attention choice as the captures (the probe's)
  ./build/bench_step --warmup 5 --steps 20 $args > "$out/$tag.wall.txt" 2>&1 || { tail -3 "$out/$tag.wall.txt"; rc_all=1; continue; }
  step_ms=$(grep -o '[0-9.]* ms/step' "$out/$tag.wall.txt" | head -1 | cut -d' ' -f1)
  attn=$(grep -o 'using the own kernels\|using cuDNN' "$out/$tag.wall.txt" | head -1)
  kernel=auto
  case "$attn" in *own*) kernel=own ;; *cuDNN*) kernel=cudnn ;; esac
  for s in $s1 $s2; do
    "$ncu" --metrics gpu__time_duration.sum --cache-control none --clock-control none -f -o "$out/${tag}_$s" \
      ./build/bench_step --warmup 1 --steps "$s" $args --set attention_kernel=$kernel > "$out/${tag}_$s.log" 2>&1 \
      || { echo "ncu on $label ($s steps) failed:"; tail -5 "$out/${tag}_$s.log"; rc_all=1; continue 2; }
    "$ncu" --import "$out/${tag}_$s.ncu-rep" --csv --page raw --metrics gpu__time_duration.sum \
      --print-kernel-base function > "$out/${tag}_$s.csv" 2>> "$out/${tag}_$s.log"
  done
  python3 benchmarks/kernel_profile.py "$out/${tag}_$s1.csv" "$s1" "$out/${tag}_$s2.csv" "$s2" \
    ${step_ms:+--step-ms $step_ms} --json "$out/$tag.json" > "$out/$tag.md" || rc_all=1
  { echo "## $label ($attn attention)"; head -1 "$out/$tag.md"; } 
done
exit $rc_all
