#!/usr/bin/env bash
# Issue 5, experiment 1: which phase schedule wins at which storage budget? mnist5k, ipc=10, 3 seeds.
# Schedules S1-S8 (hald = S6), soft_only and hard_only at SLI = slc/ipc = 1, 2, 5, 20 (slc = 10, 20, 50, 200);
# convnet_w64 teacher, random real images, fp16 labels, convnet_w32 student, 150 epochs (half the default, to fit
# 111 trainings on a 2-core CPU), validation on the last epoch only, defaults otherwise (soft_loss.t2=true,
# optimizer.on_phase_switch=reset). hard_only never reads a stored label, so it runs at
# slc=10 only. The seed changes the teacher, the images, the labels and the student.
# Seeds run as parallel processes with one intra-op thread each (PARALLEL=0 runs them one after another).
# Writes outputs/schedules/seed*/ and experiments/schedules_results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON=(hard_loss.temperature=1 train.epochs=150 train.eval_phase_ends=false logger=none trainer.enable_progress_bar=false)
for s in ${SEEDS:-0 1 2}; do
  (
    $PY src/run.py -m seed="$s" slc=10,20,50,200 schedule.preset=S1,S2,S3,S4,S5,S6,S7,S8,soft_only \
      "${COMMON[@]}" "$@" hydra.sweep.dir=outputs/schedules/seed"$s"/soft
    $PY src/run.py -m seed="$s" slc=10 schedule.preset=hard_only \
      "${COMMON[@]}" "$@" hydra.sweep.dir=outputs/schedules/seed"$s"/hard
  ) &
  [ "${PARALLEL:-1}" = 1 ] || wait
done
wait
PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} $PY -m hald.evaluate.report outputs/schedules --by schedule slc \
  > experiments/schedules_results.md
