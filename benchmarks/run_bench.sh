#!/bin/sh
# make bench: the benchmarks of issue 7 on the GPU machine, everything into one results directory.
#
#   $BENCH_OUT (default benchmarks/results/<UTC date>_<gpu>/) receives
#     machine.txt      date, GPU, driver, CUDA, torch, git revision, host, this command
#     kernels.jsonl    build/bench_kernels: ceilings, then every kernel (kernels.txt: its table)
#     steps.jsonl      build/bench_step per configuration of benchmarks/step_configs.txt (steps.txt)
#     torch.jsonl      tools/torch_bench.py: our PyTorch model, same configurations (torch.txt;
#                      torch_compile.log: the compile children's stderr)
#     train.jsonl      benchmarks/train_bench.py: whole `gpsdrec train` runs at the same
#                      configurations, data loading included, the loader's thread on and off
#                      (train.txt; train_logs/: their log.jsonl files)
#     summary.md       benchmarks/summarize.py over the JSON files
#   Existing JSON files there are replaced, not appended to.
#
# Environment: BENCH_SKIP=kernels,steps,train,torch (phases to leave out), BENCH_CONFIGS (default
# benchmarks/step_configs.txt: the configurations of the steps and PyTorch phases), BENCH_VARIANTS
# (default benchmarks/step_variants.txt: variant step runs, e.g. recompute_blocks), BENCH_STEPS (timed steps
# per configuration, default 30), BENCH_TRAIN_STEPS (timed steps per training run, default 20),
# BENCH_TORCH_BUDGET_S (the PyTorch phase, compilations
# included, default 270), BENCH_TORCH_MODES (default fp32,bf16,compile), PYTHON (a python with
# torch; default the first of python3, /opt/torch/.venv/bin/python3 that imports it), GIT_REV
# (the revision, where the tree is not a git checkout or its .git is older than the tree),
# BENCH_README=1 (also regenerate the README's step table from this run).
# Time on one H200: kernels ~1 min, steps ~1 min, training runs ~1-2 min, PyTorch <= BENCH_TORCH_BUDGET_S + ~30 s.
set -u
cd "$(dirname "$0")/.."
T0=$(date +%s)
say() { echo "[$(($(date +%s) - T0)) s] $*"; }
skip() { case ",${BENCH_SKIP:-}," in *",$1,"*) return 0 ;; esac; return 1; }

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
if [ -z "$gpu" ]; then
  # without one, bench_step would fall back to the CPU backend and spend hours on the paper's sizes
  echo "make bench: no NVIDIA GPU visible (nvidia-smi lists none); these benchmarks time the CUDA backend" >&2
  exit 2
fi
slug=$(printf '%s' "${gpu:-nogpu}" | tr 'A-Z' 'a-z' | sed 's/nvidia//g; s/[^a-z0-9][^a-z0-9]*/-/g; s/^-//; s/-$//')
out=${BENCH_OUT:-benchmarks/results/$(date -u +%Y-%m-%d)_${slug:-gpu}}
mkdir -p "$out" || exit 1
steps=${BENCH_STEPS:-30}
budget=${BENCH_TORCH_BUDGET_S:-270}
modes=${BENCH_TORCH_MODES:-fp32,bf16,compile}
configs=${BENCH_CONFIGS:-benchmarks/step_configs.txt}

py=${PYTHON:-}
if [ -z "$py" ]; then
  for p in python3 /opt/torch/.venv/bin/python3; do
    if "$p" -c "import torch" >/dev/null 2>&1; then py=$p; break; fi
  done
fi
rev=${GIT_REV:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
# a GIT_REV given names the tree; the copy's own git metadata may be older than it
dirty=""
[ -n "${GIT_REV:-}" ] || dirty=$(git status --porcelain --untracked-files=no 2>/dev/null | head -1)
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null | head -1)"
  echo "cuda: $(nvcc --version 2>/dev/null | tail -1)"
  echo "torch: $([ -n "$py" ] && "$py" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null || echo none)"
  echo "git: $rev${dirty:+ (with uncommitted changes)}"
  echo "host: $(uname -srm), $(nproc) cores"
  echo "command: ${BENCH_COMMAND:-make bench} (BENCH_SKIP=${BENCH_SKIP:-} BENCH_STEPS=$steps BENCH_TRAIN_STEPS=${BENCH_TRAIN_STEPS:-20} BENCH_TORCH_BUDGET_S=$budget BENCH_TORCH_MODES=$modes BENCH_CONFIGS=$configs)"
} > "$out/machine.txt"
cat "$out/machine.txt"
say "results in $out"

if ! skip kernels; then
  rm -f "$out/kernels.jsonl"
  say "kernels: build/bench_kernels (table in $out/kernels.txt)"
  timeout 300 ./build/bench_kernels --json "$out/kernels.jsonl" > "$out/kernels.txt" 2>&1
  rc=$?
  grep -E '^\[|ceiling:' "$out/kernels.txt"
  [ $rc -eq 0 ] || { say "bench_kernels exit $rc:"; tail -5 "$out/kernels.txt"; }
fi

if ! skip steps; then
  rm -f "$out/steps.jsonl" "$out/steps.txt"
  say "steps: build/bench_step, $steps timed steps per configuration"
  # one configuration line (step_configs.txt's columns), a label, extra key=value settings
  run_step() {
    line=$1 label=$2 extra=$3
    set -- $line
    name=$1 stage=$2 layers=$3 dim=$4 heads=$5 seq=$6 batch=$7 items=$8 negs=$9 freeze=${10}
    set -- --set n_negatives="$negs"
    [ "$negs" -gt 0 ] || set --
    for kv in $(printf '%s' "$extra" | tr ',' ' '); do set -- "$@" --set "$kv"; done
    timeout 300 ./build/bench_step --warmup 5 --steps "$steps" --json "$out/steps.jsonl" --label "$label" \
      --items "$items" --set stage="$stage" --set n_layers="$layers" --set dim="$dim" --set n_heads="$heads" \
      --set max_history="$seq" --set batch_size="$batch" --set freeze_sparse="$freeze" "$@" < /dev/null >> "$out/steps.txt" 2>&1
    rc=$?
    [ $rc -eq 0 ] || echo "bench_step $label: exit $rc" >> "$out/steps.txt"
    say "$(tail -1 "$out/steps.txt")"
  }
  grep -v '^#' "$configs" | while read -r line; do
    [ -n "$line" ] || continue
    set -- $line
    run_step "$line" "$1 $2" ""
  done
  variants=${BENCH_VARIANTS:-benchmarks/step_variants.txt}
  [ -f "$variants" ] && grep -v '^#' "$variants" | while read -r vname vstage suffix extra; do
    [ -n "$vname" ] || continue
    line=$(grep -v '^#' "$configs" | awk -v n="$vname" -v s="$vstage" '$1 == n && $2 == s' | head -1)
    if [ -z "$line" ]; then say "variant $vname $vstage $suffix: no such configuration in $configs"; continue; fi
    run_step "$line" "$vname $vstage $suffix" "$extra"
  done
fi

if ! skip train; then
  rm -f "$out/train.jsonl" "$out/train.txt"
  say "train: benchmarks/train_bench.py, ${BENCH_TRAIN_STEPS:-20} timed steps per run (log in $out/train.log)"
  timeout 420 python3 benchmarks/train_bench.py --configs "$configs" --out "$out" --steps "${BENCH_TRAIN_STEPS:-20}" \
    > "$out/train.txt" 2>&1
  rc=$?
  cat "$out/train.txt"
  [ $rc -eq 0 ] || say "train_bench.py exit $rc"
fi

if ! skip torch; then
  rm -f "$out/torch.jsonl" "$out/torch_compile.log"
  if [ -z "$py" ]; then
    say "torch: no python with torch found (set PYTHON); PyTorch columns left empty"
  else
    say "torch: tools/torch_bench.py ($py), modes $modes, budget $budget s"
    timeout $((budget + 90)) "$py" tools/torch_bench.py --configs "$configs" --modes "$modes" \
      --budget-s "$budget" --json "$out/torch.jsonl" --compile-log "$out/torch_compile.log" > "$out/torch.txt" 2>&1
    rc=$?
    grep '^\[' "$out/torch.txt"
    [ $rc -eq 0 ] || { say "torch_bench exit $rc:"; tail -5 "$out/torch.txt"; }
  fi
fi

python3 benchmarks/summarize.py "$out" > "$out/summary.md" || say "summarize.py failed"
[ "${BENCH_README:-0}" = 1 ] && python3 benchmarks/summarize.py "$out" --readme README.md
python3 benchmarks/summarize.py "$out" --brief
say "done: $out"
