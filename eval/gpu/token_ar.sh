#!/usr/bin/env bash
# How visgen/assets/cifar10-token-ar was made: the CIFAR-10 token AR recipe trained on one GPU (time-limited by the
# recipe), exported in fp16, then sampled once with sample.py for the grid and images/s.
# Usage: DATA=/path/to/cifar10 (with train/ and test/) OUT=/tmp/out bash eval/gpu/token_ar.sh [overrides]
set -euo pipefail
export TQDM_MININTERVAL=30
python train.py generator --recipe generators/cifar10-token-ar.yaml data.path=$DATA/train val.path=$DATA/test "$@" \
  > $OUT/train-token-ar.log 2>&1
python -c "import sys, torch; from visgen.checkpoint import load_model; \
load_model(sys.argv[1], ema=True).save_pretrained(sys.argv[2], dtype=torch.float16)" \
  runs/cifar10-token-ar/final visgen/assets/cifar10-token-ar
python sample.py --checkpoint visgen/assets/cifar10-token-ar --num-images 100 --cfg-scale 2 --out runs/samples
