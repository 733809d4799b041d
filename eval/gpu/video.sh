#!/usr/bin/env bash
# How results/moving-fmnist-video.json (+ .gif) is to be made (the video family on one GPU, three device calls):
#   STEP=tokenizer: Moving Fashion-MNIST written from $FMNIST (10k / 1k clips), then the frame tokenizer
#                   (tokenizers/moving-fmnist-kl.yaml) for TOK_MIN minutes;
#   STEP=generator: the FAR-style generator (generators/moving-fmnist-far.yaml) for GEN_MIN minutes;
#   STEP=eval:      NUM clips sampled (a GIF and grid), their dynamics score against the real and shuffled clips, and
#                   the clips predicted from 4 context frames.
# EXTRA: overrides for both trainings; RESULTS: where results go.
# Usage: FMNIST=$VISGEN_DATA/fashion-mnist OUT=/tmp/out STEP=tokenizer bash eval/gpu/video.sh; then generator, eval
set -euo pipefail
export TQDM_MININTERVAL=30
TOK_MIN=${TOK_MIN:-9} GEN_MIN=${GEN_MIN:-9} NUM=${NUM:-1000} EXTRA=${EXTRA:-} RESULTS=${RESULTS:-results}
DATA=${DATA:-data/moving-fmnist}
if [ "$STEP" = tokenizer ]; then
  python eval/make_moving_digits.py --fmnist $FMNIST --out $DATA ${MAKE:-} > $OUT/make-data.log 2>&1
  python train.py tokenizer --recipe tokenizers/moving-fmnist-kl.yaml data.path=$DATA val.path=$DATA \
    train.time_limit_minutes=$TOK_MIN $EXTRA > $OUT/train-kl.log 2>&1
fi
if [ "$STEP" = generator ]; then
  python train.py generator --recipe generators/moving-fmnist-far.yaml data.path=$DATA val.path=$DATA \
    train.time_limit_minutes=$GEN_MIN $EXTRA > $OUT/train-far.log 2>&1
  cp runs/moving-fmnist-far/metrics.jsonl $OUT/metrics-far.jsonl
fi
if [ "$STEP" = eval ]; then
  RUN=runs/moving-fmnist-far
  python sample.py --checkpoint $RUN/final --num-images $NUM --npz --grid-max 16 --out $RUN/samples > $OUT/sample.log 2>&1
  S=$(ls -d $RUN/samples/*/ | head -1)
  python eval/dynamics.py --input $S/samples.npz --ref $DATA --name moving-fmnist-video-dynamics \
    --results-dir $RUN > $OUT/dynamics.log 2>&1
  python sample.py --checkpoint $RUN/final --num-images 16 --context $DATA --context-frames 4 --out $RUN/predicted \
    > $OUT/predict.log 2>&1
  cp $S/clips/000000.gif $RESULTS/moving-fmnist-video.gif
  cp $S/grid.png $OUT/grid.png
fi
