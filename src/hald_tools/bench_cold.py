"""Random stored batches read from a cold page cache: page faults alone vs the bytes asked for first.

    python -m hald_tools.bench_cold --work /work/bench_mem/full --records 32 --repeat 3 --out outputs/memory/cold.md

Each run evicts the image array and the label store's shards from the page cache (page_cache.evict), opens the
store, and reads --records random stored batches as training does (the record, then `replay.render` of its
crops at 224 px), twice per repeat: with hald's reads (`distilled.prefetch` asks for exactly the batch's images
and `ShardView.rows` for exactly the record's rows, MADV_WILLNEED) and with page faults alone (both turned
off: a fault reads the device's read-ahead window around the page). Records the time and the page cache each
filled. The first epoch of every run reads this way, and so does every epoch when the array and the store do not
fit in the page cache (ImageNet-1K IPC 200 is 30 GB of pixels) or sit on a network file system.
--work is a bench_memory work dir (its `set/` array and `store/`); without it a small set and store are
generated in a temp dir (--images, --store-gb).
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hald_tools.bench_memory import run_lines, write_md
from hald_tools.page_cache import cached_mb, evict


def read_ahead_kb(path: Path) -> str:
    """The read-ahead window of the block device holding `path` (sysfs), or '?'."""
    try:
        dev = os.stat(path).st_dev
        sys_dev = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
        for q in (sys_dev / "queue" / "read_ahead_kb", sys_dev / ".." / "queue" / "read_ahead_kb"):
            if q.exists():
                return q.read_text().strip()
    except OSError:
        pass
    return "?"


def one_run(work: Path, records: int, asked: bool, seed: int) -> dict[str, float]:
    import torch

    import hald.data.replay as replay
    import hald.labels.store as store_mod
    from hald.data.image_array import open_array

    saved = replay.prefetch, store_mod.will_need
    if not asked:
        replay.prefetch, store_mod.will_need = (lambda *a: None), (lambda *a: None)
    try:
        images = open_array(work / "set", work / "set" / "images")
        array, shards = work / "set" / "images.npy", sorted((work / "store").glob("*.safetensors"))
        evict([array, *shards])
        store = store_mod.open_store_for(work / "store", images, deep=False)
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        ids = random.Random(seed).sample(range(len(store)), records)
        t = time.perf_counter()
        for r in ids:
            replay.render(images.images, store[r].geometry, images.hw[0], mean, std)
        seconds = time.perf_counter() - t
        return {"s": seconds, "images_mb": cached_mb([array]), "store_mb": cached_mb(shards)}
    finally:
        replay.prefetch, store_mod.will_need = saved


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=None, help="a bench_memory work dir (default: generate a small one)")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--store-gb", type=float, default=0.5, dest="store_gb")
    ap.add_argument("--records", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="outputs/memory/cold.md")
    args = ap.parse_args(argv)
    command = "python -m hald_tools.bench_cold " + " ".join(argv if argv is not None else sys.argv[1:])
    load = os.getloadavg()
    work = Path(args.work or tempfile.mkdtemp(prefix="hald-bench-cold-"))
    try:
        if not (work / "set" / "images.npy").is_file():
            from hald_tools.bench_memory import generate

            generate(work, args.images, 224, args.classes, jpeg=False)
        if not (work / "store").is_dir():
            from hald_tools.bench_memory import write_store

            write_store(work, 224, 64, args.store_gb)
        runs = {True: [], False: []}
        for k in range(args.repeat):
            for asked in (False, True):  # the same records both ways
                runs[asked].append(one_run(work, args.records, asked, seed=k))
        med = {a: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for a, rs in runs.items()}
        array = work / "set" / "images.npy"
        shards = list((work / "store").glob("*.safetensors"))
        lines = [f"# {args.records} random stored batches from a cold page cache", "",
                 *run_lines(command, load, f"; read-ahead of the data's device: {read_ahead_kb(array)} kB"),
                 f"- image array {array.stat().st_size / 1e9:.1f} GB; label store "
                 f"{sum(f.stat().st_size for f in shards) / 1e9:.1f} GB in {len(shards)} shards; medians of "
                 f"{args.repeat} runs, the same records both ways", "",
                 "| reads | time (s) | images read into the page cache (MB) | store read into the page cache (MB) |",
                 "|---|---|---|---|"]
        for asked, name in ((False, "page faults alone"), (True, "asked for first (hald)")):
            m = med[asked]
            lines.append(f"| {name} | {m['s']:.2f} | {m['images_mb']:.0f} | {m['store_mb']:.1f} |")
        lines.append(f"| ratio | {med[False]['s'] / med[True]['s']:.1f}x faster | "
                     f"{med[False]['images_mb'] / max(med[True]['images_mb'], 1e-9):.0f}x fewer bytes | "
                     f"{med[False]['store_mb'] / max(med[True]['store_mb'], 1e-9):.0f}x fewer bytes |")
        md = "\n".join(lines) + "\n"
        write_md(args.out, md)
        return md
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
