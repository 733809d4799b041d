#!/usr/bin/env bash
# The bundled VQ's decoder fine-tuned on its own tokens (tokenizers/cifar10-vq-decoder.yaml, TOK_MIN minutes), its
# reconstruction FD beside the bundled decoder's in the same run, and the bundled token model decoding through it
# (eval/swap_decoder.py) scored by the harness on NUM_FD samples with the memorisation report, at the sampling the
# bundled model's sweep found best (CFG flags): results/cifar10-vq-decoder-tokenizer.*,
# results/cifar10-vq-tokenizer-rfd.* (re-run), results/cifar10-token-ar-vq-decoder.*.
# Usage: DATA=/path/to/cifar10 OUT=/tmp/out bash eval/gpu/vq_decoder.sh [recipe overrides]
# (a CPU dry run: DATA=tests/data/cifar10 NUM_FD=16 RESULTS=/tmp/r bash eval/gpu/vq_decoder.sh train.steps=2
# train.batch_size=8 train.num_workers=0 train.val_images=16 train.eval_every=0 train.sample_every=0 train.log_every=1)
# STAGE=train only trains, STAGE=eval only evaluates the run (eval/gpu/bundled_token_ar.sh runs them apart).
set -euo pipefail
export TQDM_MININTERVAL=30
NUM_FD=${NUM_FD:-10000} RESULTS=${RESULTS:-results} TOK_MIN=${TOK_MIN:-4} CFG=${CFG:---cfg-scale 4 --cfg-schedule linear}
run=runs/cifar10-vq-decoder gen=runs/cifar10-token-ar-vq-decoder
CMD="DATA=... TOK_MIN=$TOK_MIN bash eval/gpu/vq_decoder.sh $*"
STAGE=${STAGE:-all}  # train, eval or all
if [ "$STAGE" != eval ]; then
  python train.py tokenizer --recipe tokenizers/cifar10-vq-decoder.yaml data.path=$DATA/train val.path=$DATA/test \
    train.out_dir=$run train.time_limit_minutes=$TOK_MIN "$@" > $OUT/train-vq-decoder.log 2>&1
fi
[ "$STAGE" = train ] && exit 0
python eval/tokenizer_recon.py $run/final --data $DATA/test --fd-extractor cifar10cls --name cifar10-vq-decoder-tokenizer \
  --results-dir $RESULTS --extra-metrics $run/final/metrics.json > $OUT/recon-vq-decoder.log 2>&1
python eval/tokenizer_recon.py visgen/assets/cifar10-vq --data $DATA/test --fd-extractor cifar10cls \
  --name cifar10-vq-tokenizer-rfd --results-dir $RESULTS > $OUT/recon-vq.log 2>&1
python eval/swap_decoder.py --generator ${ASSET:-visgen/assets/cifar10-token-ar} --tokenizer $run/final --out $gen \
  > $OUT/swap.log 2>&1
rm -rf $gen-samples
python sample.py --checkpoint $gen --num-images 100 $CFG --out $gen-samples > $OUT/sample-token-ar-vq-decoder.log 2>&1
python eval/fid.py --input $gen --ref $DATA/train --num-samples $NUM_FD $CFG --name cifar10-token-ar-vq-decoder \
  --results-dir $RESULTS > $OUT/fd-token-ar-vq-decoder.log 2>&1
cp "$(ls -d $gen-samples/*/ | head -1)grid.png" $RESULTS/cifar10-token-ar-vq-decoder.png
cp $run/metrics.jsonl $OUT/metrics-vq-decoder.jsonl
