#!/usr/bin/env bash
# Issue 5, experiment 2: local semantic drift against SLI on mnist5k, ipc=10, 3 seeds.
# For every store (slc = 10, 20, 50, 200: SLI = 1, 2, 5, 20) the teacher's predictions on 64 fresh crops of each
# distilled image give Tr(Sigma), the drift term Tr(Sigma)/SLI and the log-log slope of the s-crop deviation
# (theory -1), written to each job's lvsd.json (evaluate.lvsd=true). The students are trained for the
# accuracy column only, shortened to 100 epochs. The seed changes the teacher, the images and the labels.
# Writes outputs/lvsd/seed*/ and outputs/lvsd/seed*/report/ (report.py: LVSD table and slope plots).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for s in ${SEEDS:-0 1 2}; do
  $PY src/run.py -m seed="$s" slc=10,20,50,200 evaluate.lvsd=true evaluate.lvsd_crops=64 train.epochs=100 hard_loss.temperature=1 \
    logger=csv trainer.enable_progress_bar=false "$@" hydra.sweep.dir=outputs/lvsd/seed"$s"
  $PY src/report.py outputs/lvsd/seed"$s" --by slc
done
