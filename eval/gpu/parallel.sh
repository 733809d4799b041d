#!/usr/bin/env bash
# The parallel schedule (PAR) against raster order at equal training minutes on one GPU (results/cifar10-{token,
# diffusion}-par.*, results/cifar10-{token,diffusion}-raster.*, results/bench-parallel.json):
#   STEP=token or STEP=diffusion: the raster recipe and the parallel one of that kind side by side for MIN minutes
#     each (same model, same data, same settings), then each sampled for its grid and scored by the harness (NUM_FD
#     samples, guidance 2, memorisation report) one after the other; the parallel result also carries both FDs as
#     fd_cifar10cls_{raster,par}_{kind};
#   STEP=bench: bench/parallel.py (images/s at batch 8, 64, 256 for k = 4 and 8 against raster, both kinds).
# EXTRA: overrides for every training run, RESULTS: where results go (a CPU dry run: DATA=tests/data/cifar10
# EXTRA="train.steps=2 train.log_every=1 train.eval_every=1
# train.batch_size=8 train.time_limit_minutes=0 train.num_workers=0 train.val_images=16 model.backbone={\"preset\":\"tiny\"}"
# NUM_FD=8 RESULTS=/tmp/r BENCH="--tiny --sample-batches 2").
# Usage: DATA=/path/to/cifar10 OUT=/tmp/out STEP=token bash eval/gpu/parallel.sh; then STEP=diffusion, STEP=bench
set -euo pipefail
export TQDM_MININTERVAL=30
MIN=${MIN:-5} NUM_FD=${NUM_FD:-10000} EXTRA=${EXTRA:-} RESULTS=${RESULTS:-results} BENCH=${BENCH:-}
export VISGEN_RESULTS=$RESULTS  # the benches' results too
D="data.path=$DATA/train val.path=$DATA/test"
CMD="DATA=... MIN=$MIN STEP=$STEP bash eval/gpu/parallel.sh"

train() {  # $1: recipe name
  python train.py generator --recipe generators/cifar10-$1.yaml $D train.time_limit_minutes=$MIN $EXTRA \
    > $OUT/train-$1.log 2>&1
}

evaluate() {  # $1: run name (runs/cifar10-$1) $2: result name
  local run=runs/cifar10-$1
  rm -rf $run/samples
  python sample.py --checkpoint $run/final --num-images 100 --cfg-scale 2 --out $run/samples > $OUT/sample-$1.log 2>&1
  python eval/fid.py --input $run/final --ref $DATA/train --num-samples $NUM_FD --cfg-scale 2 \
    --report $run/fd-cfg2.json > $OUT/fd-$1.log 2>&1
  python eval/generator_result.py --run $run --samples $(ls -d $run/samples/*/ | head -1) --fd-report $run/fd-cfg2.json \
    --name cifar10-$2 --results-dir $RESULTS --command "$CMD" > /dev/null
}

if [ "$STEP" = bench ]; then
  python bench/parallel.py --name bench-parallel $BENCH > $OUT/bench-parallel.log 2>&1
  exit 0
fi
raster=$([ "$STEP" = token ] && echo token-ar || echo diffusion-ar)
train $raster &
a=$!
train $STEP-par &
b=$!
wait $a
wait $b
evaluate $raster $STEP-raster
evaluate $STEP-par $STEP-par
python - "$RESULTS" "$STEP" <<'EOF'
import json, sys
from pathlib import Path
results, kind = Path(sys.argv[1]), sys.argv[2]
fd = {s: json.loads((results / f"cifar10-{kind}-{s}.json").read_text())["metrics"]["fd_cifar10cls"] for s in ("raster", "par")}
path = results / f"cifar10-{kind}-par.json"
record = json.loads(path.read_text())
record["metrics"].update({f"fd_cifar10cls_{s}_{kind}": v for s, v in fd.items()})
path.write_text(json.dumps(record, indent=2) + "\n")
EOF
