#!/usr/bin/env bash
# How results/cifar10-{vq,kl}-tokenizer.* and visgen/assets/cifar10-{vq,kl} were made: both tokenizers trained
# side by side on one GPU (each at most 7.5 minutes), evaluated on CIFAR-10 test, weights stored in fp16.
# Usage: DATA=/path/to/cifar10 (with train/ and test/) OUT=/tmp/out bash eval/gpu/tokenizers.sh [overrides]
set -euo pipefail
export TQDM_MININTERVAL=20
for t in vq kl; do
  python train.py tokenizer --recipe tokenizers/cifar10-$t.yaml data.path=$DATA/train val.path=$DATA/test \
    train.out_dir=runs/cifar10-$t "$@" > $OUT/train-$t.log 2>&1 &
done
wait
for t in vq kl; do
  python -c "import sys; from visgen.checkpoint import export_model; export_model(*sys.argv[1:], ema=False)" \
    runs/cifar10-$t/final visgen/assets/cifar10-$t
  python eval/tokenizer_recon.py visgen/assets/cifar10-$t --data $DATA/test --name cifar10-$t-tokenizer \
    --extra-metrics runs/cifar10-$t/final/metrics.json
done
