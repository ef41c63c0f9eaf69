"""Stand-in data at the real shapes, in the datasets' own on-disk layouts, made locally (nothing downloaded).

- Tiny-ImageNet: the official tiny-imagenet-200 folder: wnids.txt, words.txt, train/<wnid>/images/*.JPEG and
  the flat val/images/ with val/val_annotations.txt; 200 WNIDs, 64x64 RGB JPEGs.
- ImageNet-1K: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, 1,000 WNID folders, JPEGs of ImageNet's typical
  sizes (500x375, 375x500, 500x333, ...), so the loaders' Resize(256) / RandomResizedCrop(224) do real work.
- CIFAR-100: the python version's cifar-100-python/{train, test, meta} pickles (fine and coarse labels, 32x32).
- ImageNette / ImageWoof: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG with 10 WNID folders (imagenette2 /
  imagewoof2), JPEGs of ImageNet's typical sizes.
- A published distilled set as HALD's README ships them: 1,000 5-digit class folders of 224x224 JPEGs.
- torchvision's ImageNet-1K weights: random-init state dicts under $TORCH_HOME/hub/checkpoints/ with the file
  names torchvision looks for, so `teacher.pretrained=torchvision:IMAGENET1K_V1` takes its real code path.

Only counts are small (images per class). Content: each class a smooth colour field with its own seed, so
JPEGs stay small and classes differ. WNIDs are `n%08d` (the real ones are not bundled; same length).
A `standin.json` written last records what a folder holds: a folder is reused only when it matches.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hald.artifacts import write_json_atomic

IMAGENET_SIZES = ((500, 375), (375, 500), (500, 333), (500, 400), (640, 480))  # (w, h): common ILSVRC shapes


def wnids(n: int) -> list[str]:
    return [f"n{i:08d}" for i in range(n)]


def _picture(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A smooth RGB field: 6x6 random colours upsampled bicubically (a few KB as JPEG, unlike noise)."""
    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    return small.resize(size, Image.BICUBIC)


def _made(root: Path, spec: dict[str, Any]) -> bool:
    marker = root / "standin.json"
    return marker.is_file() and json.loads(marker.read_text()) == spec


def _fresh(root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)


def tiny_imagenet(root: Path, train_per_class: int, val_per_class: int) -> Path:
    """The tiny-imagenet-200 layout with 200 classes of 64x64 JPEGs."""
    root = Path(root)
    spec = {"kind": "tiny_imagenet", "classes": 200, "train_per_class": train_per_class,
            "val_per_class": val_per_class}
    if _made(root, spec):
        return root
    _fresh(root)
    names = wnids(200)
    (root / "wnids.txt").write_text("\n".join(reversed(names)) + "\n")  # the real file is unsorted too
    (root / "words.txt").write_text("".join(f"{w}\tstand-in class {k}\n" for k, w in enumerate(names)))
    (root / "val" / "images").mkdir(parents=True)
    notes, n = [], 0
    for k, w in enumerate(names):
        rng = np.random.default_rng(k)
        (root / "train" / w / "images").mkdir(parents=True)
        for i in range(train_per_class):
            _picture(rng, (64, 64)).save(root / "train" / w / "images" / f"{w}_{i}.JPEG", quality=90)
        for _ in range(val_per_class):
            name = f"val_{n}.JPEG"
            _picture(rng, (64, 64)).save(root / "val" / "images" / name, quality=90)
            notes.append(f"{name}\t{w}\t0\t0\t63\t63\n")
            n += 1
    (root / "val" / "val_annotations.txt").write_text("".join(notes))
    write_json_atomic(root / "standin.json", spec)
    return root


def imagenet1k(root: Path, train_per_class: int, val_per_class: int) -> Path:
    """train/<wnid>/ and val/<wnid>/ (val already sorted into class folders) for 1,000 WNIDs."""
    root = Path(root)
    spec = {"kind": "imagenet1k", "classes": 1000, "train_per_class": train_per_class,
            "val_per_class": val_per_class, "sizes": [list(s) for s in IMAGENET_SIZES]}
    if _made(root, spec):
        return root
    _fresh(root)
    for k, w in enumerate(wnids(1000)):
        rng = np.random.default_rng(k)
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            (root / split / w).mkdir(parents=True)
            for i in range(count):
                size = IMAGENET_SIZES[(k + i) % len(IMAGENET_SIZES)]
                _picture(rng, size).save(root / split / w / f"{w}_{split}_{i}.JPEG", quality=85)
    write_json_atomic(root / "standin.json", spec)
    return root


def cifar100(root: Path, train_per_class: int, test_per_class: int) -> Path:
    """ROOT/cifar-100-python/{train, test, meta} as the official archive extracts: pickled dicts with `data`
    (N x 3072 uint8, channel-major rows), `fine_labels`, `coarse_labels`, `filenames`; 100 fine classes."""
    import pickle

    root = Path(root)
    spec = {"kind": "cifar100", "classes": 100, "train_per_class": train_per_class, "test_per_class": test_per_class}
    if _made(root, spec):
        return root
    _fresh(root)
    folder = root / "cifar-100-python"
    folder.mkdir()
    names = [f"standin_class_{k:03d}" for k in range(100)]
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": names, "coarse_label_names": [f"standin_super_{k:02d}" for k in range(20)]}, f)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        rows, labels = [], []
        for k in range(100):
            rng = np.random.default_rng([k, 0 if split == "train" else 1])
            for _ in range(count):
                rows.append(np.asarray(_picture(rng, (32, 32))).transpose(2, 0, 1).reshape(-1))
                labels.append(k)
        with open(folder / split, "wb") as f:
            pickle.dump({"batch_label": f"{split} batch (stand-in)", "fine_labels": labels,
                         "coarse_labels": [k // 5 for k in labels], "data": np.stack(rows),
                         "filenames": [f"standin_{i}.png" for i in range(len(labels))]}, f)
    write_json_atomic(root / "standin.json", spec)
    return root


def wnid_folders(root: Path, kind: str, classes: int, train_per_class: int, val_per_class: int) -> Path:
    """train/<wnid>/ and val/<wnid>/ for `classes` WNIDs: the imagenette2 / imagewoof2 layout (10 classes)."""
    root = Path(root)
    spec = {"kind": kind, "classes": classes, "train_per_class": train_per_class, "val_per_class": val_per_class,
            "sizes": [list(s) for s in IMAGENET_SIZES]}
    if _made(root, spec):
        return root
    _fresh(root)
    for k, w in enumerate(wnids(classes)):
        rng = np.random.default_rng([k, classes])
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            (root / split / w).mkdir(parents=True)
            for i in range(count):
                size = IMAGENET_SIZES[(k + i) % len(IMAGENET_SIZES)]
                _picture(rng, size).save(root / split / w / f"{w}_{split}_{i}.JPEG", quality=85)
    write_json_atomic(root / "standin.json", spec)
    return root


def published_set(root: Path, ipc: int, classes: int = 1000, size: int = 224) -> Path:
    """A distilled set as published (SRe2L / LPLD / FADRM / RDED on HALD's Drive): 5-digit class folders."""
    root = Path(root)
    spec = {"kind": "published_set", "classes": classes, "ipc": ipc, "size": size}
    if _made(root, spec):
        return root
    _fresh(root)
    for c in range(classes):
        rng = np.random.default_rng(10_000 + c)
        (root / f"{c:05d}").mkdir()
        for i in range(ipc):
            _picture(rng, (size, size)).save(root / f"{c:05d}" / f"class{c:05d}_id{i:03d}.jpg", quality=90)
    write_json_atomic(root / "standin.json", spec)
    return root


def torchvision_weights(torch_home: Path, models: list[str], enum: str = "IMAGENET1K_V1") -> Path:
    """Random-init ImageNet-1K state dicts where torchvision's weight loader finds its cached downloads.

    Set TORCH_HOME=torch_home for the run only: these are stand-ins, never real weights."""
    import torch
    import torchvision

    ckpts = Path(torch_home) / "hub" / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    for name in models:
        weights = torchvision.models.get_model_weights(name)[enum]
        path = ckpts / Path(weights.url).name
        if path.is_file():
            continue
        torch.manual_seed(0)
        state = torchvision.models.get_model(name, weights=None, num_classes=1000).state_dict()
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        tmp.replace(path)
    (Path(torch_home) / "STAND-IN-WEIGHTS.txt").write_text(
        "Random-init weights under torchvision's file names, made by `make rehearse`. Not pretrained.\n")
    return Path(torch_home)


def family_data(family: str, data: Path, train_per_class: int, val_per_class: int) -> Path:
    """The stand-in of a rehearsal family (hald_tools/rehearse/presets.py FAMILIES) under `data`."""
    data = Path(data)
    if family == "tiny":
        return tiny_imagenet(data / "tiny-imagenet-200", train_per_class, val_per_class)
    if family == "in1k":
        return imagenet1k(data / "imagenet", train_per_class, val_per_class)
    if family == "cifar100":
        return cifar100(data / "cifar100", train_per_class, val_per_class)
    if family == "nette":
        return wnid_folders(data / "imagenette2", "imagenette", 10, train_per_class, val_per_class)
    if family == "woof":
        return wnid_folders(data / "imagewoof2", "imagewoof", 10, train_per_class, val_per_class)
    raise ValueError(f"no stand-in data for rehearsal family '{family}'; fix: one of tiny, in1k, cifar100, nette, woof")
