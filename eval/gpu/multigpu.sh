#!/usr/bin/env bash
# Several GPUs (a host with 2): one STEP a call, in this order (runs/ must survive between calls of one machine):
#   STEP=bench  bench/multigpu.py: the trainer's tokens/s on 1 and 2 GPUs at one per-GPU batch, GPT-B tokens
#               (results/bench-multigpu.json, ddp_scaling_efficiency).
#   STEP=ddp    a recipe (RECIPE, default the CIFAR-10 token AR one; the VAR one with
#               RECIPE=generators/cifar10-var.yaml EXTRA=model.tokenizer=<a trained msvq's final/>) for STEPS
#               steps at one global batch (GLOBAL) on 1 GPU and on 2 under
#               configs/accelerate/ddp-2gpu.yaml: both metrics.jsonl to $OUT and the largest gap of their logged
#               losses; then the 2-GPU run's checkpoint resumed on 1 GPU, the 1-GPU run's on 2, RESUME steps each.
#   STEP=fsdp   a GPT-L-sized token model (model.backbone=gpt-l) under configs/accelerate/fsdp-2gpu.yaml for STEPS
#               steps with a checkpoint, resumed on 1 GPU without FSDP and again on 2 with it.
#   STEP=fid    eval/fid.py on the bundled token model on 1 process and on 2: the same FD, images/s of each.
# Usage: DATA=/path/to/cifar10 OUT=/tmp/out STEP=bench bash eval/gpu/multigpu.sh (under eval/gpu/packed.sh on the
# device). A CPU check: DATA=tests/data/cifar10 CPU=1 STEPS=4 GLOBAL=8 RESUME=2 LOG_EVERY=1 NUM_FD=16 STEP=ddp ...
set -euo pipefail
export TQDM_MININTERVAL=30
STEPS=${STEPS:-300} GLOBAL=${GLOBAL:-256} RESUME=${RESUME:-50} NUM_FD=${NUM_FD:-10000} RESULTS=${RESULTS:-results}
LOG_EVERY=${LOG_EVERY:-10}
D="data.path=$DATA/train val.path=$DATA/test"
COMMON="train.log_every=$LOG_EVERY train.eval_every=0 train.sample_every=0 train.time_limit_minutes=0 train.seed=0"
if [ -n "${CPU:-}" ]; then  # two gloo processes
  export ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1
  TWO="python -m torch.distributed.run --standalone --nproc_per_node=2"
  TWO_FSDP=$TWO  # accelerate 1.x prepares FSDP only on GPUs: the CPU check runs the fsdp step data-parallel
  COMMON="$COMMON train.num_workers=0 train.val_images=8 tokenizer.cache=false"
else
  TWO="accelerate launch --config_file configs/accelerate/ddp-2gpu.yaml"
  TWO_FSDP="accelerate launch --config_file configs/accelerate/fsdp-2gpu.yaml"
fi
ONE="python"
TOKEN="generators/cifar10-token-ar.yaml" RECIPE=${RECIPE:-generators/cifar10-token-ar.yaml} EXTRA=${EXTRA:-}

train() {  # $1: launcher, $2: recipe, $3: run folder, $4: steps, $5: batch per process, $6: log; then overrides
  local launch=$1 recipe=$2 out=$3 steps=$4 batch=$5 log=$6
  shift 6
  $launch train.py generator --recipe $recipe $D $COMMON train.out_dir=$out train.steps=$steps \
    train.batch_size=$batch "$@" > $OUT/$log 2>&1
}

gap() {  # the largest difference of the losses two runs logged at the same steps
  python - "$1/metrics.jsonl" "$2/metrics.jsonl" <<'EOF'
import json, sys
curves = [{r["step"]: r["loss"] for r in map(json.loads, open(p)) if "loss" in r} for p in sys.argv[1:]]
steps = sorted(set(curves[0]) & set(curves[1]))
gaps = [abs(curves[0][s] - curves[1][s]) for s in steps]
print(json.dumps({"steps_compared": len(steps), "max_loss_gap": max(gaps), "mean_loss_gap": sum(gaps) / len(gaps),
                  "final_losses": [curves[0][steps[-1]], curves[1][steps[-1]]]}))
EOF
}

case "$STEP" in
bench)
  python bench/multigpu.py --name bench-multigpu ${CPU:+--tiny --cpu --train-batches 4 --steps 2} > $OUT/bench.log 2>&1
  cp results/bench-multigpu.json $RESULTS/ 2>/dev/null || true
  ;;
ddp)
  rm -rf runs/mg-ddp-1 runs/mg-ddp-2
  train "$ONE" $RECIPE runs/mg-ddp-1 $STEPS $GLOBAL ddp-1.log train.ckpt_every=$STEPS $EXTRA
  train "$TWO" $RECIPE runs/mg-ddp-2 $STEPS $((GLOBAL / 2)) ddp-2.log train.ckpt_every=$STEPS $EXTRA
  gap runs/mg-ddp-1 runs/mg-ddp-2 | tee $OUT/ddp-gap.json
  cp runs/mg-ddp-1/metrics.jsonl $OUT/ddp-1.jsonl
  cp runs/mg-ddp-2/metrics.jsonl $OUT/ddp-2.jsonl
  # across: the 2-process checkpoint on 1 process, the 1-process one on 2 (same global batch)
  train "$ONE" $RECIPE runs/mg-ddp-2 $((STEPS + RESUME)) $GLOBAL ddp-2-on-1.log train.ckpt_every=0 $EXTRA
  train "$TWO" $RECIPE runs/mg-ddp-1 $((STEPS + RESUME)) $((GLOBAL / 2)) ddp-1-on-2.log train.ckpt_every=0 $EXTRA
  grep -h "resuming a\|resumed from" $OUT/ddp-2-on-1.log $OUT/ddp-1-on-2.log || true
  gap runs/mg-ddp-1 runs/mg-ddp-2 | tee $OUT/ddp-gap-after-resume.json
  ;;
fsdp)
  rm -rf runs/mg-fsdp
  L="train.ckpt_every=$STEPS"
  if [ -z "${CPU:-}" ]; then L="model.backbone=gpt-l $L"; fi
  train "$TWO_FSDP" $TOKEN runs/mg-fsdp $STEPS $((GLOBAL / 2)) fsdp-2.log $L
  cp runs/mg-fsdp/metrics.jsonl $OUT/fsdp-2.jsonl
  train "$ONE" $TOKEN runs/mg-fsdp $((STEPS + RESUME)) $GLOBAL fsdp-on-1.log $L
  train "$TWO_FSDP" $TOKEN runs/mg-fsdp $((STEPS + 2 * RESUME)) $((GLOBAL / 2)) fsdp-on-2-again.log $L
  cp runs/mg-fsdp/metrics.jsonl $OUT/fsdp-all.jsonl
  ;;
fid)
  for n in 1 2; do
    if [ $n = 1 ]; then L=$ONE; else L=$TWO; fi
    $L eval/fid.py --input visgen/assets/cifar10-token-ar --ref $DATA/train --num-samples $NUM_FD --cfg-scale 2 \
      --no-card --report $OUT/fid-$n.json > $OUT/fid-$n.log 2>&1
  done
  cat $OUT/fid-1.json $OUT/fid-2.json
  ;;
*)
  echo "STEP must be bench, ddp, fsdp or fid" >&2
  exit 2
  ;;
esac
