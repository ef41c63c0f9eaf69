"""The label store: the contract between relabel and train.

A directory with `manifest.json` and one safetensors shard per relabel pass. A shard holds the pass's
stored batches as flat arrays plus offsets, so record k of a pass is rows offsets[k]:offsets[k+1]:

    index    int32   [n]      image ids in the distilled set (the manifest names the image list)
    box      int16   [n, 4]   RandomResizedCrop box (top, left, height, width) in source pixels
    flip     bool    [n]
    mix_perm int16   [n]      CutMix partner position within the batch
    mix_box  int16   [nb, 4]  CutMix box (y1, x1, y2, x2) in output pixels
    offsets  int32   [nb + 1]
    labels   float16 [n, C]   softmax(z / T) of the teacher(s) on exactly these pixels

Record id r = pass * batches_per_pass + k. Records are read by id (memory-mapped slices), so any number of
loader workers and DDP ranks can read them and nothing depends on a sampler replaying a seed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hald.artifacts import ArtifactError, read_manifest, verify
from hald.data.replay import Geometry

FORMAT_VERSION = 1
LABEL_DTYPES = {"float16": torch.float16, "float32": torch.float32}
# Bytes per image per pass for everything except the labels: index 4 + box 8 + flip 1 + mix_perm 2.
GEOMETRY_BYTES_PER_IMAGE = 15
# Bytes per stored batch: mix_box 8 + one offset 4 (plus one extra offset per shard).
GEOMETRY_BYTES_PER_BATCH = 12


class LabelStoreError(ArtifactError):
    """A label store that is corrupted, or made for other images or another configuration."""


def shard_name(p: int) -> str:
    return f"pass_{p:04d}.safetensors"


def payload_bytes(n_images: int, n_batches: int, num_classes: int, dtype: str = "float16") -> int:
    """Bytes of one shard's tensors (the safetensors JSON header comes on top)."""
    itemsize = torch.empty((), dtype=LABEL_DTYPES[dtype]).element_size()
    return (n_images * (GEOMETRY_BYTES_PER_IMAGE + itemsize * num_classes)
            + n_batches * GEOMETRY_BYTES_PER_BATCH + 4)


def write_shard(path: Path, batches: list[Geometry], labels: list[torch.Tensor], dtype: str, p: int) -> dict:
    """Write one pass atomically (temp file + rename); return its manifest entry."""
    counts = torch.tensor([0] + [len(g) for g in batches])
    tensors = {
        "index": torch.cat([g.index for g in batches]).to(torch.int32),
        "box": torch.cat([g.box for g in batches]).to(torch.int16),
        "flip": torch.cat([g.flip for g in batches]).to(torch.bool),
        "mix_perm": torch.cat([g.mix_perm for g in batches]).to(torch.int16),
        "mix_box": torch.stack([g.mix_box for g in batches]).to(torch.int16),
        "offsets": torch.cumsum(counts, 0).to(torch.int32),
        "labels": torch.cat(labels).to(LABEL_DTYPES[dtype]).contiguous(),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"pass": str(p), "format_version": str(FORMAT_VERSION)})
    os.replace(tmp, path)
    return {"file": path.name, "pass": p, "records": len(batches), "images": int(counts.sum()),
            "bytes": path.stat().st_size}


@dataclass
class Record:
    geometry: Geometry
    labels: torch.Tensor  # float32 [b, C]


class LabelStore:
    """Read side. Open with `LabelStore.open(path, expect=...)`; then `store[r]` is stored batch r."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest
        self.passes = int(manifest["passes"])
        self.batches_per_pass = int(manifest["batches_per_pass"])
        self.batch_size = int(manifest["batch_size"])
        self.num_classes = int(manifest["num_classes"])
        self._handles: dict[int, Any] = {}
        self._offsets: dict[int, torch.Tensor] = {}

    # -- opening and checking ------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path | str, expect: Mapping[str, Any] | None = None, deep: bool = True) -> "LabelStore":
        """Open a store, checking its shards (size; sha256 when deep) and that it fits `expect`.

        expect: manifest fields that must match, e.g. {"images_sha256": ..., "num_classes": 10,
        "classes": [...]} — a store made for other images or classes is an error, not a surprise.
        """
        path = Path(path)
        if not path.is_dir():
            raise LabelStoreError(f"label store '{path}' does not exist; fix: run relabel or pass labels.store=PATH")
        try:
            manifest = read_manifest(path)
        except ArtifactError as e:
            raise LabelStoreError(f"label store: {e}") from None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise LabelStoreError(f"label store '{path}' has format version {manifest.get('format_version')}, "
                                  f"this hald reads {FORMAT_VERSION}; fix: relabel with this version")
        if manifest.get("stage") != "relabel":
            raise LabelStoreError(f"'{path}' is not a label store (stage={manifest.get('stage')}); fix: pass "
                                  f"the directory relabel wrote")
        for key, want in (expect or {}).items():
            have = manifest.get(key)
            if have != want:
                raise LabelStoreError(f"label store '{path}' was made for {key}={_short(have)}, this run has "
                                      f"{_short(want)}; fix: relabel for these images/settings or pass the "
                                      f"matching store")
        try:  # sizes always; sha256 of every shard when deep (a flipped bit is caught before training)
            verify(path, deep=deep)
        except ArtifactError as e:
            raise LabelStoreError(f"label store: {e}") from None
        return cls(path, manifest)

    @property
    def num_records(self) -> int:
        return self.passes * self.batches_per_pass

    @property
    def label_bytes(self) -> int:
        """Bytes on disk of everything in the store: shards and manifest."""
        return store_bytes(self.path)

    # -- record access ---------------------------------------------------------------------------------
    def _shard(self, p: int):
        # Opened lazily per process: handles are not picklable and must not cross into workers/ranks.
        if p not in self._handles:
            self._handles[p] = safe_open(str(self.path / shard_name(p)), framework="pt")
            self._offsets[p] = self._handles[p].get_tensor("offsets").long()
        return self._handles[p], self._offsets[p]

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, r: int) -> Record:
        if not 0 <= r < self.num_records:
            raise IndexError(f"record {r} out of range 0..{self.num_records - 1}")
        p, k = divmod(int(r), self.batches_per_pass)
        f, off = self._shard(p)
        a, b = int(off[k]), int(off[k + 1])
        g = Geometry(index=f.get_slice("index")[a:b].long(), box=f.get_slice("box")[a:b],
                     flip=f.get_slice("flip")[a:b], mix_perm=f.get_slice("mix_perm")[a:b],
                     mix_box=f.get_slice("mix_box")[k:k + 1][0])
        return Record(geometry=g, labels=f.get_slice("labels")[a:b].float())

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"], state["_offsets"] = {}, {}
        return state


def store_bytes(path: Path) -> int:
    """Everything the store occupies on disk (shards + manifest)."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."
