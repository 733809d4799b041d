#!/usr/bin/env bash
# How visgen/assets/cifar10-token-ar was made: the CIFAR-10 token AR recipe trained on one GPU (time-limited, the
# best validation loss kept), exported in fp16 (EMA weights), sampled once with sample.py for the grid and images/s,
# scored by the harness on NUM_FD samples with the memorisation report, and written up as results/cifar10-token-ar.*.
# Usage: DATA=/path/to/cifar10 (with train/ and test/) OUT=/tmp/out bash eval/gpu/token_ar.sh [overrides]
# (RUN and ASSET put the run and its export elsewhere, RESULTS the result, to try a setting without replacing the
# bundled model.)
# (a CPU dry run: DATA=tests/data/cifar10 NUM_FD=16 RESULTS=/tmp/r bash eval/gpu/token_ar.sh train.steps=2
# train.batch_size=8 train.eval_every=1 train.num_workers=0 train.val_images=16)
# STAGE=train only trains, STAGE=eval only exports and evaluates the run (eval/gpu/bundled_token_ar.sh runs them apart).
set -euo pipefail
export TQDM_MININTERVAL=30
NUM_FD=${NUM_FD:-10000} RESULTS=${RESULTS:-results} ASSET=${ASSET:-visgen/assets/cifar10-token-ar}
run=${RUN:-runs/cifar10-token-ar}
STAGE=${STAGE:-all}  # train, eval or all
if [ "$STAGE" != eval ]; then
  python train.py generator --recipe generators/cifar10-token-ar.yaml data.path=$DATA/train val.path=$DATA/test \
    train.out_dir=$run "$@" > $OUT/train-token-ar.log 2>&1
fi
[ "$STAGE" = train ] && exit 0
python -c "import sys; from visgen.checkpoint import export_model; export_model(*sys.argv[1:])" $run/final $ASSET
rm -rf $run/samples
python sample.py --checkpoint $ASSET --num-images 100 --cfg-scale 2 --out $run/samples \
  > $OUT/sample-token-ar.log 2>&1
python eval/fid.py --input $ASSET --ref $DATA/train --num-samples $NUM_FD --cfg-scale 2 \
  --report $run/fd-cfg2.json > $OUT/fd-token-ar.log 2>&1
python eval/generator_result.py --run $run --samples $(ls -d $run/samples/*/ | head -1) --fd-report $run/fd-cfg2.json \
  --name cifar10-token-ar --results-dir $RESULTS --command "DATA=... bash eval/gpu/token_ar.sh $*" > /dev/null
