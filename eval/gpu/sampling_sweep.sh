#!/usr/bin/env bash
# Sampling settings of one checkpoint, each scored by the harness on NUM_FD samples with the memorisation report,
# compared in results/NAME.json (eval/sweep.py). SETTINGS: eval/fid.py sampling flags, one setting per line.
# Usage: DATA=/path/to/cifar10 OUT=/tmp/out ASSET=visgen/assets/cifar10-token-ar NAME=cifar10-token-ar-sampling \
#   bash eval/gpu/sampling_sweep.sh
# (a CPU dry run: DATA=tests/data/cifar10 NUM_FD=16 RESULTS=/tmp/r bash eval/gpu/sampling_sweep.sh)
set -euo pipefail
export TQDM_MININTERVAL=30
ASSET=${ASSET:-visgen/assets/cifar10-token-ar} NAME=${NAME:-cifar10-token-ar-sampling} NUM_FD=${NUM_FD:-10000}
RESULTS=${RESULTS:-results} SWEEP=${SWEEP:-runs/sweep-$NAME}
SETTINGS=${SETTINGS:-"--cfg-scale 2
--cfg-scale 3 --cfg-schedule linear
--cfg-scale 4 --cfg-schedule linear
--cfg-scale 5 --cfg-schedule linear
--cfg-scale 2 --top-k 512
--cfg-scale 2 --top-k 256
--cfg-scale 2 --temperature 0.95
--cfg-scale 4 --cfg-schedule linear --top-k 512"}
rm -rf $SWEEP && mkdir -p $SWEEP
while IFS= read -r s; do
  [ -n "$s" ] || continue
  label=$(echo "$s" | tr -d ' -')
  # shellcheck disable=SC2086  # the setting is a list of flags
  python eval/fid.py --input $ASSET --ref $DATA/train --num-samples $NUM_FD $s --no-card --report $SWEEP/$label.json \
    > $OUT/fd-$label.log 2>&1
done <<< "$SETTINGS"
python eval/sweep.py --reports $SWEEP/*.json --name $NAME --results-dir $RESULTS \
  --command "DATA=... ASSET=$ASSET NUM_FD=$NUM_FD bash eval/gpu/sampling_sweep.sh (settings: $(echo "$SETTINGS" | paste -sd ';'))"
