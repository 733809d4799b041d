#!/usr/bin/env bash
# How the FD/IS evidence of the harness issue was made: train the CIFAR-10 classifier behind `cifar10cls`, then the
# floor (CIFAR-10 test vs train), the bundled tokenizers' reconstruction FD, and the bundled token generator's FD/IS.
# Usage: DATA=/path/to/cifar10 (with train/ and test/) bash eval/gpu/harness.sh [classifier epochs; 0 keeps the bundled one]
set -euo pipefail
export TQDM_DISABLE=1
if [ "${1:-15}" != 0 ]; then
  python eval/train_classifier.py --data $DATA/train --val $DATA/test --out visgen/assets/cifar10-classifier --epochs ${1:-15}
fi
python eval/fid.py --input $DATA/test --ref $DATA/train --num-samples 10000 --name cifar10-fd-floor
for t in vq kl; do
  python eval/tokenizer_recon.py visgen/assets/cifar10-$t --data $DATA/test --fd-extractor cifar10cls \
    --name cifar10-$t-tokenizer-rfd
done
python eval/fid.py --input visgen/assets/cifar10-token-ar --ref $DATA/train --num-samples 10000 --cfg-scale 2 \
  --name cifar10-token-ar-fd
