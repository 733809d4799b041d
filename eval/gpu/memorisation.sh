#!/usr/bin/env bash
# How the memorisation evidence was made: the floor (CIFAR-10 test against train) and the bundled token generator,
# each scored by eval/fid.py with its memorisation report, and the trainer's cost over a bare loop (bench/trainer.py).
# Usage: DATA=/path/to/cifar10 (with train/ and test/) RESULTS=results bash eval/gpu/memorisation.sh
set -euo pipefail
export TQDM_DISABLE=1
RESULTS=${RESULTS:-results}
python eval/fid.py --input $DATA/test --ref $DATA/train --num-samples 10000 --name cifar10-fd-floor \
  --results-dir $RESULTS
python eval/fid.py --input visgen/assets/cifar10-token-ar --ref $DATA/train --num-samples 10000 --cfg-scale 2 \
  --name cifar10-token-ar-fd --results-dir $RESULTS
python bench/trainer.py --name bench-trainer
