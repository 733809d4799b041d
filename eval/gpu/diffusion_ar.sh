#!/usr/bin/env bash
# How results/cifar10-diffusion-ar*.json were made (continuous tokens one at a time on the bundled KL tokenizer):
#   STEP=main: the diffusion head at unit size 1 (GEN_MIN minutes), its grid, FD/IS + memorisation at guidance 2
#              (the headline) and 3, NUM_FD samples each;
#   STEP=rows: the short rows, trained side by side on one GPU (ROW_MIN minutes each) and then evaluated in turn:
#              head flow_mlp, and the diffusion head at unit size 4, each with a grid and FD/IS at guidance 2 on
#              NUM_ROW_FD samples;
#   STEP=units: what the unit size does in the same minutes: the diffusion head at unit sizes 1, 2 and 4 trained side by
#              side (ROW_MIN minutes each), then each evaluated in turn as a row (results/cifar10-diffusion-ar-k{1,2,4}),
#              then bench/diffusion_ar.py --unit-sizes 1 2 4 (results/bench-diffusion-ar-units.json; BENCH: its flags).
#   STEP=head_steps: what fewer denoising steps cost: the STEP=main model (trained first, GEN_MIN minutes, if
#              runs/cifar10-diffusion-ar/final is missing) scored at guidance 2 with the head's 100 steps, 50 and 25
#              (--head-steps), and DDIM's 50 and 25 (--head-solver ddim), NUM_FD samples each -> results/cifar10-diffusion-ar-head-steps.json (eval/sweep.py;
#              each setting's generation images/s in its report).
# EXTRA: overrides for every run, RESULTS: where results go (a CPU dry run: DATA=tests/data/cifar10
# EXTRA="train.steps=3 train.batch_size=16 train.time_limit_minutes=0 train.log_every=1 model.head_options.steps=4"
# NUM_FD=20 NUM_ROW_FD=20 RESULTS=/tmp/r).
# Usage: DATA=/path/to/cifar10 OUT=/tmp/out STEP=main bash eval/gpu/diffusion_ar.sh; then STEP=rows
set -euo pipefail
export TQDM_MININTERVAL=30
GEN_MIN=${GEN_MIN:-5.5} ROW_MIN=${ROW_MIN:-2.5} NUM_FD=${NUM_FD:-10000} NUM_ROW_FD=${NUM_ROW_FD:-5000}
EXTRA=${EXTRA:-} RESULTS=${RESULTS:-results} BENCH=${BENCH:-}
export VISGEN_RESULTS=$RESULTS  # the benches' results too
D="data.path=$DATA/train val.path=$DATA/test"

evaluate() {  # $1: run name (runs/$1, results/$1), $2: samples for FD, then the guidance scales (first: headline)
  local name=$1 n=$2 run=runs/$1 reports=()
  shift 2
  python sample.py --checkpoint $run/final --num-images 100 --cfg-scale 2 --out $run/samples > $OUT/sample-$name.log 2>&1
  for cfg in "$@"; do
    python eval/fid.py --input $run/final --ref $DATA/train --num-samples $n --cfg-scale $cfg \
      --report $run/fd-cfg$cfg.json >> $OUT/fd-$name.log 2>&1
    reports+=($run/fd-cfg$cfg.json)
  done
  python eval/generator_result.py --run $run --samples $(ls -d $run/samples/*/ | head -1) --fd-report "${reports[@]}" \
    --name $name --results-dir $RESULTS \
    --command "DATA=... STEP=$STEP GEN_MIN=$GEN_MIN ROW_MIN=$ROW_MIN bash eval/gpu/diffusion_ar.sh" > /dev/null
  cp $run/metrics.jsonl $OUT/metrics-$name.jsonl
}

train() {  # $1: run name, $2: minutes, then overrides
  local name=$1 minutes=$2
  shift 2
  python train.py generator --recipe generators/cifar10-diffusion-ar.yaml $D train.out_dir=runs/$name \
    train.time_limit_minutes=$minutes "$@" $EXTRA > $OUT/train-$name.log 2>&1
}

if [ "$STEP" = main ]; then
  train cifar10-diffusion-ar $GEN_MIN
  evaluate cifar10-diffusion-ar $NUM_FD 2 3
fi
if [ "$STEP" = rows ]; then  # both trainings side by side, then one evaluation after the other
  train cifar10-diffusion-ar-flow-mlp $ROW_MIN model.head=flow_mlp "model.head_options={width: 512, depth: 3, steps: 25}" &
  a=$!
  train cifar10-diffusion-ar-unit4 $ROW_MIN model.unit_size=4 &
  b=$!
  wait $a
  wait $b
  evaluate cifar10-diffusion-ar-flow-mlp $NUM_ROW_FD 2
  evaluate cifar10-diffusion-ar-unit4 $NUM_ROW_FD 2
fi
if [ "$STEP" = units ]; then  # three trainings side by side, then one evaluation after the other
  pids=()
  for k in 1 2 4; do
    train cifar10-diffusion-ar-k$k $ROW_MIN model.unit_size=$k &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait $p; done
  for k in 1 2 4; do evaluate cifar10-diffusion-ar-k$k $NUM_ROW_FD 2; done
  python bench/diffusion_ar.py --name bench-diffusion-ar-units --unit-sizes 1 2 4 --modes compiled \
    --sample-batches 256 64 8 --train-batches 256 $BENCH > $OUT/bench-units.log 2>&1
  cp results/bench-diffusion-ar-units.json $RESULTS/ 2>/dev/null || true
fi
if [ "$STEP" = head_steps ]; then
  [ -d runs/cifar10-diffusion-ar/final ] || train cifar10-diffusion-ar $GEN_MIN
  ASSET=runs/cifar10-diffusion-ar/final NAME=cifar10-diffusion-ar-head-steps NUM_FD=$NUM_FD RESULTS=$RESULTS \
    SETTINGS="--cfg-scale 2
--cfg-scale 2 --head-steps 50
--cfg-scale 2 --head-steps 25
--cfg-scale 2 --head-steps 50 --head-solver ddim
--cfg-scale 2 --head-steps 25 --head-solver ddim" bash eval/gpu/sampling_sweep.sh > $OUT/head-steps.log 2>&1
fi
