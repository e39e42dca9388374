#!/bin/sh
# Builds the prep fuzz target for one format and runs libFuzzer on it.
#   tools/fuzz/run_fuzz.sh taobao|amazon|movielens|csv|seq|gpsd SECONDS [extra libFuzzer args]
# Needs clang with libFuzzer (Debian: clang). The corpus lives in build/fuzz/corpus_FORMAT,
# seeded from tools/fuzz/seeds/FORMAT*.
set -eu
fmt=$1
secs=$2
shift 2
cd "$(dirname "$0")/../.."
case $fmt in
  taobao) F=PREP_FMT_TAOBAO ;; amazon) F=PREP_FMT_AMAZON ;; movielens) F=PREP_FMT_MOVIELENS ;;
  csv) F=PREP_FMT_CSV ;; seq) F=PREP_FMT_SEQ ;; gpsd) F=PREP_FMT_GPSD ;;
  *) echo "unknown format $fmt" >&2; exit 2 ;;
esac
mkdir -p build/fuzz "build/fuzz/corpus_$fmt"
bin=build/fuzz/fuzz_prep_$fmt
srcs=$(ls csrc/*.c csrc/cpu/*.c | grep -v 'csrc/main.c')
if [ ! -x "$bin" ] || [ -n "$(find csrc include tools/fuzz -newer "$bin" -name '*.[ch]' | head -1)" ]; then
  clang -std=c11 -D_GNU_SOURCE -g -O1 -fopenmp -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -DFUZZ_FORMAT=$F -Iinclude -Icsrc tools/fuzz/fuzz_prep.c $srcs -o "$bin" -lm -lpthread
fi
for s in tools/fuzz/seeds/$fmt*; do [ -f "$s" ] && cp "$s" "build/fuzz/corpus_$fmt/"; done
OMP_NUM_THREADS=2 "$bin" -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=4096 "$@" "build/fuzz/corpus_$fmt"
