#!/bin/sh
# The prep benchmark (issue 4, point 5). Run from the repository root.
#   tools/bench_prep.sh big  [DIR]   100M-row Taobao CSV from the synthetic generator, then
#                                    `gpsdrec prep` 3 times under /usr/bin/time -v
#   tools/bench_prep.sh small [DIR]  a 1M-row file: the official pandas script
#                                    (dataset/preprocessing_taobao.py of chqiwang/gpsd-rec, which
#                                    must be at DIR/preprocessing_taobao.py: it is not part of
#                                    this repository) against `gpsdrec prep`, with their counts
# DIR (default /tmp/prep_bench) holds the inputs and outputs; nothing is written in the repository.
set -eu
mode=${1:-small}
dir=${2:-/tmp/prep_bench}
root=$(pwd)
mkdir -p "$dir"
make CUDA=0 -s gpsdrec >/dev/null
objs=$(ls build/cpu/csrc/*.o build/cpu/csrc/cpu/*.o | grep -v '/main.o$')
gcc -std=c11 -D_GNU_SOURCE -fopenmp -O2 -Iinclude tools/synth_taobao_csv.c $objs -o build/synth_taobao_csv -lm -lpthread
best() { sort -n | head -1; }

if [ "$mode" = big ]; then
  csv=$dir/big.csv
  [ -f "$csv" ] || ./build/synth_taobao_csv "$csv" 1000000 4000000 9439 102.5 1
  ls -l "$csv"
  for run in 1 2 3; do
    /usr/bin/time -v "$root/gpsdrec" prep --format taobao --input "$csv" --out "$dir/big_out" > "$dir/big_run$run.txt" 2> "$dir/big_time$run.txt"
    grep -E "rows used|seconds:|rows/s" "$dir/big_run$run.txt"
    grep -E "Elapsed|Maximum resident" "$dir/big_time$run.txt"
  done
  exit 0
fi

# small: the official pipeline and gpsdrec prep on the same 1M rows
mkdir -p "$dir/taobao"
csv=$dir/taobao/UserBehavior.csv
[ -f "$csv" ] || ./build/synth_taobao_csv "$csv" 10240 400000 5000 100 2
wc -l "$csv"
if [ ! -f "$dir/preprocessing_taobao.py" ]; then
  echo "put the official dataset/preprocessing_taobao.py at $dir/preprocessing_taobao.py" >&2
  exit 1
fi
for run in 1 2 3; do
  /usr/bin/time -v "$root/gpsdrec" prep --format taobao --input "$csv" --out "$dir/ours" > "$dir/ours_run$run.txt" 2> "$dir/ours_time$run.txt"
  grep -E "Elapsed|Maximum resident" "$dir/ours_time$run.txt"
done
for run in 1 2 3; do
  (cd "$dir" && /usr/bin/time -v python3 preprocessing_taobao.py > official_run$run.txt 2> official_time$run.txt)
  grep -E "Elapsed|Maximum resident" "$dir/official_time$run.txt"
done
echo "official: items $(wc -l < "$dir/taobao/item2index.txt") categories $(wc -l < "$dir/taobao/cate2index.txt")" \
     "pretrain $(wc -l < "$dir/taobao/pretrain_dataset.txt") train $(wc -l < "$dir/taobao/ft_train_dataset.txt")" \
     "test $(wc -l < "$dir/taobao/ft_eval_dataset.txt")" \
     "train users $(cut -d, -f1 "$dir/taobao/ft_train_dataset.txt" | sort -u | wc -l)" \
     "test users $(cut -d, -f1 "$dir/taobao/ft_eval_dataset.txt" | sort -u | wc -l)"
grep -E "^(users|items|categories|users train|users test|records)" "$dir/ours_run1.txt"
cmp "$dir/taobao/item2index.txt" "$dir/ours/item2index.txt" && echo "item2index.txt identical"
cmp "$dir/taobao/cate2index.txt" "$dir/ours/cate2index.txt" && echo "cate2index.txt identical"
# the official files themselves through the gpsd format
/usr/bin/time -v "$root/gpsdrec" prep --format gpsd --input "$dir/taobao" --out "$dir/official_as_gpsd" > "$dir/gpsd_run.txt" 2> "$dir/gpsd_time.txt"
grep -E "^(users|items|records)" "$dir/gpsd_run.txt"
grep -E "Elapsed" "$dir/gpsd_time.txt"
