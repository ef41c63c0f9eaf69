"""The label store: the contract between relabel and train.

A directory with `manifest.json` and one safetensors shard per relabel pass. A shard holds the pass's
stored batches as flat arrays plus offsets, so record k of a pass is rows offsets[k]:offsets[k+1]:

    index     uint16|int32 [n]     image ids in the distilled set (the manifest names the set's sha256)
    box       int16 [n, 4]         RandomResizedCrop box (top, left, height, width) in source pixels
    flip      uint8 [ceil(n/8)]    flip flags, bit-packed
    mix_perm  uint8|int16 [n]      CutMix partner position within the batch
    mix_box   int16 [nb, 4]        CutMix box (y1, x1, y2, x2) in output pixels, one per stored batch
    offsets   int32 [nb + 1]
    labels/*  [n, ...]             softmax(z / T) of the teacher(s) on exactly these pixels, encoded by the
                                   store's codec (labels/codecs/), e.g. labels/probs float16 [n, C]

Record id r = pass * batches_per_pass + k. Records are read by id (memory-mapped slices), so any number of
loader workers and DDP ranks can read them and nothing depends on a sampler replaying a seed.
"""
from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save, save_file

from hald.artifacts import ArtifactError, atomic_write, read_manifest, verify
from hald.data.distilled import DistilledImages, hand_back, will_need
from hald.data.replay import Geometry
from hald.labels.codecs import Codec, pack_bits, unpack_bits

# 3: pixels from the uint8 antialiased per-image renderer (2 was float roi_align): a store of another version
# labels other pixels, so it is refused (LabelStore.open), and its cache key differs (pipeline/stages.py).
FORMAT_VERSION = 3
# One metadata entry: safetensors writes several in hash order, which differs between processes, and a shard
# must be the same bytes however and wherever it was made (resume, DDP ranks).
SHARD_METADATA = {"format": f"hald-label-store/{FORMAT_VERSION}"}


class LabelStoreError(ArtifactError):
    """A label store that is corrupted, or made for other images or another configuration."""


def shard_name(p: int) -> str:
    return f"pass_{p:04d}.safetensors"


def shard_tensors(batches: list[Geometry], labels: list[torch.Tensor], codec: Codec, n_images: int
                  ) -> dict[str, torch.Tensor]:
    """The tensors of one pass's shard. Integer widths follow the data: image ids fit uint16 up to 65,536
    images, partner positions fit uint8 for batches up to 256."""
    counts = torch.tensor([0] + [len(g) for g in batches])
    flips = torch.cat([g.flip for g in batches]).to(torch.uint8)
    tensors = {
        "index": torch.cat([g.index for g in batches]).to(torch.uint16 if n_images <= 65536 else torch.int32),
        "box": torch.cat([g.box for g in batches]).to(torch.int16),
        "flip": pack_bits(F.pad(flips, (0, (-flips.numel()) % 8)).view(1, -1), 1).view(-1),
        "mix_perm": torch.cat([g.mix_perm for g in batches]).to(
            torch.uint8 if max(len(g) for g in batches) <= 256 else torch.int16),
        "mix_box": torch.stack([g.mix_box for g in batches]).to(torch.int16),
        "offsets": torch.cumsum(counts, 0).to(torch.int32),
    }
    encoded = [codec.encode(lab) for lab in labels]  # batch by batch: bounded memory for large C
    for key in encoded[0]:
        tensors[f"labels/{key}"] = torch.cat([e[key] for e in encoded]).contiguous()
    return tensors


def shard_bytes(n_images: int, batch_size: int, codec: Codec, num_classes: int) -> int:
    """Exact size of one shard on disk, from the same code that writes it (dummy data of the real shapes)."""
    sizes = [min(batch_size, n_images - s) for s in range(0, n_images, batch_size)]
    z = torch.zeros
    batches = [Geometry(z(b, dtype=torch.int64), z(b, 4, dtype=torch.int16), z(b, dtype=torch.bool),
                        z(b, dtype=torch.int16), z(4, dtype=torch.int16)) for b in sizes]
    labels = [torch.full((b, num_classes), 1.0 / num_classes) for b in sizes]
    return len(save(shard_tensors(batches, labels, codec, n_images), metadata=SHARD_METADATA))


def write_shard(path: Path, batches: list[Geometry], labels: list[torch.Tensor], codec: Codec, p: int,
                n_images: int) -> dict:
    """Write one pass atomically (temp file + rename); return its manifest entry."""
    with atomic_write(path) as tmp:  # a write that fails half-way leaves nothing behind
        save_file(shard_tensors(batches, labels, codec, n_images), str(tmp), metadata=SHARD_METADATA)
    return {"file": path.name, "pass": p, "records": len(batches), "images": sum(len(g) for g in batches),
            "bytes": path.stat().st_size}


_NP_DTYPES = {"BOOL": np.bool_, "U8": np.uint8, "I16": np.int16, "U16": np.uint16, "I32": np.int32,
              "I64": np.int64, "F16": np.float16, "F32": np.float32}


class ShardView:
    """Zero-copy, read-only view of a safetensors shard: one mapping of the file, tensors sliced by row.

    Why not safe_open: a record touches ~8 tensors, and per-slice calls dominated replay; a memmap shares
    the OS page cache between all loader workers and ranks, and reads only the rows asked for. The mapping is
    an `mmap` object of its own so `release` can hand its pages back (see `release`).
    """

    def __init__(self, path: Path):
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
            self.mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        header.pop("__metadata__", None)
        raw = np.frombuffer(self.mapping, dtype=np.uint8, offset=8 + n)
        self.arrays, self.starts = {}, {}
        for key, info in header.items():
            a, b = info["data_offsets"]
            self.arrays[key] = raw[a:b].view(_NP_DTYPES[info["dtype"]]).reshape(info["shape"])
            self.starts[key] = 8 + n + a  # the tensor's offset in the file

    def rows(self, key: str, a: int, b: int | None) -> torch.Tensor:
        arr = self.arrays[key]
        if arr.ndim:  # exactly the rows read (distilled.prefetch: a fault would read ~8 MB around them)
            end = len(arr) if b is None else b
            will_need(self.mapping, self.starts[key] + a * arr.strides[0], (end - a) * arr.strides[0])
        return torch.from_numpy(np.array(arr[a:b]))  # copy: memmaps are read-only

    def labels(self, a: int, b: int) -> dict[str, torch.Tensor]:
        return {k.split("/", 1)[1]: self.rows(k, a, b) for k in self.arrays if k.startswith("labels/")}

    def release(self) -> None:
        """Hand this process's page-table entries of the shard back (rows are copied out by `rows`): over a
        run every record is read, and without this each rank's RSS grows by the store (6 GB for cvdd_in1k's,
        28 GB for a full FKD store at IPC 50; measured +600 MB in one epoch of a 6 GB store, experiments/
        memory.md). The page cache keeps the bytes (`distilled.hand_back`)."""
        hand_back(self.mapping)


@dataclass
class Record:
    geometry: Geometry
    labels: torch.Tensor  # float32 [b, C], decoded


class LabelStore:
    """Read side. Open with `LabelStore.open(path, expect=...)`; then `store[r]` is stored batch r."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest
        self.passes = int(manifest["passes"])
        self.batches_per_pass = int(manifest["batches_per_pass"])
        self.batch_size = int(manifest["batch_size"])
        self.num_classes = int(manifest["num_classes"])
        self.codec = Codec.from_config(manifest["codec"])
        self._shards: dict[int, tuple[ShardView, torch.Tensor, torch.Tensor]] = {}

    # -- opening and checking ------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path | str, expect: Mapping[str, Any] | None = None, deep: bool = True) -> "LabelStore":
        """Open a store, checking its shards (size; content when deep, docs/checks.md) and that it fits `expect`.

        expect: manifest fields that must match, e.g. {"images_sha256": ..., "num_classes": 10,
        "classes": [...]} — a store made for other images or classes is an error, not a surprise.
        """
        path = Path(path)
        if not path.is_dir():
            raise LabelStoreError(f"label store '{path}' does not exist; fix: run relabel or pass labels.store=PATH")
        try:
            manifest = read_manifest(path)
        except ArtifactError as e:
            raise LabelStoreError(f"label store: {_cause(e)}; fix: pass an intact copy of the store, or relabel "
                                  f"(labels.store=null)") from None
        if manifest.get("stage") != "relabel":
            raise LabelStoreError(f"'{path}' is not a label store (stage={manifest.get('stage')}); fix: pass "
                                  f"the directory relabel wrote")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise LabelStoreError(f"label store '{path}' has format version {manifest.get('format_version')}, "
                                  f"this hald reads {FORMAT_VERSION}; fix: relabel with this version")
        for key, want in (expect or {}).items():
            have = manifest.get(key)
            if have != want:
                raise LabelStoreError(f"label store '{path}' was made for {key}={_short(have)}, this run has "
                                      f"{_short(want)}; fix: relabel for these images/settings or pass the "
                                      f"matching store")
        try:  # sizes always; content when deep (sha256; a large shard's sampled blocks: artifacts.content_differs)
            verify(path, deep=deep)
        except ArtifactError as e:
            raise LabelStoreError(f"label store: {_cause(e)}; fix: pass an intact copy of the store, or relabel "
                                  f"(labels.store=null)") from None
        return cls(path, manifest)

    @property
    def num_records(self) -> int:
        return self.passes * self.batches_per_pass

    @property
    def settings(self) -> dict[str, Any]:
        """How the labels were made, as the manifest records them (for a passed-in store, the truth whatever
        the run's config says): results.json's `label_settings` and the summary table's row."""
        m = self.manifest
        return {"temperature": m.get("temperature"), "teacher_mode": m.get("teacher_mode"),
                "bssl_group_size": m.get("bssl_group_size"), "teacher_weights": m.get("teacher_weights"),
                "teachers": [t.get("name") for t in m.get("teachers") or [] if isinstance(t, dict)] or None,
                "batch_size": m.get("batch_size"), "crop": m.get("crop"), "flip_p": m.get("flip_p"),
                "mix": m.get("mix"), "codec": self.codec.describe(), "seed": m.get("seed")}

    # -- record access ---------------------------------------------------------------------------------
    def _shard(self, p: int) -> tuple[ShardView, torch.Tensor, torch.Tensor]:
        # Opened lazily per process (after pickling into a worker or rank), never shared across processes.
        if p not in self._shards:
            f = ShardView(self.path / shard_name(p))
            offsets = f.rows("offsets", 0, None).long()
            flips = unpack_bits(f.rows("flip", 0, None).view(1, -1), int(offsets[-1]), 1).view(-1).bool()
            self._shards[p] = (f, offsets, flips)
        return self._shards[p]

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, r: int) -> Record:
        if not 0 <= r < self.num_records:
            raise IndexError(f"record {r} out of range 0..{self.num_records - 1}")
        p, k = divmod(int(r), self.batches_per_pass)
        f, off, flips = self._shard(p)
        a, b = int(off[k]), int(off[k + 1])
        g = Geometry(index=f.rows("index", a, b).long(), box=f.rows("box", a, b), flip=flips[a:b],
                     mix_perm=f.rows("mix_perm", a, b).to(torch.int16), mix_box=f.rows("mix_box", k, k + 1)[0])
        record = Record(geometry=g, labels=self.codec.decode(f.labels(a, b), self.num_classes))
        f.release()
        return record

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_shards"] = {}
        return state


def open_store_for(path: Path, distilled: DistilledImages, dataset: Mapping[str, Any] | None = None,
                   deep: bool = True) -> LabelStore:
    """Open a label store and check it labels exactly these images, in this class order, with the pixels this
    run will replay (normalisation and input size)."""
    expect: dict[str, Any] = {"images_sha256": distilled.sha256, "num_classes": len(distilled.classes),
                              "classes": distilled.classes}
    if dataset is not None:
        expect.update({"mean": [float(v) for v in dataset["mean"]], "std": [float(v) for v in dataset["std"]],
                       "dataset": dataset["name"]})
        store = LabelStore.open(path, expect=expect, deep=deep)
        if store.manifest["crop"]["size"] != int(dataset["input_size"]):
            raise LabelStoreError(f"label store '{path}' was made at input size {store.manifest['crop']['size']}, "
                                  f"this run uses {dataset['input_size']}; fix: relabel at this input size")
        return store
    return LabelStore.open(path, expect=expect, deep=deep)


def check_soft_batch(soft_batch_size: int, stored_batch_size: int) -> None:
    if soft_batch_size <= 0 or soft_batch_size % stored_batch_size:
        raise LabelStoreError(f"train.soft_batch_size={soft_batch_size} is not a multiple of the stored batch "
                              f"size {stored_batch_size} (BSSL labels and CutMix partners are batch-specific); "
                              f"fix: train.soft_batch_size={stored_batch_size} or a multiple of it")


def store_bytes(path: Path) -> int:
    """Everything the store occupies on disk (shards + manifest)."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def _cause(e: Exception) -> str:
    return str(e).split("; fix:")[0]


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."
