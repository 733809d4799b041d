#!/usr/bin/env bash
# NFIG against VAR under one budget on one GPU (results/cifar10-{freqvq-tokenizer,msvq-tokenizer,nfig,var}.*):
#   STEP=1: two chains side by side: the frequency-band tokenizer then NFIG on it, and the multi-scale VQ then VAR on
#           it; both tokenizers from the bundled VQ for TOK_MIN minutes, both generators the same backbone preset
#           and codebook for GEN_MIN minutes;
#   STEP=2: both tokenizers' reconstruction figures, then each generator's grid and FD/IS + memorisation report
#           (NUM_FD samples, guidance 2 ramped linearly over units), one after the other.
# FREQ: overrides for the frequency-band tokenizer alone, e.g. FREQ=model.band_edges=[0.0625,0.125,0.25,0.5] for the
# four bands of the first runs (the recipe cuts six, the DC quantised twice).
# EXTRA: overrides for every training run, RESULTS: where results go (a CPU dry run: DATA=tests/data/cifar10
# EXTRA="train.steps=2 train.batch_size=8 train.time_limit_minutes=0 train.num_workers=0 train.log_every=1" NUM_FD=8
# RESULTS=/tmp/r).
# Usage: DATA=/path/to/cifar10 OUT=/tmp/out STEP=1 bash eval/gpu/nfig.sh; then STEP=2
set -euo pipefail
export TQDM_MININTERVAL=30
TOK_MIN=${TOK_MIN:-2.5} GEN_MIN=${GEN_MIN:-6} NUM_FD=${NUM_FD:-10000} EXTRA=${EXTRA:-} RESULTS=${RESULTS:-results}
FREQ=${FREQ:-}
D="data.path=$DATA/train val.path=$DATA/test"
CMD="DATA=... TOK_MIN=$TOK_MIN GEN_MIN=$GEN_MIN NUM_FD=$NUM_FD ${FREQ:+FREQ=$FREQ }bash eval/gpu/nfig.sh with STEP=1 then STEP=2"

chain() {  # $1: tokenizer recipe name, $2: generator name
  local own=""
  if [ "$1" = freqvq ]; then own=$FREQ; fi
  python train.py tokenizer --recipe tokenizers/cifar10-$1.yaml $D train.time_limit_minutes=$TOK_MIN $own $EXTRA \
    > $OUT/train-$1.log 2>&1
  python train.py generator --recipe generators/cifar10-$2.yaml $D train.time_limit_minutes=$GEN_MIN $EXTRA \
    > $OUT/train-$2.log 2>&1
}

evaluate() {  # $1: generator name (runs/cifar10-$1, results/cifar10-$1)
  local run=runs/cifar10-$1
  python sample.py --checkpoint $run/final --num-images 100 --cfg-scale 2 --cfg-schedule linear --out $run/samples \
    > $OUT/sample-$1.log 2>&1
  python eval/fid.py --input $run/final --ref $DATA/train --num-samples $NUM_FD --cfg-scale 2 --cfg-schedule linear \
    --report $run/fd-cfg2.json > $OUT/fd-$1.log 2>&1
  python eval/generator_result.py --run $run --samples $(ls -d $run/samples/*/ | head -1) --fd-report $run/fd-cfg2.json \
    --name cifar10-$1 --results-dir $RESULTS --command "$CMD" > /dev/null
  cp $run/metrics.jsonl $OUT/metrics-$1.jsonl
}

if [ "$STEP" = 1 ]; then
  chain freqvq nfig &
  a=$!
  chain msvq var &
  b=$!
  wait $a
  wait $b
fi
if [ "$STEP" = 2 ]; then
  for tok in freqvq msvq; do
    python eval/tokenizer_recon.py runs/cifar10-$tok/final --data $DATA/test --name cifar10-$tok-tokenizer \
      --results-dir $RESULTS --fd-extractor cifar10cls --extra-metrics runs/cifar10-$tok/final/metrics.json \
      > $OUT/recon-$tok.log 2>&1
  done
  evaluate nfig
  evaluate var
fi
