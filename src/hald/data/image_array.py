"""A distilled set's pixels as one uint8 array file, memory-mapped read-only by every process.

`images.npy` holds uint8 [N, H, W, C] (channels-last: `torch.from_numpy(a).permute(0, 3, 1, 2)` is the NCHW
tensor replay renders from, already in `replay.render_layout`'s layout), `images.json` the set's metadata
(targets, files, classes, and the PNG set's sha256 exactly as `load_distilled` computes it, so label stores
keyed by `images_sha256` stay valid). Both sit in the artifact directory next to the PNG folder and are
covered by its manifest. Opening reads the .npy header only: no decoding, no copy; every rank and loader
worker on a node shares one copy of the pixels in the page cache. The PNGs stay the set's human-readable,
interchangeable form; the array is made from them (`write_array`), so it holds exactly their decoded pixels.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from hald.artifacts import atomic_write, write_json_atomic
from hald.data.distilled import (DistilledError, DistilledImages, check_even, decoded, list_images,
                                 load_distilled, map_array, map_npy, prefetch, release_pages)

ARRAY, META = "images.npy", "images.json"
FORMAT = 1


def has_array(directory: Path) -> bool:
    return (Path(directory) / ARRAY).is_file() and (Path(directory) / META).is_file()


def write_array(out_dir: Path, root: Path, classes: Sequence[str], channels: int,
                input_size: int | None = None) -> dict[str, Any]:
    """Decode the PNG set at `root` (every check of `load_distilled`) straight into `out_dir/images.npy`,
    one image at a time (memory: one image, not the set), and write `images.json`; both atomically (a temp
    file in the same directory, renamed). Returns the metadata."""
    out_dir, root = Path(out_dir), Path(root)
    listed = list_images(root, list(classes), channels, input_size, in_memory=False)  # streamed
    n, digest = sum(len(p) for _, p in listed), hashlib.sha256()
    targets, files = [], []
    with atomic_write(out_dir / ARRAY) as tmp:
        arr = None
        for k, (cid, rel, a) in enumerate(decoded(root, listed, channels, digest)):
            if arr is None:
                arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, *a.shape))
            arr[k] = a
            targets.append(cid)
            files.append(rel)
        check_even(root, list(classes), listed)
        arr.flush()
        del arr
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    h, w, c = np.load(out_dir / ARRAY, mmap_mode="r").shape[1:]
    meta = {"format": FORMAT, "layout": "NHWC", "dtype": "uint8", "shape": [n, h, w, c], "sha256": digest.hexdigest(),
            "classes": list(classes), "images_dir": os.path.relpath(root, out_dir), "targets": targets, "files": files}
    write_json_atomic(out_dir / META, meta)
    return meta


def open_array(directory: Path, root: Path | str, classes: Sequence[str] | None = None) -> DistilledImages:
    """The set whose array is in `directory` (made from the PNG folder `root`), mapped; `classes`: the run's
    class order, which must be the one the set was made with."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / META).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DistilledError(f"image array metadata '{directory / META}' cannot be read ({type(e).__name__}); "
                             f"fix: delete {directory} and run again") from None
    n, h, w, c = meta["shape"]
    if len(meta["targets"]) != n or len(meta["files"]) != n or meta.get("dtype") != "uint8":
        raise DistilledError(f"image array metadata '{directory / META}' lists {len(meta['targets'])} targets for "
                             f"{n} images; fix: delete {directory} and run again")
    if classes is not None and list(classes) != meta["classes"]:
        raise DistilledError(f"distilled images in '{directory}' were made with classes {meta['classes'][:3]}..., "
                             f"this run has {list(classes)[:3]}... (another dataset or class order); fix: "
                             f"distill.path=<a set made for this dataset>")
    images = map_array(directory / ARRAY, (n, c, h, w))
    return DistilledImages(images=images, targets=torch.tensor(meta["targets"], dtype=torch.int64),
                           files=list(meta["files"]), classes=list(meta["classes"]), sha256=meta["sha256"],
                           root=str(root), array=str(directory / ARRAY))


def open_images(root: Path | str, classes: Sequence[str], channels: int) -> DistilledImages:
    """A distill artifact's image folder: mapped from the array beside it, or (a folder without one: a set made
    by an earlier hald, or published) decoded (analysis scripts; runs cache an array: distill/folder.py)."""
    root = Path(root)
    if array_beside(root):
        return open_array(root.parent, root, classes)
    return load_distilled(root, list(classes), channels)


def array_beside(root: Path) -> bool:
    """Whether the artifact holding the PNG folder `root` has the array made from it."""
    meta = Path(root).parent / META
    try:
        return has_array(meta.parent) and json.loads(meta.read_text()).get("images_dir") == Path(root).name
    except (OSError, json.JSONDecodeError):
        return False


class MappedTensor:
    """A tensor kept in an .npy file and mapped read-only; pickles by path, so a spawned process maps the file
    instead of receiving a copy (recover's RDED init images, pickled to its ddp_spawn ranks). Indexing returns
    a copy and hands the mapped pages back (`release_pages`): a long recover reads each image once, and its
    ranks' RSS should not keep every image it has read."""

    def __init__(self, path: Path | str):
        self.path, self._tensor = str(path), None

    @classmethod
    def write(cls, tensor: torch.Tensor, path: Path) -> "MappedTensor":
        """Write `tensor` atomically to `path` (same-directory temp file + rename) and map it."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(Path(path)) as tmp, open(tmp, "wb") as f:
            np.save(f, tensor.detach().cpu().contiguous().numpy())
        return cls(path)

    @property
    def tensor(self) -> torch.Tensor:
        if self._tensor is None:
            with warnings.catch_warnings():  # read-only by design
                warnings.filterwarnings("ignore", message=".*not writable.*")
                self._tensor = torch.from_numpy(map_npy(self.path))
        return self._tensor

    def __getitem__(self, index: Any) -> torch.Tensor:
        if not isinstance(index, (slice, tuple)):  # ids (a slice is one range: the read-ahead serves it)
            prefetch(self.tensor, index)
        out = self.tensor[index].clone()
        release_pages(self.tensor)
        return out

    @property
    def shape(self) -> torch.Size:
        return self.tensor.shape

    def __getstate__(self) -> dict:
        return {"path": self.path, "_tensor": None}
