#!/usr/bin/env bash
# Sampling speed as users get it (the default settings, as sample.py / eval/fid.py run a 10k-image job), in one call:
#   token AR at GPT-B size (bench/token_ar.py): the default mode beside the whole-loop CUDA graph (default_loop) and
#     compiled_triton, tokens only and with decode, batch 8 / 64 / 256, the default's first batch also in fresh
#     processes (cold and warm compile caches) -> results/$TOKEN.json;
#   continuous tokens at MAR-B size (bench/diffusion_ar.py), unit 1, batch 64 / 256: the default mode with the head's
#     100 steps and with 50 -> results/$DIFF.json, default_loop -> results/$DIFF-loop.json; then, last (it compiles
#     longest), compile_mode max-autotune-no-cudagraphs (the head's narrow products tuned per shape)
#     -> results/$DIFF-autotuned.json, and token AR's compiled_triton autotuned at batch 8 / 64 -> $TOKEN-autotuned.
# EXTRA: flags for both benches (a CPU dry run: EXTRA="--tiny --sample-batches 2").
# Usage: OUT=/tmp/out bash eval/gpu/sampling_speed.sh
set -euo pipefail
TOKEN=${TOKEN:-bench-token-ar} DIFF=${DIFF:-bench-diffusion-ar} EXTRA=${EXTRA:-}
python bench/token_ar.py --name $TOKEN --modes default default_loop compiled_triton --cold default --train-batches \
  $EXTRA > $OUT/token-ar.log 2>&1
python bench/diffusion_ar.py --name $DIFF --modes default --head-steps 0 50 --unit-sizes 1 --sample-batches 64 256 \
  --train-batches $EXTRA > $OUT/diffusion-ar.log 2>&1
python bench/diffusion_ar.py --name $DIFF-loop --modes default_loop --unit-sizes 1 --sample-batches 64 256 \
  --train-batches $EXTRA > $OUT/diffusion-ar-loop.log 2>&1
python bench/diffusion_ar.py --name $DIFF-autotuned --modes autotuned --unit-sizes 1 --sample-batches 64 256 \
  --train-batches $EXTRA > $OUT/diffusion-ar-autotuned.log 2>&1
python bench/token_ar.py --name $TOKEN-autotuned --modes autotuned_triton --sample-batches 8 64 --train-batches \
  $EXTRA > $OUT/token-ar-autotuned.log 2>&1
