"""`distill=folder`: an existing set of distilled images on disk (published SRe2L / RDED / CV-DD / LPLD / FADRM
sets): nothing is built; the folder is opened, verified against the dataset and keyed by its content (the
sha256 of every image's path and bytes), so a changed folder is never mistaken for the one labelled before.

On first use the folder's pixels become a cached derived artifact, `<cache>/images/<key>` (data/image_array.py:
one uint8 array, its metadata, a manifest), which later runs and every rank map instead of decoding. The key is
a fingerprint of the folder's files: (relative path, size, mtime_ns, ctime_ns) of each. Any write to a file
changes its ctime, which the kernel sets and no user call can set back, so a changed set never finds the array
of the old one; the artifact records the set's content sha256 (what names it downstream), which
HALD_VERIFY=full recomputes from the files on every open (docs/checks.md)."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from hald import artifacts
from hald.data.distilled import (MIN_SIDE, DistilledError, DistilledImages, check_made_for, list_images,
                                 load_distilled, set_entry)
from hald.data.image_array import FORMAT, open_array, write_array
from hald.data.sources import class_names
from hald.distill.registry import Cost, register
from hald.errors import ConfigError

log = logging.getLogger("hald")


def folder_path(dcfg: Mapping[str, Any]) -> Path:
    path = dcfg.get("path")
    if not path or path == "???":
        raise ConfigError("distill=folder needs distill.path; fix: distill.path=/path/to/distilled/images")
    return Path(str(path)).expanduser().resolve()


def open_folder(dcfg: Mapping[str, Any], dataset: Mapping[str, Any], cache: Path | None = None) -> DistilledImages:
    """The set, read and checked (class folders, image modes and sizes: data/distilled.py); with `cache`, mapped
    from its cached array (built on first use: `folder_array`), else decoded into memory."""
    path, classes, channels = folder_path(dcfg), class_names(dataset), int(dataset["channels"])
    if cache is None:
        return load_distilled(path, classes, channels, int(dataset["input_size"]))
    return folder_array(Path(cache), path, classes, channels, int(dataset["input_size"]))


def fingerprint(root: Path) -> list[list[Any]]:
    """(relative path, size, mtime_ns, ctime_ns) of every file under `root`: one stat per file, no reading."""
    out = []
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            st = p.stat()
            out.append([p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns, st.st_ctime_ns])
    return out


def folder_array(cache: Path, root: Path, classes: Sequence[str], channels: int,
                 input_size: int | None = None) -> DistilledImages:
    """The PNG set at `root`, mapped from its array in the cache; decoded once into a new array when the folder
    has none yet (or has changed). Builders exclude each other (artifacts.exclusive), so of several ranks or
    runs one decodes and the others wait and map. A read-only cache without the array: decoded in memory."""
    root, classes = Path(root), list(classes)
    check_made_for(root, classes)
    key = artifacts.key_of("image-array", FORMAT, str(root), classes, channels, fingerprint(root), length=16)
    path = Path(cache) / "images" / key
    if artifacts.problem(path) is not None:
        try:
            artifacts.check_writable(path.parent)
        except artifacts.ArtifactError as e:
            log.warning("images: %s; decoding %s in memory", str(e).split("; fix:")[0], root)
            return load_distilled(root, classes, channels, input_size)
        _build(path, key, root, classes, channels, input_size)
    images = open_array(path, root, classes)
    h, w = images.hw
    if input_size and min(h, w) < min(MIN_SIDE, input_size):  # a set built for another input size
        raise DistilledError(f"distilled images in '{root}' are {w}x{h} px, the dataset's input size is "
                             f"{input_size}; fix: distill.path=<a set at the input size ({input_size} px)>")
    if artifacts.verify_mode() == "full" and content_sha256(root, classes, channels) != images.sha256:
        raise DistilledError(f"distilled folder '{root}' changed since its array {path} was made (content sha256 "
                             f"differs, stat fingerprint equal); fix: delete {path} and run again")
    return images


def _build(path: Path, key: str, root: Path, classes: list[str], channels: int, input_size: int | None) -> None:
    with artifacts.exclusive(path, "images"):
        problem = artifacts.problem(path)
        if problem is None:
            return  # built by another rank or run meanwhile
        if problem != "absent":
            log.warning("images: cached %s failed its check, rebuilding: %s", path, problem.split("; fix:")[0])
            artifacts.set_aside(path)
        log.info("images: decoding %s once into %s (later runs and every rank map it)", root, path)
        with artifacts.building(path) as tmp:
            meta = write_array(tmp, root, classes, channels, input_size)
            artifacts.finish(tmp, "images", key, {"folder": str(root), "classes": classes, "channels": channels},
                             {}, images_sha256=meta["sha256"])


def content_sha256(root: Path, classes: list[str], channels: int) -> str:
    """The set's sha256 as load_distilled computes it (every file's path and bytes), without decoding."""
    digest = hashlib.sha256()
    for _, paths in list_images(root, classes, channels, in_memory=False):  # read, not decoded
        for p in paths:
            digest.update(set_entry(p.relative_to(root).as_posix(), p.read_bytes()))
    return digest.hexdigest()


def check_folder(dcfg: Mapping[str, Any], dataset: Mapping[str, Any]) -> None:
    folder_path(dcfg)


def folder_cost(dcfg: Mapping[str, Any], dataset: Mapping[str, Any], ipc: int) -> Cost:
    return Cost("images read")


@dataclass
class FolderConfig:
    method: str = "folder"
    path: Any = None


register("folder", given=True, check=check_folder, cost=folder_cost, config=FolderConfig)(open_folder)
