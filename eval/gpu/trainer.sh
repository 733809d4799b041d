#!/usr/bin/env bash
# The trainer's speed and the token recipe's regularisation, on one GPU (results/bench-trainer.json,
# results/cifar10-token-ar-trials.json):
#   1. bench/trainer.py: the Trainer against a bare loop at the recipe's size and GPT-B, eager and compiled, with a
#      profile of ten steps of each at the recipe's size (tables in $OUT);
#   2. three short runs of the CIFAR-10 token recipe side by side (TRIAL_MIN minutes, STEPS steps of cosine schedule):
#      flips and dropout 0.1, no flips and dropout 0.1, flips and no dropout; their validation loss by step is
#      compared at equal steps (they share the GPU, so their speed is not the recipe's); each kept model is exported
#      in fp16 (EMA weights) to runs/trial-NAME/fp16.
# EXTRA: overrides for every run (a CPU dry run: DATA=tests/data/cifar10 BENCH="--tiny --seconds 1" BENCH_NAME=b EXTRA="train.steps=4
# train.batch_size=8 train.eval_every=2 train.time_limit_minutes=0 train.num_workers=0 train.val_images=16"
# RESULTS=/tmp/r).
# Usage: DATA=/path/to/cifar10 OUT=/tmp/out bash eval/gpu/trainer.sh
set -euo pipefail
export TQDM_MININTERVAL=30
BENCH_NAME=${BENCH_NAME:-bench-trainer} TRIAL_MIN=${TRIAL_MIN:-3.5} STEPS=${STEPS:-8000} BENCH=${BENCH:---seconds 8} EXTRA=${EXTRA:-} RESULTS=${RESULTS:-results}
python bench/trainer.py --name $BENCH_NAME --profile $OUT $BENCH > $OUT/bench-trainer.log 2>&1
D="data.path=$DATA/train val.path=$DATA/test train.steps=$STEPS train.time_limit_minutes=$TRIAL_MIN \
train.eval_every=1000 train.sample_every=0 train.ckpt_every=0"
trial() {  # $1: name, then overrides
  local name=$1
  shift
  python train.py generator --recipe generators/cifar10-token-ar.yaml $D train.out_dir=runs/trial-$name "$@" $EXTRA \
    > $OUT/trial-$name.log 2>&1
}
trial flip-drop 'model.backbone={preset: cifar, dropout: 0.1}' &
trial noflip-drop 'model.backbone={preset: cifar, dropout: 0.1}' data.random_flip=false &
trial flip-nodrop &
wait
python eval/trials.py --runs runs/trial-flip-drop runs/trial-noflip-drop runs/trial-flip-nodrop \
  --name cifar10-token-ar-trials --results-dir $RESULTS \
  --command "DATA=... TRIAL_MIN=$TRIAL_MIN STEPS=$STEPS bash eval/gpu/trainer.sh"
for name in flip-drop noflip-drop flip-nodrop; do  # the kept models in fp16 (EMA weights), as the bundled one ships
  python -c "import sys; from visgen.checkpoint import export_model; export_model(*sys.argv[1:])" \
    runs/trial-$name/final runs/trial-$name/fp16
  cp runs/trial-$name/final/metrics.json runs/trial-$name/fp16/train-metrics.json
done
