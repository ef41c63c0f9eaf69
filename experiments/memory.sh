#!/usr/bin/env bash
# Issue 20's measurements at the ImageNet-1K IPC 50 shape (50,000 synthetic 224 px images, 1,000 classes):
# 1. the mapped array vs the peers' JPEG ImageFolder path, 1 and 2 DDP ranks, with a label store of cvdd_in1k's
#    size (6 GB), 3 runs per row (medians); 2. the same once with --full-pass --store-pass (every process then
#    reads every image once, as an epoch does, and every stored record once, as a whole run does: does RSS grow
#    with what was read?); 3. the 28 GB store of the full-FKD baseline, the same way (RUN_28GB=1; needs ~28 GB
#    more disk). Every row also has the node's view: the page cache the case's reads filled (once per node) and
#    PSS + that cache, 2 ranks vs 1. Then random stored batches from a cold page cache, faults alone vs asked-for
#    reads (bench_cold). 4. before (PNGs decoded per process) vs after at 10,000
#    images (10 per class, links to the same PNGs): decoding all 50,000 in two ranks needs ~44 GB of memory.
# Data goes to $WORK (default /work/bench_mem, ~20 GB; ~48 GB with RUN_28GB=1); results to experiments/memory.md.
# Run it with nothing else busy: the first-step times move with the load (the memory does not).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${WORK:-/work/bench_mem}
COMMON=(--size 224 --classes 1000 --model resnet18 --batch 64 --steps 3 --ranks 1,2)
mkdir -p "$WORK" outputs/memory
rm -rf "$WORK/full/store"  # a 28 GB one from an earlier run would be reused: bench_memory writes the 6 GB one
$PY -m hald_tools.bench_memory --images 50000 "${COMMON[@]}" --cases after,peers --store-gb 6 --repeat 3 \
    --work "$WORK/full" --out outputs/memory/ipc50_store6.md
$PY -m hald_tools.bench_memory --images 50000 "${COMMON[@]}" --cases after,peers --store-gb 6 --full-pass --store-pass \
    --work "$WORK/full" --out outputs/memory/ipc50_full_pass.md
$PY -m hald_tools.bench_cold --work "$WORK/full" --records 32 --repeat 3 --out outputs/memory/cold_ipc50.md
OUTS=(outputs/memory/ipc50_store6.md outputs/memory/ipc50_full_pass.md outputs/memory/cold_ipc50.md)
if [ "${RUN_28GB:-0}" = 1 ]; then
  rm -rf "$WORK/full/store"  # bench_memory writes the 28 GB one in its place
  $PY -m hald_tools.bench_memory --images 50000 "${COMMON[@]}" --cases after --store-gb 28 --full-pass --store-pass \
      --work "$WORK/full" --out outputs/memory/ipc50_store28.md
  OUTS+=(outputs/memory/ipc50_store28.md)
fi
rm -rf "$WORK/ten"
mkdir -p "$WORK/ten/set/images"
for c in "$WORK"/full/set/images/*/; do  # 10 images per class of the same PNGs
  d="$WORK/ten/set/images/$(basename "$c")"; mkdir -p "$d"; ls "$c" | head -10 | while read -r f; do ln -s "$c$f" "$d/$f"; done
done
$PY -c "from pathlib import Path; from hald.data.image_array import write_array; from hald_tools.bench_memory import class_list; write_array(Path('$WORK/ten/set'), Path('$WORK/ten/set/images'), class_list(1000), 3)"
$PY -m hald_tools.bench_memory --images 10000 "${COMMON[@]}" --cases before,after --work "$WORK/ten" \
    --out outputs/memory/before_after_10k.md
OUTS+=(outputs/memory/before_after_10k.md)
cat "${OUTS[@]}" > outputs/memory/tables.md
echo "tables: outputs/memory/tables.md (experiments/memory.md holds them with the reading)"
