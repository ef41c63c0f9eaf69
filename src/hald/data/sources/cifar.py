"""CIFAR-10 / CIFAR-100: the python-pickle batches of the official archives, read by torchvision.

hald checks the layout itself first (each missing file named, with a fix), then lets torchvision's
CIFAR10/CIFAR100 classes download and parse the batches. CIFAR-100 has 20 coarse and 100 fine classes;
hald uses the fine ones, as torchvision does.
"""

from __future__ import annotations

import functools
import os
import pickle
from typing import Any

import numpy as np
from torchvision import datasets

from hald.data.sources.base import ArraySource, ImageSource, fail
from hald.data.sources.checks import (check_num_classes, require_channels, require_dir, require_file, require_root,
                                      setting)
from hald.data.sources.registry import register_source

_REREAD = "re-extract the archive or set dataset.download=true"


def _without_md5(release: type) -> type:
    """torchvision's reader of ``release`` minus its md5 sums (``check_integrity(path, None)`` only asks
    that the file exists). Our own checks name each missing file; the md5 sums would refuse any copy that
    is not byte-identical to the release (a re-pickled or cut-down set, the tests' stand-ins)."""
    return type(f"Local{release.__name__}", (release,), {
        "train_list": [[file_name, None] for file_name, _ in release.train_list],
        "test_list": [[file_name, None] for file_name, _ in release.test_list],
        "meta": {**release.meta, "md5": None},
    })


_RELEASES = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}  # torchvision class of each dataset
_READERS = {name: _without_md5(getattr(datasets, release)) for name, release in _RELEASES.items()}


def _layout(reader: type) -> str:
    files = [f for f, _ in reader.train_list + reader.test_list] + [reader.meta["filename"]]
    return f"ROOT/{reader.base_folder}/{{{','.join(files)}}} (the extracted {reader.filename})"


def _batch_paths(reader: type, folder: str, split: str) -> list[str]:
    return [os.path.join(folder, f) for f, _ in (reader.train_list if split == "train" else reader.test_list)]


def _read_pickle(path: str) -> dict[str, Any]:
    """One CIFAR pickle with str keys, however it was written.

    The official files are Python 2 pickles, whose str keys load as str with encoding="latin1". Copies
    re-dumped after CIFAR's own Python 3 recipe, ``pickle.load(f, encoding="bytes")``, have bytes keys
    (b"data", b"labels"), which torchvision's reader does not look up. Pickle can run code: only point
    dataset.root at archives you trust (torchvision does the same).
    """
    with open(path, "rb") as f:
        content = pickle.load(f, encoding="latin1")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in content.items()}


def _meta_classes(name: str, reader: type, folder: str) -> list[str]:
    """Class names from the (tiny) meta file; their order defines the labels."""
    path, layout = os.path.join(folder, reader.meta["filename"]), _layout(reader)
    try:
        names = _read_pickle(path)[reader.meta["key"]]
    except Exception as err:
        raise fail(name, f"cannot read the class names in '{path}' ({type(err).__name__}: {err})", layout,
                   _REREAD) from err
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def _check_files(cfg, name: str) -> tuple[str, list[str]]:
    """Root, folder and every batch present; class count from the meta file. Returns (root, classes)."""
    reader, layout = _READERS[name], _layout(_READERS[name])
    fix = f"set dataset.download=true or extract {reader.filename} into dataset.root"
    root = require_root(cfg, name, layout)
    folder = os.path.join(root, reader.base_folder)
    require_dir(name, folder, "CIFAR folder", layout, fix)
    for path in _batch_paths(reader, folder, "train") + _batch_paths(reader, folder, "test"):
        require_file(name, path, "CIFAR pickle", layout, fix)
    require_file(name, os.path.join(folder, reader.meta["filename"]), "CIFAR pickle", layout, fix)
    classes = _meta_classes(name, reader, folder)
    check_num_classes(cfg, name, len(classes), os.path.join(folder, reader.meta["filename"]), layout)
    return root, classes


def _check(cfg, name: str) -> None:
    layout = _layout(_READERS[name])
    require_channels(cfg, name, 3, layout)
    if setting(cfg, "download", False):
        # The files may not exist yet: only the root setting can be checked before downloading.
        require_root(cfg, name, layout, must_exist=False)
        return
    _check_files(cfg, name)


def _download(cfg, name: str) -> None:
    """Fetch the official release through torchvision, which verifies the archive's and the files' md5 sums
    and skips the download when they already match. It then loads the test split, the smaller one."""
    reader = _READERS[name]
    root = require_root(cfg, name, _layout(reader), must_exist=False)
    try:
        # Looked up at call time, so that tests can stand in for the network.
        getattr(datasets, _RELEASES[name])(root, train=False, download=True)
    except Exception as err:
        raise fail(name, f"download into '{root}' failed ({type(err).__name__}: {err})", _layout(reader),
                   f"download {reader.filename} by hand, extract it into '{root}' and set dataset.download=false") from err


def _images_and_labels(reader: type, root: str, split: str) -> tuple[np.ndarray, list[int]]:
    """uint8 [N,3,32,32] images and the labels of one split."""
    try:
        release = reader(root, train=split == "train")
    except KeyError:  # no str keys: a bytes-keyed copy (see _read_pickle), read batch by batch
        batches = [_read_pickle(p) for p in _batch_paths(reader, os.path.join(root, reader.base_folder), split)]
        # Rows are channel-major (1024 R, then G, then B values), so this reshape yields [n, 3, 32, 32].
        images = np.vstack([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
        return images, [y for b in batches for y in b.get("labels", b.get("fine_labels"))]
    return release.data.transpose(0, 3, 1, 2), release.targets  # torchvision hands out [N,32,32,3]


def _classes(cfg, name: str) -> list[str]:
    if setting(cfg, "download", False):
        _download(cfg, name)
    return _check_files(cfg, name)[1]


def _build(cfg, split: str, name: str) -> ImageSource:
    reader = _READERS[name]
    if setting(cfg, "download", False):
        _download(cfg, name)
    root, classes = _check_files(cfg, name)
    try:
        images, labels = _images_and_labels(reader, root, split)
        return ArraySource(name, split, classes, labels, images)
    except Exception as err:  # whatever a malformed batch makes numpy, pickle or torchvision raise
        paths = ", ".join(f"'{p}'" for p in _batch_paths(reader, os.path.join(root, reader.base_folder), split))
        raise fail(name, f"cannot read the {split} batches {paths} ({type(err).__name__}: {err})",
                   _layout(reader), f"{_REREAD} (data must be uint8 [n, 3072], one label per row)") from err


for _name in _RELEASES:
    register_source(_name, check=functools.partial(_check, name=_name),
                    classes=functools.partial(_classes, name=_name))(functools.partial(_build, name=_name))
