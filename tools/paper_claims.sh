#!/bin/sh
# The paper's claims on real data (issue 5): for each dataset in ../shared/data (amazon-beauty,
# ml-100k) and each seed, pretrain L4H64A4 once, then finetune with every transfer strategy (NT,
# FT, ST, FT&SF, ST&SF) from that pretrained model, with the official Amazon hyperparameters
# (configs/amazon_beauty.conf; configs/ml100k.conf for the much smaller MovieLens). Then tools/claims_table.py gathers test AUC (mean and spread over
# seeds), the train-test AUC gap and NT's test AUC after every epoch.
#
# usage: tools/paper_claims.sh OUT_DIR [SHARED_DIR] [SEEDS]     (SEEDS default "1 2 3")
# Runs on the GPU when there is one (a few minutes on an H200), else on the CPU (hours).
set -eu
out=${1:?usage: tools/paper_claims.sh OUT_DIR [SHARED_DIR] [SEEDS]}
shared=${2:-../shared}
seeds=${3:-1 2 3}
bin=./gpsdrec
# EXTRA: options added to every training run (e.g. "--max_steps 2" for a quick check of the script).
extra=${EXTRA:-}
mkdir -p "$out/data"
B=$shared/data/amazon-beauty
[ -f "$out/data/beauty/data.gpsd" ] || $bin prep --format seq --input $B/s3rec/Beauty.txt \
    --times $B/ticoserec/Beauty_time_org_rank.txt --meta $B/s3rec/Beauty_item2attributes.json --out "$out/data/beauty"
M=$shared/data/ml-100k
[ -f "$out/data/ml-100k/data.gpsd" ] || $bin prep --format movielens --input $M/u.data --meta $M/u.item \
    --out "$out/data/ml-100k"
for ds in beauty ml-100k; do
  conf=configs/amazon_beauty.conf
  [ $ds = ml-100k ] && conf=configs/ml100k.conf
  for seed in $seeds; do
    run=$out/runs/$ds/seed$seed
    mkdir -p "$run"
    $bin train $conf --stage pretrain --data "$out/data/$ds/data.gpsd" --seed $seed \
        --out_dir "$run/pretrain" $extra > "$run.pretrain.log" 2>&1
    for strat in nt ft st ftsf stsf; do
      $bin train $conf configs/strategies/$strat.conf --stage finetune \
          --data "$out/data/$ds/data.gpsd" --seed $seed --init_from "$run/pretrain/model.safetensors" \
          --out_dir "$run/$strat" $extra > "$run.$strat.log" 2>&1
      grep -h "eval test" "$run.$strat.log" | tail -1 | sed "s|^|$ds seed $seed $strat: |"
    done
  done
done
python3 tools/claims_table.py "$out" > "$out/claims.md"
cat "$out/claims.md"
