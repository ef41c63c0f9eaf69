"""The registry of dataset families: name -> how to check, build and name the classes of a dataset.

Each family module registers itself on import (the package's ``__init__`` imports them all). Three entry
points serve the rest of hald:

* :func:`check_source` validates a config and its on-disk layout cheaply, so a run fails in seconds;
* :func:`build_source` checks, then builds one split;
* :func:`class_names` gives the class order without listing any image (ImageNet's test split alone is
  50,000 files), for callers that only need to know which label means what.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hald.data.sources.base import ImageSource, SourceError, fail
from hald.data.sources.checks import check_channels, setting

Builder = Callable[[Any, str], ImageSource]
Checker = Callable[[Any], None]
Namer = Callable[[Any], list[str]]

SPLITS = ("train", "test")
SOURCES: dict[str, Builder] = {}
_CHECKS: dict[str, Checker] = {}
_CLASSES: dict[str, Namer] = {}


def register_source(name: str, check: Checker | None = None,
                    classes: Namer | None = None) -> Callable[[Builder], Builder]:
    """Register ``builder(cfg, split) -> ImageSource`` under ``name``.

    ``check(cfg)`` validates the layout without decoding images; builders may assume it has passed
    (``build_source`` runs it first), so they do not repeat the validation. ``classes(cfg)`` returns the
    builder's ``classes`` without listing image files; without it :func:`class_names` builds the train split.
    """

    def decorate(builder: Builder) -> Builder:
        if name in SOURCES:
            raise ValueError(f"dataset source '{name}' is registered twice")
        SOURCES[name] = builder
        _CHECKS[name] = check or (lambda cfg: None)
        _CLASSES[name] = classes or (lambda cfg: build_source(cfg, "train").classes)
        return builder

    return decorate


def _known_name(cfg: Mapping | Any) -> str:
    name = setting(cfg, "name")
    if name not in SOURCES:
        known = ", ".join(sorted(SOURCES))
        raise SourceError(
            f"unknown dataset '{name}'; expected one of: {known}; "
            f"fix: set dataset=<one of {known}> (or dataset.name=imagefolder for your own folders)"
        )
    return name


def check_source(cfg: Mapping | Any) -> None:
    """Validate a dataset config and its on-disk layout; raise :class:`SourceError` on the first problem."""
    name = _known_name(cfg)
    check_channels(cfg, name)
    _CHECKS[name](cfg)


def build_source(cfg: Mapping | Any, split: str) -> ImageSource:
    """Check ``cfg`` (see :func:`check_source`), then build its ``split`` ("train" or "test")."""
    if split not in SPLITS:
        raise fail(str(setting(cfg, "name")), f"unknown split '{split}'", "'train' or 'test'",
                   "call build_source(cfg, 'train') or build_source(cfg, 'test')")
    check_source(cfg)
    return SOURCES[setting(cfg, "name")](cfg, split)


def class_names(cfg: Mapping | Any) -> list[str]:
    """The ``classes`` of the dataset's sources in label order (label k means ``class_names(cfg)[k]``).

    Equal to ``build_source(cfg, split).classes`` for either split, but read from the cheapest place (the
    class folders, wnids.txt, CIFAR's meta file) and without the full layout check. These are the class
    identifiers (WNIDs, folder names), not the human-readable ``ImageSource.class_names``.
    """
    return list(_CLASSES[_known_name(cfg)](cfg))
