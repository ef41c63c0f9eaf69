#!/usr/bin/env bash
# Follow-up to experiments/schedules.sh: does a temperature on the hard loss (hard_loss.temperature, CE of
# softmax(z / T) x T^2) remove the soft -> hard collapse? mnist5k, ipc=10, S6 and S8 at SLI 1 and 2, T_hard = 5, 20,
# 150 epochs as in schedules.sh, 3 seeds as parallel processes with one thread each.
# Writes outputs/hard_temperature/seed*/ and experiments/hard_temperature_results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON=(train.epochs=150 train.eval_phase_ends=false logger=none trainer.enable_progress_bar=false)
for s in ${SEEDS:-0 1 2}; do
  $PY src/run.py -m seed="$s" slc=10,20 schedule.preset=S6,S8 hard_loss.temperature=5,20 "${COMMON[@]}" "$@" \
    hydra.sweep.dir=outputs/hard_temperature/seed"$s" &
  [ "${PARALLEL:-1}" = 1 ] || wait
done
wait
PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} $PY -m hald.evaluate.report outputs/hard_temperature \
  --by schedule slc hard_loss.temperature > experiments/hard_temperature_results.md
