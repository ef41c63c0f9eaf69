"""Distilled image sets on disk: a PNG ImageFolder, read into one uint8 tensor.

Accepted layouts (`root/<class>/<image>`): 5-digit index folders (`00000 ... 00999`, the SRe2L/RDED/CV-DD
release format, folder number = class id) or folders named like the dataset's classes (e.g. WNIDs).
"""
from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from hald.console import track
from hald.data.sources.files import class_folders, is_image
from hald.errors import InputError

log = logging.getLogger(__name__)


class DistilledError(InputError):
    """A distilled folder that does not fit the dataset (one-line cause and fix)."""


@dataclass
class DistilledImages:
    images: torch.Tensor   # uint8 [N, C, H, W]
    targets: torch.Tensor  # int64 [N]
    files: list[str]       # paths relative to root, in image-id order (class, then file name)
    classes: list[str]
    sha256: str            # hash of (relative path, file content) of every image: names the set exactly
    root: str = ""         # the folder it was read from
    array: str = ""        # the uint8 array file `images` maps (data/image_array.py); "" = decoded in memory

    def __len__(self) -> int:
        return int(self.targets.numel())

    @property
    def ipc(self) -> int:
        counts = torch.bincount(self.targets, minlength=len(self.classes))
        return int(counts.min())

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def __getstate__(self) -> dict:
        """A mapped set pickles by path (a spawned worker or rank maps the file itself, never gets the pixels)."""
        state = dict(self.__dict__)
        if self.array:
            state["images"] = tuple(self.images.shape)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.array:
            self.images = map_array(Path(self.array), self.images)


# The mappings `map_npy` made in this process, by the address of their first element: (mapping, that element's
# offset in the file) (see `release_pages`, `prefetch`)
_MAPPINGS: dict[int, tuple[mmap.mmap, int]] = {}


def map_npy(path: Path | str) -> np.ndarray:
    """A C-ordered .npy file as a read-only array on this module's own mapping (an `mmap` object, not numpy's,
    so `release_pages` can hand its page-table entries back). OSError / ValueError when it cannot be."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = header(f)
        offset, count, size = f.tell(), int(np.prod(shape)), os.fstat(f.fileno()).st_size
        if fortran or dtype.hasobject or size != offset + count * dtype.itemsize:
            raise ValueError(f"{dtype} {list(shape)}{' (Fortran order)' if fortran else ''}, {size} bytes")
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # the header makes the file non-empty
    arr = np.frombuffer(mapping, dtype=dtype, count=count, offset=offset).reshape(shape)
    _MAPPINGS[arr.ctypes.data] = (mapping, offset)
    weakref.finalize(arr, _MAPPINGS.pop, arr.ctypes.data, None)  # a tensor holds arr: gone with the last user
    return arr


def map_array(path: Path, shape: Sequence[int] | None = None) -> torch.Tensor:
    """The array file as a read-only uint8 [N, C, H, W] tensor with channels-last strides (no copy, `map_npy`),
    its header checked against `shape` (N, C, H, W) when given."""
    path = Path(path)
    try:
        arr = map_npy(path)
        if arr.dtype != np.uint8 or arr.ndim != 4:
            raise ValueError(f"{arr.dtype} {list(arr.shape)}")
    except (OSError, ValueError) as e:
        raise DistilledError(f"image array '{path}' cannot be read ({e}); fix: delete {path.parent} and run "
                             f"again") from None
    want = None if shape is None else (shape[0], shape[2], shape[3], shape[1])
    if want is not None and tuple(arr.shape) != tuple(want):
        raise DistilledError(f"image array '{path}' is uint8 {list(arr.shape)}, its metadata says uint8 {list(want)} "
                             f"(replaced or damaged); fix: delete {path.parent} and run again")
    with warnings.catch_warnings():  # read-only by design: nothing writes the images
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(arr).permute(0, 3, 1, 2)


def release_pages(images: torch.Tensor) -> None:
    """Drop this process's page-table entries of `images` when `map_npy` mapped them (no-op otherwise).

    Why: a page read through a mapping stays in the process's RSS. Over an epoch every rank reads every image,
    so each rank's RSS grows to the whole array (7.5 GB at ImageNet-1K IPC 50; on this kernel a read maps
    ~1.2 MB of file pages per 150 KB image, the page cache's large folios), though it is one shared copy in the
    page cache. Callers release after each batch's reads (replay.render, the device upload): the page cache
    keeps the pixels (the next read is a minor fault), RSS holds one batch's pages. MADV_DONTNEED on a
    read-only file mapping only unmaps; it never loses data (measured: 0.2 ms per call on a 150 MB mapping)."""
    entry = _MAPPINGS.get(images.data_ptr()) if images.device.type == "cpu" else None
    if entry is not None:
        hand_back(entry[0])


def prefetch(images: torch.Tensor, index: int | Sequence[int] | torch.Tensor) -> None:
    """Ask the kernel for exactly the bytes of images[index] (MADV_WILLNEED) before they are read, when `map_npy`
    mapped `images` (no-op otherwise).

    Why: a page fault on a file mapping reads *around* the page (the device's read-ahead window: 8 MB on this
    machine's disk, often more on network file systems), so a random image read from a cold cache pulls ~45x
    its bytes. Measured at IPC 50 (`python -m hald_tools.bench_cold`, experiments/memory.md): 32 random stored
    batches (2,048 images) rendered from a cold cache took 5.9 s and read 6.0 GB of the array with faults alone,
    1.5 s and 292 MB asked for. Asked-for pages are not read around, and asking for a whole batch first lets the
    disk serve it in parallel. Full scans (the device upload) keep the
    kernel's sequential read-ahead: nothing here changes the mapping's advice."""
    entry = _MAPPINGS.get(images.data_ptr()) if CAN_PREFETCH and images.device.type == "cpu" else None
    if entry is None:
        return
    mapping, offset = entry
    n, row = int(images.shape[0]), images.stride(0) * images.element_size()  # one image's bytes in the file
    ids = torch.as_tensor(index)
    if ids.dtype == torch.bool or ids.is_floating_point():  # a mask: not ids
        return
    for i in ids.reshape(-1).tolist():
        will_need(mapping, offset + (i % n) * row, row)


def will_need(mapping: mmap.mmap, start: int, length: int) -> None:
    """MADV_WILLNEED on bytes [start, start + length) of a file mapping (its page-aligned cover)."""
    if CAN_PREFETCH and length > 0:
        page_start = start - start % mmap.PAGESIZE
        mapping.madvise(mmap.MADV_WILLNEED, page_start, start + length - page_start)


CAN_HAND_BACK = hasattr(mmap, "MADV_DONTNEED")  # Linux, macOS; elsewhere pages stay mapped (correct, not flat)
CAN_PREFETCH = hasattr(mmap, "MADV_WILLNEED")  # elsewhere reads fault in as the OS reads ahead


def hand_back(mapping: mmap.mmap) -> None:
    """Unmap a read-only file mapping's pages from this process (MADV_DONTNEED): the page cache keeps them, the
    next read is a minor fault. Used for the image array (`release_pages`) and the label store's shards."""
    if CAN_HAND_BACK:
        mapping.madvise(mmap.MADV_DONTNEED)


def _class_dirs(root: Path, classes: list[str]) -> list[Path]:
    """Class folders in class-id order, for either accepted naming."""
    if not root.is_dir():
        raise DistilledError(f"distilled folder '{root}' does not exist; fix: set distill.path to a folder of "
                             f"class subfolders (00000/, 00001/, ... or class names)")
    dirs = [root / name for name in class_folders(str(root))]  # the real datasets' rules (hald.data.sources.files)
    layout = "root/<00000..%05d or class name>/<images>" % (len(classes) - 1)
    if len(dirs) != len(classes):
        raise DistilledError(f"distilled folder '{root}' has {len(dirs)} class folders, the dataset has "
                             f"{len(classes)} classes; expected {layout}; fix: point distill.path at the set made "
                             f"for this dataset")
    names = [d.name for d in dirs]
    if all(n.isdigit() and len(n) == 5 for n in names):
        if [int(n) for n in names] != list(range(len(classes))):
            raise DistilledError(f"distilled folder '{root}': index folders must be 00000..{len(classes) - 1:05d}; "
                                 f"fix: rename the class folders")
        return dirs
    by_name = {d.name: d for d in dirs}
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise DistilledError(f"distilled folder '{root}': folders {unknown[:3]} are neither 5-digit indices nor "
                             f"class names of the dataset (e.g. {classes[:2]}); fix: rename the folders")
    return [by_name[c] for c in classes]


# PIL modes a distilled image may have, per dataset channel count (P = palette: a storage form of colour).
# 16-bit grey is scaled to 8 bits (v * 255 / 65535, rounded): PIL's convert("L") clips it, turning every
# nonzero pixel of a 16-bit PNG into 255. 32-bit integer and float images have no agreed range: refused.
_SIXTEEN = {"I;16", "I;16B", "I;16L", "I;16N"}
_MODES = {1: {"L", "1", "I", *_SIXTEEN}, 3: {"RGB", "P", "YCbCr", "CMYK"}}
# Sizes: smaller than this (or the input size, if smaller) leaves nothing to crop; refused.
MIN_SIDE = 8


def _pixels(im: Image.Image, path: Path, channels: int) -> np.ndarray:
    """An opened image as uint8 [H, W] or [H, W, 3], read faithfully."""
    mode = im.mode
    if mode in _SIXTEEN or (mode == "I" and im.format == "PNG"):  # a 16-bit PNG (older Pillow opens it as I)
        a = np.asarray(im).astype(np.int64)
        if a.min() < 0 or a.max() > 65535:
            raise DistilledError(f"distilled image '{path}' has values outside 16 bits ({a.min()}..{a.max()}); fix: "
                                 f"convert the set to 8-bit L PNGs")
        return ((a * 255 + 32767) // 65535).astype(np.uint8)
    if mode == "I":
        raise DistilledError(f"distilled image '{path}' is a 32-bit integer image (I, {im.format}) with no agreed "
                             f"range; hald reads 1-, 8- and 16-bit images; fix: convert the set to 8-bit L PNGs")
    return np.asarray(im.convert("L" if channels == 1 else "RGB"))


def _read(path: Path, channels: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            mode = im.mode
            alpha = "A" in mode or (mode == "P" and "transparency" in im.info)
            if alpha or mode not in _MODES.get(channels, {mode}):
                what = f"has an alpha channel ({mode})" if alpha else f"is {mode}"
                want = "L" if channels == 1 else "RGB"
                if mode == "F":
                    what = "is a 32-bit float image (F), which has no agreed range"
                raise DistilledError(f"distilled image '{path}' {what}, the dataset has {channels} channel(s); fix: "
                                     f"convert the set to 8-bit {want} PNGs (PIL: Image.convert('{want}'))")
            return _pixels(im, path, channels)
    except (UnidentifiedImageError, OSError) as e:
        raise DistilledError(f"distilled image '{path}' cannot be read ({type(e).__name__}); fix: remove or "
                             f"replace the file") from None


def check_made_for(root: Path, classes: list[str]) -> None:
    """A set made by this pipeline names its dataset and class order in the manifest beside it: refuse a set
    made for another dataset or class order (published sets without a manifest are checked by shape only)."""
    mf = root.parent / "manifest.json"
    if not mf.is_file():
        return
    try:
        made = json.loads(mf.read_text())
    except (OSError, json.JSONDecodeError):
        return
    if made.get("stage") != "distill" or "classes" not in made:
        return
    if made["classes"] != list(classes):
        other = ((made.get("config") or {}).get("dataset") or {}).get("name", "?")
        diff = next(i for i, (a, b) in enumerate(zip(made["classes"] + [None] * len(classes), classes)) if a != b)
        raise DistilledError(f"distilled folder '{root}' was made for {other} with classes {made['classes'][:3]}..., "
                             f"this run's class {diff} is '{classes[diff]}' (another dataset or class order); fix: "
                             f"distill.path=<a set made for this dataset>")


def _available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Memory a new allocation can get: Linux's MemAvailable (free + the page cache it can reclaim). Not MemFree
    (SC_AVPHYS_PAGES): after reading a large array or store the page cache fills most of the memory, MemFree
    falls to a few GB (measured: 3.0 of 23.5 GB free, 24.1 GB available) and a set that fits was refused."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")  # kernels before 3.14; other Unixes
    except (ValueError, OSError, AttributeError):
        return None


def check_size(path: Path, n: int, channels: int, input_size: int | None, in_memory: bool = True) -> None:
    """Before decoding a set: its first image's size (from the header) against the dataset's input size and,
    when the whole set is decoded into memory (`in_memory`; not for the array writer, which streams one image
    at a time), the memory it will take. Too small to crop, or more than half the available memory: refused;
    far from the input size: one warning line with the numbers."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError):
        return  # _read says what is wrong with it
    total = n * channels * w * h
    gb = f"{total / 1e9:.2f} GB decoded for {n} images"
    if input_size and min(w, h) < min(MIN_SIDE, input_size):
        raise DistilledError(f"distilled image '{path}' is {w}x{h} px, the dataset's input size is {input_size}: "
                             f"replay would upsample every crop from {min(w, h)} px; fix: distill.path=<a set at "
                             f"the input size ({input_size} px)>")
    free = _available_bytes() if in_memory else None
    if free is not None and total > free / 2:
        raise DistilledError(f"distilled images of {w}x{h} px ({path.name}): {gb}, more than half of this "
                             f"machine's {free / 1e9:.1f} GB available memory; fix: resize the set to the dataset's "
                             f"input size ({input_size} px), use a machine with more memory, or map it instead "
                             f"(data/image_array.write_array streams it into an array file)")
    if input_size and (max(w, h) > 4 * input_size or min(w, h) < input_size / 2):
        log.warning("distilled images are %dx%d px, the dataset's input size is %d: replay crops and resizes them "
                    "to %d px (%s); resize the set once if that is not intended", w, h, input_size, input_size, gb)


def list_images(root: Path, classes: list[str], channels: int, input_size: int | None = None,
                in_memory: bool = True) -> list[tuple[int, list[Path]]]:
    """The set's images per class id, in image-id order, checked before any is decoded: the class folders, each
    with images, the first image's size (`check_size`; in_memory: the whole set will be decoded into memory)."""
    check_made_for(root, classes)
    ignored, listed = [], []
    for cid, d in enumerate(_class_dirs(root, classes)):
        entries = [p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")]
        paths = sorted(p for p in entries if is_image(p.name))
        ignored += [p for p in entries if not is_image(p.name)]
        if not paths:
            raise DistilledError(f"distilled folder '{d}' (class {cid}) has no images; fix: add its images or "
                                 f"use a complete set")
        listed.append((cid, paths))
    if ignored:
        log.warning("distilled folder '%s': ignored %d file(s) that are not images by name (e.g. '%s'); they "
                    "are not part of the set or its sha256", root, len(ignored), ignored[0].relative_to(root))
    check_size(listed[0][1][0], sum(len(p) for _, p in listed), channels, input_size, in_memory)
    return listed


def check_even(root: Path, classes: list[str], listed: list[tuple[int, list[Path]]]) -> None:
    """Every class has the same number of images (after reading them: an unreadable image is named first)."""
    counts = [len(p) for _, p in listed]
    if min(counts) != max(counts):  # slc = SLI x ipc per class holds only when every class has ipc
        few, many = counts.index(min(counts)), counts.index(max(counts))
        raise DistilledError(f"distilled folder '{root}' has uneven classes: class {classes[few]} has "
                             f"{counts[few]} images, class {classes[many]} {counts[many]} (slc and ipc are "
                             f"per class); fix: give every class the same number of images")


def set_entry(rel: str, data: bytes) -> bytes:
    """One image's part of the set's sha256: its path relative to the root and the sha256 of its bytes."""
    return rel.encode() + b"\0" + hashlib.sha256(data).digest()


def decoded(root: Path, listed: list[tuple[int, list[Path]]], channels: int,
            digest: "hashlib._Hash") -> Iterator[tuple[int, str, np.ndarray]]:
    """(class id, relative path, uint8 [H, W, C]) of every listed image in order, all of one size; `digest`
    takes (relative path, sha256 of the file's bytes) of each: the set's sha256."""
    first = None
    for cid, paths in track(listed, f"reading {root.name}"):
        for p in paths:
            data = p.read_bytes()
            rel = p.relative_to(root).as_posix()
            digest.update(set_entry(rel, data))
            arr = _read(p, channels)
            arr = arr if arr.ndim == 3 else arr[:, :, None]
            first = first or (arr.shape[:2], rel)
            if arr.shape[:2] != first[0]:
                raise DistilledError(f"distilled folder '{root}' mixes image sizes ({first[1]}: {first[0]}, {rel}: "
                                     f"{arr.shape[:2]}); replay needs one size; fix: resize the set to one size "
                                     f"(e.g. the dataset's input size)")
            yield cid, rel, arr


def load_distilled(root: Path | str, classes: list[str], channels: int,
                   input_size: int | None = None) -> DistilledImages:
    """Read a distilled ImageFolder into memory; every check happens before any pixel is used for training
    (with `input_size`, the images' size too: check_size). Runs map the set's array instead
    (data/image_array.py), which holds exactly these pixels."""
    root = Path(root)
    digest = hashlib.sha256()
    arrays, targets, files = [], [], []
    listed = list_images(root, classes, channels, input_size)
    for cid, rel, arr in decoded(root, listed, channels, digest):
        arrays.append(arr)
        targets.append(cid)
        files.append(rel)
    check_even(root, classes, listed)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return DistilledImages(images=images, targets=torch.tensor(targets, dtype=torch.int64), files=files,
                           classes=list(classes), sha256=digest.hexdigest(), root=str(root))


def write_imagefolder(root: Path, images: torch.Tensor, targets: torch.Tensor) -> None:
    """Write uint8 [N, C, H, W] images as lossless PNGs into 5-digit class folders (sorted order = class id)."""
    counters: dict[int, int] = {}
    for img, t in track(list(zip(images, targets.tolist())), "writing PNGs"):
        k = counters.get(t, 0)
        counters[t] = k + 1
        save_png(img, Path(root) / f"{t:05d}" / f"{k:05d}.png")


def save_png(img: torch.Tensor, path: Path) -> None:
    """One uint8 [C, H, W] image as a lossless PNG, written under a temporary name and renamed into place
    (a reader, or a resumed run, never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = img.permute(1, 2, 0).cpu().numpy()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:  # a write that fails half-way leaves nothing behind
        tmp.unlink(missing_ok=True)
        raise
