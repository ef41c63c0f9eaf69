#!/usr/bin/env bash
# Which images help a student most under the same relabel and training? mnist5k, ipc=10, 3 seeds.
# random / rded / sre2l / sre2lpp / cvdd / fadrm / fadrm_plus / cim images (bundled conf/distill/*.yaml defaults;
# METHODS=a,b picks some), each relabelled by the
# pipeline's teacher (convnet_w64, SLC=50) and used to train a convnet_w32 student with HALD's S6 schedule
# (300 epochs). The seed changes the teachers (squeeze), the images, the labels and the student.
# Extra overrides go after the script name, e.g. `experiments/synthesis.sh distill.iterations=4000`.
# PARALLEL=1 runs the seeds as parallel processes (one intra-op thread each: on a small shared CPU that is
# faster than two threads per run). Writes outputs/synthesis/seed*/ and experiments/synthesis_results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for s in ${SEEDS:-0 1 2}; do
  $PY src/run.py -m distill="${METHODS:-random,rded,sre2l,sre2lpp,cvdd,fadrm,fadrm_plus,cim}" seed="$s" \
    hard_loss.temperature=1 "$@" \
    logger=none trainer.enable_progress_bar=false hydra.sweep.dir=outputs/synthesis/seed"$s" &
  [ "${PARALLEL:-0}" = 1 ] || wait
done
wait
$PY src/report.py outputs/synthesis --by distill.method --print > experiments/synthesis_results.md
