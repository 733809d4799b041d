#!/usr/bin/env bash
# The bundled token model rebuilt (#31) in one device call: the CIFAR-10 token recipe (eval/gpu/token_ar.sh, with
# GEN overrides: by default the whole loss in CUDA graphs, the ten-crop token cache, which held off overfitting in a
# CPU proxy (results/crops-cpu-proxy.json), and twice the steps within 4.5 minutes, the best validation loss kept)
# and the bundled VQ's decoder fine-tuned on its tokens (eval/gpu/vq_decoder.sh, TOK_MIN minutes) train side by side
# on the one GPU; then the new token model is exported to visgen/assets/cifar10-token-ar and scored
# (results/cifar10-token-ar.*), and scored again decoding through the new decoder, at the same guidance
# (results/cifar10-token-ar-vq-decoder.*, beside the decoders' reconstruction FDs); the asset keeps the new decoder
# where that FD is the lower.
# The two trainings share the GPU, so their images/s is not the trainer's speed (bench/trainer.py measures that).
# (a CPU dry run: DATA=tests/data/cifar10 NUM_FD=16 RESULTS=/tmp/r ASSET=/tmp/asset GEN="train.steps=2
# train.batch_size=8 train.eval_every=1 train.num_workers=0 train.val_images=16" TOK="train.steps=2 train.batch_size=8
# train.num_workers=0 train.val_images=16 train.eval_every=0 train.sample_every=0 train.log_every=1")
# Usage: DATA=/path/to/cifar10 OUT=/tmp/out bash eval/gpu/bundled_token_ar.sh
set -euo pipefail
GEN=${GEN:-train.compile=graph tokenizer.crops=5 train.steps=16000 train.time_limit_minutes=4.5} TOK=${TOK:-}
TOK_MIN=${TOK_MIN:-4}
export ASSET=${ASSET:-visgen/assets/cifar10-token-ar} CFG="--cfg-scale 2"
# (a trainer that fails under train.compile=graph trains again without it, resuming any checkpoint; the run's
# recipe.json says which)
(STAGE=train bash eval/gpu/token_ar.sh $GEN || { cp $OUT/train-token-ar.log $OUT/train-token-ar-failed.log
  STAGE=train bash eval/gpu/token_ar.sh ${GEN/train.compile=graph/}; }) &
a=$!
STAGE=train TOK_MIN=$TOK_MIN bash eval/gpu/vq_decoder.sh $TOK &
b=$!
wait $a
wait $b
STAGE=eval bash eval/gpu/token_ar.sh $GEN
STAGE=eval TOK_MIN=$TOK_MIN bash eval/gpu/vq_decoder.sh $TOK
# the bundle: the token model with whichever decoder gave the lower FD, and results/cifar10-token-ar.json its result
python eval/bundle_token_ar.py --swapped runs/cifar10-token-ar-vq-decoder --asset $ASSET --results-dir ${RESULTS:-results}
