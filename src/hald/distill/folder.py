"""`distill=folder`: an existing set of distilled images on disk (published SRe2L / RDED / CV-DD / LPLD / FADRM
sets): nothing is built; the folder is opened, verified against the dataset and keyed by its content (the
sha256 of every image's path and bytes), so a changed folder is never mistaken for the one labelled before."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from hald.data.distilled import DistilledImages, load_distilled
from hald.data.sources import class_names
from hald.distill.registry import Cost, register
from hald.errors import ConfigError


def folder_path(dcfg: Mapping[str, Any]) -> Path:
    path = dcfg.get("path")
    if not path or path == "???":
        raise ConfigError("distill=folder needs distill.path; fix: distill.path=/path/to/distilled/images")
    return Path(str(path)).expanduser().resolve()


def open_folder(dcfg: Mapping[str, Any], dataset: Mapping[str, Any]) -> DistilledImages:
    """The set, read and checked (class folders, image modes and sizes: data/distilled.py)."""
    return load_distilled(folder_path(dcfg), class_names(dataset), int(dataset["channels"]),
                          int(dataset["input_size"]))


def check_folder(dcfg: Mapping[str, Any], dataset: Mapping[str, Any]) -> None:
    folder_path(dcfg)


def folder_cost(dcfg: Mapping[str, Any], dataset: Mapping[str, Any], ipc: int) -> Cost:
    return Cost("images read")


@dataclass
class FolderConfig:
    method: str = "folder"
    path: Any = None


register("folder", given=True, check=check_folder, cost=folder_cost, config=FolderConfig)(open_folder)
