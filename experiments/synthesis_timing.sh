#!/usr/bin/env bash
# Time to synthesize (seconds per image) of every distill method on mnist5k, ipc=10 (100 images), seed 0: one
# sequential multirun on a fresh cache, train.epochs=1 (the student does not matter here), one process.
# Seconds per image = the distill stage's wall seconds (+ CV-DD's priors, which its images need) / 100; the
# teachers' squeeze is shared and not counted. Run it on an idle machine: it prints the load average first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=outputs/synthesis_timing
rm -rf "$OUT"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPUs; $(date -u +%F)"
$PY src/run.py -m distill="${METHODS:-random,rded,sre2l,sre2lpp,cvdd,fadrm,fadrm_plus,cim}" seed=0 train.epochs=1 \
  hard_loss.temperature=1 logger=none trainer.enable_progress_bar=false train.crop_consistency=false \
  hydra.sweep.dir="$OUT" paths.cache_dir="$OUT/cache" "$@" > "$OUT.log" 2>&1
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
print("| distill | distill s | priors s | s / image |")
print("|---|---|---|---|")
for res in sorted(Path(sys.argv[1]).glob("*/results.json"), key=lambda p: int(p.parent.name)):
    r = json.loads(res.read_text())
    t = r["timings_s"]
    d, p = t.get("distill", 0.0), t.get("priors", 0.0)
    n = r["ipc"] * 10
    print(f"| {r['distill']} | {d:.1f} | {p:.1f} | {(d + p) / n:.3f} |")
PY
