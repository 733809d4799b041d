#!/usr/bin/env bash
# Sampling speed as users get it: the sampler's defaults as sample.py / eval/fid.py run them for a 10k-image job
# (compile="auto", cuda_graph=True), the first batch of each size also in fresh processes (cold compile caches, then
# warm), in one call:
#   token AR at GPT-B size, tokens only, batch 8 / 64 / 256 (bench/token_ar.py) -> results/$TOKEN.json;
#   VAR-d16 with decode, batch 8 / 64 / 256 (bench/var.py; fresh processes at COLD_VAR batches, VAR compiles longest)
#     -> results/$VAR.json;
#   continuous tokens at MAR-B size, unit 1, batch 64 / 256, the head's 100 steps and 50 (bench/diffusion_ar.py)
#     -> results/$DIFF.json.
#   and, when BENCHES names it, decode: VAR's decoder alone in each layout, with cuDNN timing each convolution's
#     algorithms at a shape's first call and with its heuristics (bench/decode.py) -> results/$DECODE.json.
# TOKEN_MODES: token AR's modes (default: default; e.g. "default autotuned_triton" to weigh max-autotune's fused matrix
# products beside it, in the same run).
# BENCHES: which of token, var, diffusion, decode to run (default: the first three; one that fails does not stop the
# next).
# EXTRA: flags for token, var and diffusion, DECODE_EXTRA for decode (a CPU dry run: EXTRA="--tiny --sample-batches 2"
# COLD_VAR=2 DECODE_EXTRA="--tiny --batch 2" RESULTS=/tmp/r).
# Usage: OUT=/tmp/out bash eval/gpu/sampling_speed.sh
set -euo pipefail
TOKEN=${TOKEN:-bench-token-ar} VAR=${VAR:-bench-var} DIFF=${DIFF:-bench-diffusion-ar} DECODE=${DECODE:-bench-decode}
EXTRA=${EXTRA:-} DECODE_EXTRA=${DECODE_EXTRA:-}
export VISGEN_RESULTS=${RESULTS:-results}  # where the benches write (RESULTS=/tmp/r in a dry run)
COLD_VAR=${COLD_VAR:-256} TOKEN_MODES=${TOKEN_MODES:-default}
BENCHES=${BENCHES:-token var diffusion} failed=0
run() {  # $1: the bench's name in BENCHES; a bench that fails is counted and the next still runs
  case " $BENCHES " in *" $1 "*) ;; *) return 0 ;; esac
  shift
  "$@" || { echo "failed: $*" >&2; failed=$((failed + 1)); }
}
run token python bench/token_ar.py --name $TOKEN --modes $TOKEN_MODES --cold default --train-batches $EXTRA \
  > $OUT/token-ar.log 2>&1
run var python bench/var.py --name $VAR --sample-modes default --cold default --cold-batches $COLD_VAR \
  --train-batches $EXTRA > $OUT/var.log 2>&1
run diffusion python bench/diffusion_ar.py --name $DIFF --modes default --head-steps 0 50 --unit-sizes 1 \
  --sample-batches 64 256 --cold default --train-batches $EXTRA > $OUT/diffusion-ar.log 2>&1
run decode python bench/decode.py --name $DECODE $DECODE_EXTRA > $OUT/decode.log 2>&1
exit $failed
