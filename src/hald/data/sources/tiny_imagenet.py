"""Tiny-ImageNet: the official tiny-imagenet-200 folder (200 WNIDs, 500 train and 50 val images each).

Its val split is flat (val/images/ plus an annotation file), unlike the class folders of its train split,
so it has its own family instead of being an imagefolder.
"""

from __future__ import annotations

import os
from collections import Counter

from hald.data.sources.base import FileSource, ImageSource, fail
from hald.data.sources.checks import check_num_classes, few, require_dir, require_file, require_root, setting
from hald.data.sources.files import has_image, is_image, list_images
from hald.data.sources.registry import register_source

_NAME = "tiny_imagenet"
_LAYOUT = ("the official tiny-imagenet-200 folder (wnids.txt, train/<wnid>/images/*.JPEG, val/images/, "
           "val/val_annotations.txt)")
_FIX = "point dataset.root at the extracted tiny-imagenet-200 folder"


def _wnids(root: str) -> list[str]:
    """Class order: the WNIDs of wnids.txt, sorted (the file itself lists them unsorted)."""
    path = os.path.join(root, "wnids.txt")
    require_file(_NAME, path, "class list", _LAYOUT, _FIX)
    with open(path, encoding="utf-8") as f:
        wnids = [line.strip() for line in f if line.strip()]
    repeated = sorted(w for w, n in Counter(wnids).items() if n > 1)
    if repeated:
        raise fail(_NAME, f"'{path}' lists {few(repeated)} more than once", "one WNID per line, each once",
                   f"remove the duplicate lines from '{path}'")
    if not wnids:
        raise fail(_NAME, f"'{path}' is empty", "one WNID per line", _FIX)
    return sorted(wnids)


def _val_items(root: str, wnids: list[str]) -> list[tuple[str, int]]:
    """(file name, label) of every validation image, validated against wnids.txt and val/images/."""
    images = os.path.join(root, "val", "images")
    notes = os.path.join(root, "val", "val_annotations.txt")
    require_dir(_NAME, images, "validation image folder", _LAYOUT, _FIX)
    require_file(_NAME, notes, "validation annotations", _LAYOUT, _FIX)
    label_of = {w: k for k, w in enumerate(wnids)}
    items = []
    with open(notes, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()  # tab separated: file, wnid, x, y, w, h
            if not fields:
                continue
            where = f"'{notes}' line {number}"
            if len(fields) < 2:
                raise fail(_NAME, f"{where} has no WNID", "lines 'file<TAB>wnid<TAB>x<TAB>y<TAB>w<TAB>h'", _FIX)
            file_name, wnid = fields[0], fields[1]
            if wnid not in label_of:
                raise fail(_NAME, f"{where} names WNID '{wnid}' that is not in wnids.txt", _LAYOUT, _FIX)
            path = os.path.join(images, file_name)
            if not (is_image(file_name) and os.path.isfile(path)):
                raise fail(_NAME, f"{where} names '{path}', which is missing", _LAYOUT, _FIX)
            items.append((file_name, label_of[wnid]))
    empty = sorted(set(wnids) - {wnids[k] for _, k in items})
    if empty:
        raise fail(_NAME, f"class(es) {few(empty)} have no images in '{notes}'",
                   "at least one validation image per class", _FIX)
    return items


def _check(cfg) -> None:
    root = require_root(cfg, _NAME, _LAYOUT)
    wnids = _wnids(root)
    check_num_classes(cfg, _NAME, len(wnids), os.path.join(root, "wnids.txt"), _LAYOUT)
    for wnid in wnids:
        folder = os.path.join(root, "train", wnid, "images")
        if not os.path.isdir(folder):
            raise fail(_NAME, f"WNID '{wnid}' of wnids.txt has no train folder '{folder}'", _LAYOUT, _FIX)
        if not has_image(folder):
            raise fail(_NAME, f"class folder '{folder}' has no images", _LAYOUT,
                       "restore the class's images or remove the class")
    _val_items(root, wnids)


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


def _classes(cfg) -> list[str]:
    return _wnids(require_root(cfg, _NAME, _LAYOUT))


@register_source(_NAME, check=_check, classes=_classes)
def _build(cfg, split: str) -> ImageSource:
    root = require_root(cfg, _NAME, _LAYOUT)
    wnids = _wnids(root)
    if split == "train":
        # train/<wnid>/ holds images/ and a <wnid>_boxes.txt, which is not an image.
        files, labels = list_images(root, "train", wnids)
    else:
        # Same ordering rule as the train split: classes in order, files sorted within a class.
        items = sorted(_val_items(root, wnids), key=lambda item: (item[1], item[0]))
        files = [os.path.join("val", "images", file_name) for file_name, _ in items]
        labels = [k for _, k in items]
    words = _read_words(os.path.join(root, "words.txt"))
    return FileSource(_NAME, split, wnids, labels, root, files, int(setting(cfg, "channels", 3)),
                      class_names=[words.get(w, w) for w in wnids])
