"""Resumable units of work, kept in a stable per-artifact work dir until the artifact is complete.

The cached-artifact temp dir is removed when a build fails, so finished work lives next to it instead
(`<cache>/<stage>/.partial-<key>/`). A unit is a named group of files plus a JSON marker:

    <work dir>/<files of the unit>         each written under a temp name and renamed (never half a file)
    <work dir>/units/<name>.json           written after the unit's files: present = unit finished; it
                                            lists every file's size and sha256

Users: recover (unit = (IPC index, class chunk), PNGs; distill/recover.py) and relabel (unit = one pass,
a safetensors shard; labels/relabel.py). A killed run leaves finished units plus, per rank, at most one
unit whose files have no marker yet; the next run skips the finished ones (never writes them again) and
recomputes the rest. A marker whose files no longer match it (size, or sha256 when checked deeply) is
dropped and its unit recomputed. When every unit is finished its files are hard-linked (copied where the
file system cannot link) into the artifact being built; the pipeline deletes the work dir once that
artifact is complete. Units are seeded by what they are, never by rank or order, so a resumed or
multi-process run gives the same files as an uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from hald.artifacts import sha256_file, write_json_atomic

log = logging.getLogger(__name__)


class UnitStore:
    def __init__(self, work_dir: Path):
        self.root = Path(work_dir)
        self.units = self.root / "units"

    def marker(self, name: str) -> Path:
        return self.units / f"{name}.json"

    def is_done(self, name: str, deep: bool = False) -> bool:
        """The unit's marker exists and its files have the recorded sizes (and sha256 when deep); a marker
        that does not match its files is removed, so the unit is computed again."""
        m = self.marker(name)
        if not m.is_file():
            return False
        try:
            files = json.loads(m.read_text()).get("files", {})
        except json.JSONDecodeError:
            files = None
        ok = files is not None and all(self._matches(rel, e, deep) for rel, e in files.items())
        if not ok:
            log.warning("unit %s in %s does not match its files: computing it again", name, self.root)
            m.unlink(missing_ok=True)
        return ok

    def _matches(self, rel: str, entry: dict[str, Any], deep: bool) -> bool:
        f = self.root / rel
        return (f.is_file() and f.stat().st_size == entry["bytes"]
                and (not deep or sha256_file(f) == entry["sha256"]))

    def commit(self, name: str, files: Iterable[str], record: dict[str, Any]) -> None:
        """Mark a unit finished: its files (paths relative to the work dir, already in place) with size and
        sha256, plus `record`. Call after the files are written."""
        entries = {rel: {"bytes": (self.root / rel).stat().st_size, "sha256": sha256_file(self.root / rel)}
                   for rel in files}
        self.units.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.marker(name), {"name": name, **record, "files": entries})

    def records(self, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Markers (without their file lists), sorted by unit name, or those of `names` in that order."""
        paths = [self.marker(n) for n in names] if names is not None else sorted(self.units.glob("*.json"))
        out = []
        for p in paths:
            rec = json.loads(p.read_text())
            rec.pop("files", None)
            rec.pop("name", None)
            out.append(rec)
        return out

    def promote(self, names: Iterable[str], dest: Path, strip: str = "") -> None:
        """Verify every file of the given units (sha256) and link it into dest (prefix `strip` removed from
        its relative path), leaving the work dir intact."""
        for name in names:
            if not self.is_done(name, deep=True):
                raise RuntimeError(f"unit {name} in {self.root} changed on disk; run again to recompute it")
            for rel in json.loads(self.marker(name).read_text())["files"]:
                target = Path(dest) / rel.removeprefix(strip)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(self.root / rel, target)
                except OSError:  # another file system, or links not supported
                    shutil.copy2(self.root / rel, target)
