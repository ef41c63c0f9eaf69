#!/usr/bin/env bash
# The same distilled set (mnist5k, RDED images, ipc=10, SLC=50) evaluated under two protocols: `hald` (the
# default) and `ddranking` (DD-Ranking 0.2.0's procedure: LR grid, best-of-checks accuracy, 5 seeds, population
# std, SGD + step, ARS). train.epochs=60 for all trainings (the papers' 300 would take ~5x longer here; the
# rule "checks after every 20 epochs" still has 3 checks). Writes outputs/protocols/{hald,ddranking}/ and
# prints each run's fair-stage minutes and trainings; experiments/protocols.md is written from them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
COMMON=(distill=rded train.epochs=60 evaluate=fair logger=none trainer.enable_progress_bar=false
        train.crop_consistency=false paths.cache_dir=outputs/protocols/cache "$@")
for p in hald ddranking; do
  $PY src/run.py "${COMMON[@]}" evaluate/protocol=$p hydra.run.dir=outputs/protocols/$p
done
$PY - <<'PY'
import json
for p in ("hald", "ddranking"):
    r = json.load(open(f"outputs/protocols/{p}/results.json"))
    f = r["fair"]
    n = sum(max(1, len(v.get("by_lr") or {})) for s in f["lrs_chosen"] for v in s.values() if isinstance(v, dict))
    print(p, "fair minutes", round(r["timings_s"]["fair"] / 60, 1), "trainings", n,
          {k: (round(f["mean"][k], 4), round(f["std"][k], 4)) for k in f["mean"]})
PY
