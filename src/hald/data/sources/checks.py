"""Cheap checks of a dataset config and its on-disk layout, shared by the families (no image is decoded).

Each raises a one-line :class:`SourceError` (cause; expected layout; fix) on the first problem, so a run
fails in seconds instead of after hours of work.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from hald.data.sources.base import fail


def setting(cfg: Mapping | Any, key: str, default: Any = None) -> Any:
    """``cfg[key]`` for dicts and DictConfigs (interpolations resolve on access); null means "unset"."""
    value = cfg.get(key, default)
    return default if value is None else value


def check_channels(cfg, name: str) -> None:
    """dataset.channels is 1 or 3 (or unset) and the normalisation statistics have one value per channel."""
    channels = setting(cfg, "channels")
    if channels is None:  # unset: each source uses its native channel count
        return
    if channels not in (1, 3):
        raise fail(name, f"dataset.channels={channels} is not supported", "1 (grayscale) or 3 (RGB)",
                   "set dataset.channels=1 or dataset.channels=3")
    # Normalisation statistics are per channel; a mismatch would only surface later as a shape error.
    for key in ("mean", "std"):
        stats = setting(cfg, key)
        if stats is not None and len(stats) != channels:
            raise fail(name, f"dataset.{key} has {len(stats)} values but dataset.channels={channels}",
                       f"one {key} value per channel", f"give dataset.{key} {channels} value(s)")


def require_channels(cfg, name: str, native: int, layout: str) -> None:
    """In-memory datasets are served at their native channel count."""
    channels = setting(cfg, "channels", native)
    if channels != native:
        raise fail(name, f"dataset.channels={channels} but the images have {native} channel(s)", layout,
                   f"set dataset.channels={native}")


def require_root(cfg, name: str, layout: str, must_exist: bool = True) -> str:
    """The absolute dataset.root (``~`` expanded); it must be an existing folder unless ``must_exist`` is off."""
    root = setting(cfg, "root")
    if root is None or str(root).strip() == "":
        raise fail(name, "dataset.root is not set (null)", layout, "set dataset.root=PATH")
    path = os.path.abspath(os.path.expanduser(str(root)))
    if must_exist and not os.path.isdir(path):
        problem = "is not a folder" if os.path.exists(path) else "does not exist"
        raise fail(name, f"root '{path}' {problem}", layout, "set dataset.root=PATH")
    return path


def require_dir(name: str, path: str, what: str, layout: str, fix: str) -> None:
    if not os.path.isdir(path):
        raise fail(name, f"{what} '{path}' is missing", layout, fix)


def require_file(name: str, path: str, what: str, layout: str, fix: str) -> None:
    if not os.path.isfile(path):
        raise fail(name, f"{what} '{path}' is missing", layout, fix)


def check_num_classes(cfg, name: str, found: int, where: str, layout: str) -> None:
    """dataset.num_classes, when set, matches the ``found`` classes (null = take whatever is on disk)."""
    wanted = setting(cfg, "num_classes")
    if wanted is not None and int(wanted) != found:
        raise fail(name, f"found {found} classes in '{where}' but dataset.num_classes={wanted}", layout,
                   f"set dataset.num_classes={found} or point dataset.root at the complete dataset")


def few(names: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` names, for messages that must stay one readable line."""
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")
