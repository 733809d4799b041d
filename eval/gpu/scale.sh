#!/usr/bin/env bash
# How results/cifar10-{msvq-tokenizer,var,flowar}.* were made (scale family), in two steps that each fit one GPU call:
#   STEP=1: the chains of FAMILIES side by side on one GPU: flowar: FlowAR (GEN_MIN minutes), then its grid + FD/IS;
#           var: the multi-scale VQ (from the bundled VQ, MSVQ_MIN minutes), then VAR on it (GEN_MIN minutes);
#   STEP=2: the msvq reconstruction figures, VAR's grid + FD/IS.
# FD/IS: eval/fid.py, NUM_FD class-balanced samples vs CIFAR-10 train, guidance 2 ramped linearly over scales (the
# headline) and a sweep over CFG_SWEEP. EXTRA: overrides for every training run, RESULTS: where results go (for a
# CPU dry run: DATA=tests/data/cifar10 EXTRA="train.steps=3 ..." NUM_FD=20 RESULTS=/tmp/r).
# Usage: DATA=/path/to/cifar10 OUT=/tmp/out STEP=1 bash eval/gpu/scale.sh; then STEP=2
set -euo pipefail
export TQDM_MININTERVAL=30
MSVQ_MIN=${MSVQ_MIN:-2.5} GEN_MIN=${GEN_MIN:-6} NUM_FD=${NUM_FD:-10000} CFG_SWEEP=${CFG_SWEEP:-"1.5 3"}
EXTRA=${EXTRA:-} RESULTS=${RESULTS:-results} FAMILIES=${FAMILIES:-"flowar var"}
D="data.path=$DATA/train val.path=$DATA/test"

evaluate() {  # $1: family name (run folder runs/cifar10-$1, results/cifar10-$1)
  local run=runs/cifar10-$1 reports=()
  python sample.py --checkpoint $run/final --num-images 100 --cfg-scale 2 --cfg-schedule linear --out $run/samples \
    > $OUT/sample-$1.log 2>&1
  for cfg in 2 $CFG_SWEEP; do
    python eval/fid.py --input $run/final --ref $DATA/train --num-samples $NUM_FD --cfg-scale $cfg \
      --cfg-schedule linear --report $run/fd-cfg$cfg.json >> $OUT/fd-$1.log 2>&1
    reports+=($run/fd-cfg$cfg.json)
  done
  python eval/generator_result.py --run $run --samples $(ls -d $run/samples/*/ | head -1) --fd-report "${reports[@]}" \
    --name cifar10-$1 --results-dir $RESULTS \
    --command "DATA=... FAMILIES=$1 MSVQ_MIN=$MSVQ_MIN GEN_MIN=$GEN_MIN bash eval/gpu/scale.sh with STEP=1 then STEP=2"
  cp $run/metrics.jsonl $OUT/metrics-$1.jsonl
}

if [ "$STEP" = 1 ]; then
  pids=()
  if [[ " $FAMILIES " == *" flowar "* ]]; then
    (
      python train.py generator --recipe generators/cifar10-flowar.yaml $D train.time_limit_minutes=$GEN_MIN $EXTRA \
        > $OUT/train-flowar.log 2>&1
      evaluate flowar
    ) &
    pids+=($!)
  fi
  if [[ " $FAMILIES " == *" var "* ]]; then
    (
      python train.py tokenizer --recipe tokenizers/cifar10-msvq.yaml $D train.time_limit_minutes=$MSVQ_MIN $EXTRA \
        > $OUT/train-msvq.log 2>&1
      python train.py generator --recipe generators/cifar10-var.yaml $D train.time_limit_minutes=$GEN_MIN $EXTRA \
        > $OUT/train-var.log 2>&1
    ) &
    pids+=($!)
  fi
  for p in "${pids[@]}"; do wait $p; done
fi
if [ "$STEP" = 2 ]; then
  python eval/tokenizer_recon.py runs/cifar10-msvq/final --data $DATA/test --name cifar10-msvq-tokenizer \
    --results-dir $RESULTS --fd-extractor cifar10cls --extra-metrics runs/cifar10-msvq/final/metrics.json \
    > $OUT/recon-msvq.log 2>&1
  evaluate var
fi
