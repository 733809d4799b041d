#!/usr/bin/env bash
# How results/moving-fmnist-video.json (+ .gif) is to be made (the video family on one GPU, three device calls):
#   (every step first writes Moving Fashion-MNIST from $FMNIST (10k / 1k clips, seeded) to $DATA where it is missing)
#   STEP=tokenizer: the frame tokenizer
#                   (tokenizers/moving-fmnist-kl.yaml) for TOK_MIN minutes;
#   STEP=generator: the FAR-style generator (generators/moving-fmnist-far.yaml) for GEN_MIN minutes, its cosine
#                   schedule over those minutes (train.budget_minutes: the run ends annealed; 8: with its start,
#                   compile and save, 9 can pass a 10-minute device call);
#   STEP=eval:      a GIF and grid; NUM clips scored by eval/fvd.py at 16 frames (fd_fmnistcls_frames, fvd_mfmnistvid,
#                   copies, dynamics against real and shuffled test clips) and at 32 (the window slides: per-frame FD
#                   and dynamics); NUM test clips predicted from their first 4 frames (eval/dynamics.py:
#                   prediction_error_px over the next 4, beside its floor and baselines); results/moving-fmnist-video.json
#                   + .gif (real test clips, the model's predictions of them and its own clips side by side);
#                   the motion scores at the guidance scales CFG_SWEEP (runs/.../dynamics-cfgG.json; none by default)
#                   and at the flow head's solvers and steps HEAD_SWEEP (dynamics-SOLVERSTEPS.json, own clips and
#                   test clips continued from their first frame; default heun:13 euler:25 heun:25);
#                   bench/video.py (results/bench-video.json: sampling, and training eager, compiled and as CUDA
#                   graphs, with the profiler's tables in $OUT/profile).
# EXTRA: overrides for both trainings; RESULTS: where results go; MAKE: flags for eval/make_moving_digits.py (a CPU dry
# run: FMNIST=tests/data/fashion-mnist MAKE="--train 64 --test 32" DATA=/tmp/mf TOK_MIN=0 GEN_MIN=0 NUM=8
# EXTRA="train.steps=2 train.batch_size=4 train.num_workers=0 train.val_images=8 train.log_every=1" BENCH="--tiny"
# RESULTS=/tmp/r).
# Usage: FMNIST=$VISGEN_DATA/fashion-mnist OUT=/tmp/out STEP=tokenizer bash eval/gpu/video.sh; then generator, eval
# (the device returns at most 8 files of 16 MiB: give the generator step the call's own $OUT, where the model's parts
# land as they are; the eval step writes more files, so give it a folder to pack into one archive). A tokenizer
# trained before (runs/moving-fmnist-kl/final, 4 MB) can travel with the call instead of STEP=tokenizer.
set -euo pipefail
export TQDM_MININTERVAL=30
# every command with the time it started, to $OUT/steps.log: where a call's minutes went
exec 9>>$OUT/steps.log; BASH_XTRACEFD=9; PS4='+ $(date +%T) '; set -x
TOK_MIN=${TOK_MIN:-9} GEN_MIN=${GEN_MIN:-8} NUM=${NUM:-1000} EXTRA=${EXTRA:-} RESULTS=${RESULTS:-results}
export VISGEN_RESULTS=$RESULTS  # the benches' results too
DATA=${DATA:-data/moving-fmnist}
RUN=runs/moving-fmnist-far
# every step: the data (seeded: the same clips whichever step writes them, where a fresh machine lacks them)
[ -f $DATA/test.npz ] || python eval/make_moving_digits.py --fmnist $FMNIST --out $DATA ${MAKE:-} > $OUT/make-data.log 2>&1
if [ "$STEP" = tokenizer ]; then
  python train.py tokenizer --recipe tokenizers/moving-fmnist-kl.yaml data.path=$DATA val.path=$DATA \
    train.time_limit_minutes=$TOK_MIN $EXTRA > $OUT/train-kl.log 2>&1
  tar czf $OUT/tokenizer-final.tgz -C runs moving-fmnist-kl/final  # the trained model back, whatever comes later
fi
if [ "$STEP" = generator ]; then
  python train.py generator --recipe generators/moving-fmnist-far.yaml data.path=$DATA val.path=$DATA \
    train.time_limit_minutes=$GEN_MIN train.budget_minutes=$GEN_MIN $EXTRA > $OUT/train-far.log 2>&1
  cp runs/moving-fmnist-far/metrics.jsonl $OUT/metrics-far.jsonl
  # the model back as sampling loads it (the EMA weights; not the raw ones), in parts under 16 MiB
  tar czf - -C runs --exclude=moving-fmnist-far/final/model.safetensors moving-fmnist-far/final \
    | split -b 15m - $OUT/generator-final.tgz.
fi
if [ "$STEP" = eval ]; then
  # whatever the step got to comes back, even where a later command fails
  trap 'cp -f $RUN/*.json $RUN/*.gif $OUT/ 2>/dev/null; cp -f $RESULTS/moving-fmnist-video.* $OUT/ 2>/dev/null; true' EXIT
  CMD="FMNIST=... bash eval/gpu/video.sh with STEP=tokenizer, generator, eval (TOK_MIN=$TOK_MIN GEN_MIN=$GEN_MIN NUM=$NUM)"
  python sample.py --checkpoint $RUN/final --num-images 64 --npz --grid-max 16 --out $RUN/samples > $OUT/sample.log 2>&1
  S=$(ls -d $RUN/samples/*/ | head -1)
  cp $S/grid.png $OUT/grid.png
  # 16 frames (the training length) against the training clips, copies against the test clips' floor, dynamics
  python eval/fvd.py --input $RUN/final --ref $DATA --num-samples $NUM --dynamics --report $RUN/fvd-16.json \
    > $OUT/fvd-16.log 2>&1
  # 32 frames (twice the training length, the window slides): per-frame FD and dynamics against 32-frame test clips
  # (the reference speeds and frames from NUM training clips of 32 frames, the floor from 1000 test clips)
  python eval/make_moving_digits.py --fmnist $FMNIST --out $DATA-32 --train $NUM --test 1000 --frames 32 \
    > $OUT/make-data-32.log 2>&1
  python eval/fvd.py --input $RUN/final --ref $DATA-32 --frames 32 --num-samples $NUM \
    --video-extractor none --dynamics --report $RUN/fvd-32.json > $OUT/fvd-32.log 2>&1
  # video prediction: NUM test clips continued from their first 4 frames, the tracked item against the true one over
  # the next 4 (prediction_error_px); the GIF: real test clips, the model's predictions of them, its own clips
  python eval/dynamics.py --input $RUN/final --ref $DATA --num-samples $NUM --context-frames 4 --horizon 4 \
    --name prediction --results-dir $RUN --gif $RUN/side-by-side.gif > $OUT/predict.log 2>&1
  python eval/generator_result.py --run $RUN --samples $S --video-report $RUN/fvd-16.json $RUN/fvd-32.json \
    --prediction-report $RUN/prediction.json --gif $RUN/side-by-side.gif --name moving-fmnist-video \
    --results-dir $RESULTS --command "$CMD" > /dev/null
  # the motion scores at other guidance scales (the result's are at 2; the last run's sweep moved nothing, so none by
  # default) and with other solvers and steps of the flow head (SOLVER:STEPS; the recipe's: Heun at 13), of the
  # model's own clips and of test clips it continues from their first frame (prediction_speed_distance: the motion
  # apart from the first frames it draws): what moves them, for the note
  for G in ${CFG_SWEEP:-}; do
    python eval/dynamics.py --input $RUN/final --ref $DATA --num-samples $NUM --cfg-scale $G --name dynamics-cfg$G \
      --results-dir $RUN > $OUT/dynamics-cfg$G.log 2>&1
  done
  for HS in ${HEAD_SWEEP-heun:13 euler:25 heun:25}; do
    N=dynamics-${HS%:*}${HS#*:}
    python eval/dynamics.py --input $RUN/final --ref $DATA --num-samples $NUM --head-solver ${HS%:*} \
      --head-steps ${HS#*:} --context-frames 1 --name $N --results-dir $RUN > $OUT/$N.log 2>&1
  done
  # the benchmark last (BENCH_VIDEO=0: none): sampling modes, and training in the trainer's three modes with the
  # profiler's tables
  [ "${BENCH_VIDEO:-1}" = 0 ] || python bench/video.py --name bench-video --train-modes eager compiled graph \
    --profile $OUT/profile ${BENCH:-} \
    > $OUT/bench-video.log 2>&1
fi
