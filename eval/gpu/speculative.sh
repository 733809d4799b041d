#!/usr/bin/env bash
# How results/bench-speculative.json was made (speculative decoding on trained CIFAR-10 models, one GPU):
#   STEP=train: three models side by side on the GPU: a GPT-B-sized token target (12 x 768) on the bundled VQ's
#               tokens (TOK_MIN minutes; its draft is the bundled cifar10-token-ar, 8 x 256), and two diffusion-head
#               models over the bundled KL tokenizer, the recipe's (8 x 256, head 512 x 3) as the CSpD target and a
#               smaller one (4 x 128, head 256 x 2) as its draft (DIFF_MIN minutes each; both sample with 25 head steps);
#   STEP=distill: a draft of the bundled model's size (8 x 256) distilled from the token target (distill.weight 0.5,
#               DRAFT_MIN minutes): its validation reports the held-out acceptance; STEP=discrete then uses it
#               (DRAFT=visgen/assets/cifar10-token-ar for the undistilled draft);
#   STEP=cspd_distill: the CSpD draft's size distilled from the diffusion target (the KL of its denoising steps from
#               the target's along the target's sampling paths, distill.weight CSPD_DISTILL_WEIGHT, DIFF_MIN minutes):
#               STEP=cspd with CSPD_DRAFT=runs/spec-diff-draft-distilled/final benches it;
#   STEP=feature: a FeatureDraft of the token target (one block on its features, generators/cifar10-feature-draft.yaml
#               through the trainer for FEATURE_MIN minutes; its validation logs the held-out acceptance);
#               STEP=discrete adds the method 'feature' when runs/spec-feature-draft/final exists;
#   STEP=discrete / STEP=cspd: bench/speculative.py for the token pair / the diffusion pair (images/s at batch 1, 8,
#               64 against the plain sampler in the same run, acceptance, FD with and without, and at batch 8 what
#               each method launches per token, with the profiler's tables in $OUT/profile-*.txt); BENCH: flags for
#               bench/speculative.py, by default --compile (the plain sampler and every method compiled alike, a
#               round one compiled graph; BENCH= times them eager; BENCH="--compile --decode-kernel triton" sends
#               the verifying passes and draft steps through the Triton rows kernel, NAME=... keeps both runs).
# Usage: DATA=/path/to/cifar10 OUT=/tmp/out STEP=train bash eval/gpu/speculative.sh; then STEP=discrete, STEP=cspd
# (a CPU dry run: DATA=tests/data/cifar10 EXTRA="train.steps=2 train.batch_size=8 train.time_limit_minutes=0"
# RESULTS=/tmp/r ...).
set -euo pipefail
export TQDM_MININTERVAL=30
BENCH=${BENCH---compile}
TOK_MIN=${TOK_MIN:-6.5} DIFF_MIN=${DIFF_MIN:-6} EXTRA=${EXTRA:-} NAME=${NAME:-bench-speculative}
export VISGEN_RESULTS=${RESULTS:-results}  # where the benches write (RESULTS=/tmp/r in a dry run)
DRAFT_MIN=${DRAFT_MIN:-5} DRAFT=${DRAFT:-runs/spec-token-draft/final}
CSPD_DRAFT=${CSPD_DRAFT:-runs/spec-diff-draft/final}
D="data.path=$DATA/train val.path=$DATA/test"
HEAD25="model.head_options.steps=25"

if [ "$STEP" = train ]; then
  python train.py generator --recipe generators/cifar10-token-ar.yaml $D train.out_dir=runs/spec-token-target \
    "model.backbone={preset: gpt-b}" train.lr=3e-4 train.time_limit_minutes=$TOK_MIN $EXTRA > $OUT/train-token-target.log 2>&1 &
  a=$!
  python train.py generator --recipe generators/cifar10-diffusion-ar.yaml $D train.out_dir=runs/spec-diff-target \
    $HEAD25 train.time_limit_minutes=$DIFF_MIN $EXTRA > $OUT/train-diff-target.log 2>&1 &
  b=$!
  python train.py generator --recipe generators/cifar10-diffusion-ar.yaml $D train.out_dir=runs/spec-diff-draft \
    "model.backbone={preset: cifar, n_layer: 4, n_head: 4, d_model: 128}" \
    "model.head_options={width: 256, depth: 2, steps: 25}" train.time_limit_minutes=$DIFF_MIN $EXTRA \
    > $OUT/train-diff-draft.log 2>&1 &
  c=$!
  wait $a; wait $b; wait $c
  for r in spec-token-target spec-diff-target spec-diff-draft; do
    cp runs/$r/metrics.jsonl $OUT/metrics-$r.jsonl || true; cp runs/$r/final/metrics.json $OUT/final-metrics-$r.json || true
  done
fi
if [ "$STEP" = distill ]; then
  python train.py generator --recipe generators/cifar10-token-ar.yaml $D train.out_dir=runs/spec-token-draft \
    distill.teacher=runs/spec-token-target/final distill.weight=0.5 train.time_limit_minutes=$DRAFT_MIN $EXTRA \
    > $OUT/train-token-draft.log 2>&1
  cp runs/spec-token-draft/metrics.jsonl $OUT/metrics-spec-token-draft.jsonl || true
  cp runs/spec-token-draft/final/metrics.json $OUT/final-metrics-spec-token-draft.json || true
fi
if [ "$STEP" = feature ]; then
  python train.py feature-draft --recipe generators/cifar10-feature-draft.yaml $D model.target=runs/spec-token-target/final \
    train.out_dir=runs/spec-feature-draft train.steps=100000 train.time_limit_minutes=${FEATURE_MIN:-3} $EXTRA \
    > $OUT/train-feature-draft.log 2>&1
  cp runs/spec-feature-draft/metrics.jsonl $OUT/metrics-spec-feature-draft.jsonl || true
fi
if [ "$STEP" = discrete ]; then
  feature=""
  if [ -d runs/spec-feature-draft/final ]; then feature="--feature-draft runs/spec-feature-draft/final"; fi
  python bench/speculative.py --target runs/spec-token-target/final --draft $DRAFT $feature \
    --ref $DATA/train --images 16 --name $NAME-discrete --profile-batches 8 --profile-table $OUT/profile-discrete.txt \
    $BENCH > $OUT/bench-discrete.log 2>&1
fi
if [ "$STEP" = cspd_distill ]; then
  python train.py generator --recipe generators/cifar10-diffusion-ar.yaml $D train.out_dir=runs/spec-diff-draft-distilled \
    "model.backbone={preset: cifar, n_layer: 4, n_head: 4, d_model: 128}" \
    "model.head_options={width: 256, depth: 2, steps: 25}" distill.teacher=runs/spec-diff-target/final \
    distill.weight=${CSPD_DISTILL_WEIGHT:-0.5} train.time_limit_minutes=$DIFF_MIN $EXTRA > $OUT/train-diff-draft-distilled.log 2>&1
  cp runs/spec-diff-draft-distilled/metrics.jsonl $OUT/metrics-spec-diff-draft-distilled.jsonl || true
fi
if [ "$STEP" = cspd ]; then
  python bench/speculative.py --cspd-target runs/spec-diff-target/final --cspd-draft $CSPD_DRAFT \
    --ref $DATA/train --images 16 --name $NAME-cspd --profile-batches 8 --profile-table $OUT/profile-cspd.txt \
    $BENCH > $OUT/bench-cspd.log 2>&1
fi
