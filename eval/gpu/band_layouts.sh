#!/usr/bin/env bash
# The band tokenizer's layouts against the multi-scale VQ under one budget on one GPU (#36's tokenizer goal: rFD no
# worse than the multi-scale VQ's in the same minutes, the same run; results/freqvq-layouts-gpu.json):
#   the multi-scale VQ recipe and each LAYOUTS entry of the frequency-band recipe trained side by side from the
#   bundled VQ for TOK_MIN minutes, then each scored on the CIFAR-10 test set (PSNR, SSIM, codebook usage, rFD with
#   the bundled classifier's features), gathered by eval/layouts.py with each layout's tokens and training steps.
# LAYOUTS: space-separated NAME=OVERRIDES, the overrides joined by semicolons, for the freqvq recipe; the default: the
#   recipe's five bands (124 tokens), six bands with the DC quantised twice (1,1,3,5,5,8: 125 tokens), six bands
#   (1,3,3,5,5,8: 133 tokens) and five with a wider fourth band (1,3,5,7,8: 148 tokens, more than VAR's 130: what
#   rFD more tokens buy).
# EXTRA: overrides for every training run, RESULTS: where results go (a CPU dry run: DATA=tests/data/cifar10
# EXTRA="train.steps=2 train.batch_size=8 train.time_limit_minutes=0 train.num_workers=0 train.log_every=1"
# RESULTS=/tmp/r OUT=/tmp/o).
# Usage: DATA=/path/to/cifar10 OUT=/tmp/out bash eval/gpu/band_layouts.sh
set -euo pipefail
export TQDM_MININTERVAL=30
TOK_MIN=${TOK_MIN:-1.5} EXTRA=${EXTRA:-} RESULTS=${RESULTS:-results} WORKERS=${WORKERS:-3}
LAYOUTS=${LAYOUTS:-"freq5=model.band_edges=[0.0625,0.125,0.25,0.35,0.5] \
freq6dc=model.band_edges=[0.0625,0.1,0.125,0.25,0.35,0.5] \
freq6=model.band_edges=[0.0625,0.125,0.18,0.25,0.35,0.5] \
freq5wide=model.band_edges=[0.0625,0.125,0.25,0.375,0.5]"}
D="data.path=$DATA/train val.path=$DATA/test train.num_workers=$WORKERS train.ckpt_every=0 train.sample_every=0"
CMD="DATA=... TOK_MIN=$TOK_MIN LAYOUTS=\"$LAYOUTS\" bash eval/gpu/band_layouts.sh"

train() {  # $1: name, $2: recipe, $3: overrides joined by semicolons
  python train.py tokenizer --recipe tokenizers/cifar10-$2.yaml $D train.out_dir=runs/layout-$1 \
    train.time_limit_minutes=$TOK_MIN ${3//;/ } $EXTRA > $OUT/train-layout-$1.log 2>&1
}

names="msvq"
train msvq msvq "" &
pids="$!"
for entry in $LAYOUTS; do
  name=${entry%%=*}
  names="$names $name"
  train $name freqvq "${entry#*=}" &
  pids="$pids $!"
done
for p in $pids; do wait $p; done

tmp=$(mktemp -d)
args=""
for name in $names; do
  python eval/tokenizer_recon.py runs/layout-$name/final --data $DATA/test --name layout-$name --results-dir $tmp \
    --fd-extractor cifar10cls --extra-metrics runs/layout-$name/final/metrics.json > $OUT/recon-layout-$name.log 2>&1
  cp $tmp/layout-$name.png $OUT/ || true
  args="$args --layout $name $tmp/layout-$name.json runs/layout-$name/final"
done
python eval/layouts.py $args --baseline msvq --name freqvq-layouts-gpu --results-dir $RESULTS --command "$CMD"
cp $RESULTS/freqvq-layouts-gpu.json $OUT/
