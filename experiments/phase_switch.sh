#!/usr/bin/env bash
# Phase-switch stability on mnist5k (ipc=10, slc=50, 300 epochs, 7 steps/epoch), 3 seeds.
# Writes outputs/phase_switch/{hald,baselines}/ and experiments/phase_switch.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
$PY src/run.py -m seed=0,1,2 hard_loss.temperature=1 soft_loss.t2=true,false optimizer.on_phase_switch=reset,keep \
  logger=none trainer.enable_progress_bar=false hydra.sweep.dir=outputs/phase_switch/hald
$PY src/run.py -m seed=0,1,2 hard_loss.temperature=1 schedule.preset=soft_only,hard_only \
  logger=none trainer.enable_progress_bar=false hydra.sweep.dir=outputs/phase_switch/baselines
$PY -m hald.evaluate.report outputs/phase_switch/hald outputs/phase_switch/baselines \
  --by schedule soft_loss.t2 optimizer.on_phase_switch > experiments/phase_switch.md
