"""Resumable recover: finished (IPC index, class chunk) units are kept in a stable per-artifact work dir.

The cached-artifact temp dir is removed when a build fails, so partial work lives next to it instead:

    <cache>/distill/.partial-<key>/
        images/<class:05d>/<ipc:05d>.png     each PNG written under a temp name and renamed (save_png)
        units/i<ipc:05d>-c<chunk:05d>.json   written after the unit's PNGs: present = unit finished

A killed run leaves finished units plus, per rank, at most one unit whose PNGs have no marker yet; the next
run skips the finished ones (never writes them again) and recomputes the rest. When every unit is finished
the images are hard-linked (copied where the file system cannot link) into the artifact being built, and
the pipeline deletes the work dir once that artifact is complete. Units are independent (each has its own
seed), so a resumed run gives the same files as an uninterrupted one.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from hald.artifacts import write_json_atomic
from hald.data.distilled import save_png


class UnitStore:
    def __init__(self, work_dir: Path):
        self.root = Path(work_dir)
        self.images = self.root / "images"
        self.units = self.root / "units"

    def marker(self, ipc_index: int, chunk: int) -> Path:
        return self.units / f"i{ipc_index:05d}-c{chunk:05d}.json"

    def is_done(self, ipc_index: int, chunk: int) -> bool:
        return self.marker(ipc_index, chunk).is_file()

    def write(self, ipc_index: int, chunk: int, images: torch.Tensor, classes: list[int], record: dict[str, Any]
              ) -> None:
        """Save one unit: uint8 [B, C, H, W] images of `classes` at this IPC index, then its marker."""
        if self.is_done(ipc_index, chunk):  # never rewrite a finished unit (e.g. two runs racing)
            return
        for img, c in zip(images, classes):
            save_png(img, self.images / f"{c:05d}" / f"{ipc_index:05d}.png")
        self.units.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.marker(ipc_index, chunk), {"ipc_index": ipc_index, "chunk": chunk,
                                                          "classes": classes, **record})

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.units.glob("i*-c*.json"))]

    def promote(self, dest: Path) -> None:
        """Link every finished image into dest (an ImageFolder), leaving the work dir intact."""
        def link(src: str, dst: str) -> None:
            try:
                os.link(src, dst)
            except OSError:  # another file system, or links not supported
                shutil.copy2(src, dst)

        shutil.copytree(self.images, dest, copy_function=link,
                        ignore=lambda d, names: [n for n in names if n.startswith(".")])
