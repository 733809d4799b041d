#!/usr/bin/env bash
# Sampling speed as users get it (the default settings, as sample.py / eval/fid.py run a 10k-image job) and with
# cuda_graph="unit" (unit 0 and a later unit captured, the later one replayed per unit), in one call:
#   token AR at GPT-B size (bench/token_ar.py): default (the whole loop in one graph) beside default_unit, tokens only
#     and with decode, batch 8 / 64 / 256, both first batches also in fresh processes (cold and warm compile caches),
#     and the unit graphs' tokens against the loop graph's -> results/$TOKEN.json;
#   continuous tokens at MAR-B size (bench/diffusion_ar.py), unit 1, batch 64 / 256: default_unit with the head's 100
#     steps and with 50 -> results/$DIFF.json, default -> results/$DIFF-loop.json; then, last (they compile longest),
#     compile_mode max-autotune-no-cudagraphs: the diffusion head (autotuned_unit) -> results/$DIFF-autotuned.json
#     and token AR (autotuned_triton, batch 8 / 64) -> results/$TOKEN-autotuned.json.
# EXTRA: flags for every bench (a CPU dry run: EXTRA="--tiny --sample-batches 2").
# Usage: OUT=/tmp/out bash eval/gpu/sampling_speed.sh
set -euo pipefail
TOKEN=${TOKEN:-bench-token-ar} DIFF=${DIFF:-bench-diffusion-ar} EXTRA=${EXTRA:-}
python bench/token_ar.py --name $TOKEN --modes default default_unit --cold default default_unit --train-batches \
  $EXTRA > $OUT/token-ar.log 2>&1
python bench/diffusion_ar.py --name $DIFF --modes default_unit --head-steps 0 50 --unit-sizes 1 \
  --sample-batches 64 256 --train-batches $EXTRA > $OUT/diffusion-ar.log 2>&1
python bench/diffusion_ar.py --name $DIFF-loop --modes default --unit-sizes 1 --sample-batches 64 256 \
  --train-batches $EXTRA > $OUT/diffusion-ar-loop.log 2>&1
python bench/diffusion_ar.py --name $DIFF-autotuned --modes autotuned_unit --unit-sizes 1 --sample-batches 64 256 \
  --train-batches $EXTRA > $OUT/diffusion-ar-autotuned.log 2>&1
python bench/token_ar.py --name $TOKEN-autotuned --modes autotuned_triton --sample-batches 8 64 --train-batches \
  $EXTRA > $OUT/token-ar-autotuned.log 2>&1
