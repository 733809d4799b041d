#!/usr/bin/env bash
# How results/cifar10-pixel-ar.json and results/bench-pixel.json are made (the pixel family on one GPU):
#   STEP=train: generators/cifar10-pixel-ar.yaml for MIN minutes (a device call is at most 10 minutes and a run's
#               start, compile, final validation and saving take over a minute of it (MIN=9 ran past 10): run it
#               twice with MIN=8; the second run resumes exactly from the checkpoint the first one writes at its limit);
#   STEP=eval:  test bits/dim (eval/bpd.py, conditional and through the null class), a grid, FD/IS + the memorisation
#               report of NUM_FD samples at guidance 2, the result file; then bench/pixel.py.
# EXTRA: overrides for training; RESULTS: where results go (a CPU dry run: DATA=tests/data/cifar10
# EXTRA="train.steps=2 train.batch_size=4 train.time_limit_minutes=0 train.log_every=1 model.backbone.n_layer=1
# model.backbone.d_model=32 model.backbone.n_head=2 train.compile=false" NUM_FD=8 BENCH="--tiny" RESULTS=/tmp/r).
# Usage: DATA=/path/to/cifar10 OUT=/tmp/out STEP=train bash eval/gpu/pixel.sh; (again, at once: a machine that goes
# back loses runs/;) then STEP=eval
set -euo pipefail
export TQDM_MININTERVAL=30
MIN=${MIN:-8} NUM_FD=${NUM_FD:-10000} EXTRA=${EXTRA:-} RESULTS=${RESULTS:-results} BENCH=${BENCH:-}
export VISGEN_RESULTS=$RESULTS  # the benches' results too
RUN=runs/cifar10-pixel-ar
if [ "$STEP" = train ]; then
  python train.py generator --recipe generators/cifar10-pixel-ar.yaml data.path=$DATA/train val.path=$DATA/test \
    train.out_dir=$RUN train.time_limit_minutes=$MIN $EXTRA >> $OUT/train-pixel-ar.log 2>&1
  cp $RUN/metrics.jsonl $OUT/metrics-pixel-ar.jsonl
fi
if [ "$STEP" = eval ]; then
  python eval/bpd.py --checkpoint $RUN/final --data $DATA --split test --batch-size 256 --name cifar10-pixel-ar-bpd \
    --results-dir $RUN > $OUT/bpd.log 2>&1
  python sample.py --checkpoint $RUN/final --num-images 100 --cfg-scale 2 --out $RUN/samples > $OUT/sample.log 2>&1
  python eval/fid.py --input $RUN/final --ref $DATA/train --num-samples $NUM_FD --cfg-scale 2 \
    --report $RUN/fd-cfg2.json > $OUT/fd.log 2>&1
  python eval/generator_result.py --run $RUN --samples $(ls -d $RUN/samples/*/ | head -1) --fd-report $RUN/fd-cfg2.json \
    --bpd-report $RUN/cifar10-pixel-ar-bpd.json --name cifar10-pixel-ar --results-dir $RESULTS \
    --command "DATA=... STEP=train MIN=$MIN bash eval/gpu/pixel.sh (twice); STEP=eval bash eval/gpu/pixel.sh" > /dev/null
  python bench/pixel.py --name bench-pixel $BENCH > $OUT/bench-pixel.log 2>&1
fi
