#!/usr/bin/env bash
# Accuracy of the fast paths (conf/compute): the default pipeline on mnist5k (HALD schedule, random images,
# ipc 10, SLC 50, 300 epochs), 3 seeds per variant; `make bench` reads outputs/speed/ into experiments/speed.md.
# Variants `student` and `labels` share the fp32 teacher and the images, so their stores differ only by the
# relabel precision (the KL / agreement table). ~25 minutes on 2 idle cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
COMMON=(-m seed=0,1,2 logger=none trainer.enable_progress_bar=false paths.cache_dir=outputs/speed/cache "$@")
run() { local name=$1; shift; $PY src/run.py "${COMMON[@]}" "$@" hydra.sweep.dir=outputs/speed/$name; }
run peers compute=fp32 compute.channels_last=false
run fp32 compute=fp32
run student compute=fast compute.squeeze=32-true compute.relabel=32-true
run labels compute=fast compute.squeeze=32-true
run fast compute=fast
