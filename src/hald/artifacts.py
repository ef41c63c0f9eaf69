"""Artifacts: directories with a manifest.json, keyed by a hash of exactly what determines them.

An artifact is complete when its manifest exists and every file it lists has the recorded size (and, when
asked, sha256). Artifacts are built in a temporary sibling directory and renamed into place, so a crash
never leaves a half-written artifact where a reader would find it.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf
from hald.errors import InputError

MANIFEST = "manifest.json"


class ArtifactError(InputError, RuntimeError):
    """An artifact on disk is incomplete, corrupted, or made for something else."""


def plain(obj: Any) -> Any:
    """OmegaConf nodes -> plain Python containers (resolved), other values unchanged."""
    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


def key_of(*parts: Any, length: int = 12) -> str:
    """Stable short hash of JSON-serialisable parts (config subtrees, upstream keys, versions)."""
    blob = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed over `path` (readers see the old or
    the new file, never half of one), on any failure it is removed. Same directory, so the rename never
    crosses a file system. The file gets the mode a plain open() would give under the user's umask (mkstemp's
    0600 would hide results from the rest of a lab sharing a cache)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        err = write_error(e, path)  # before the unlink: a full disk is still full
        Path(tmp).unlink(missing_ok=True)
        if err is not None:
            raise err from e
        raise


def naming(e: OSError, path: Path) -> OSError:
    """The same error with the file it was writing (a full disk inside a library often names none)."""
    if e.filename is not None:
        return e
    if e.errno is None:
        return type(e)(f"{e or type(e).__name__} (writing '{path}')")
    return type(e)(e.errno, e.strerror or str(e), str(path))


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def write_error(e: BaseException, path: Path) -> OSError | None:
    """A failed write as the OSError it is, naming `path`, or None when it is not an I/O failure. Libraries
    hide the OS error: safetensors raises SafetensorError("... No space left on device (os error 28)"), torch.save
    a RuntimeError from its zip writer ("[enforce fail at inline_container.cc] ... unexpected pos") that names no
    cause at all; for that one a file system with (almost) no free space left is the cause."""
    if isinstance(e, OSError):
        return naming(e, path)
    if not isinstance(e, Exception):
        return None
    found = _OS_ERROR.search(str(e))
    if found:
        code = int(found.group(1))
        return OSError(code, os.strerror(code), str(path))
    if isinstance(e, RuntimeError) and ("inline_container" in str(e) or "PytorchStreamWriter" in str(e)):
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            return None
        if free < 1 << 20:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return None


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """JSON written through `atomic_write` (and fsynced: manifests are the commit points of artifacts)."""
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        json.dump(plain(dict(data)), f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())


# Reuse checks of large files (docs/checks.md): a file of at least SAMPLE_MIN bytes is checked on reuse by its
# size and the sha256 of SAMPLE_BLOCKS blocks of SAMPLE_BLOCK bytes at fixed offsets (the first and the last
# included), recorded at write time next to its full sha256; HALD_VERIFY=full hashes every file whole.
SAMPLE_MIN, SAMPLE_BLOCK, SAMPLE_BLOCKS = 64 << 20, 1 << 20, 16
VERIFY_MODES = ("sampled", "full")


def verify_mode() -> str:
    """HALD_VERIFY: `sampled` (default: large files by sampled blocks) or `full` (every file's whole sha256)."""
    mode = os.environ.get("HALD_VERIFY", "sampled").strip().lower() or "sampled"
    if mode not in VERIFY_MODES:
        raise InputError(f"HALD_VERIFY={mode!r}; fix: HALD_VERIFY=full (hash every file whole) or unset it")
    return mode


def sample_sha256(path: Path, size: int) -> str:
    """sha256 of the file's size and its sampled blocks (offsets fixed by the size alone)."""
    step = (size - SAMPLE_BLOCK) / (SAMPLE_BLOCKS - 1)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for i in range(SAMPLE_BLOCKS):
            f.seek(round(i * step))
            h.update(f.read(SAMPLE_BLOCK))
    return h.hexdigest()


def file_entry(p: Path, with_sha: bool = True) -> dict[str, Any]:
    """{bytes, sha256 (and sample_sha256 for a file of at least SAMPLE_MIN bytes)} of one file."""
    entry: dict[str, Any] = {"bytes": p.stat().st_size}
    if with_sha:
        entry["sha256"] = sha256_file(p)
        if entry["bytes"] >= SAMPLE_MIN:
            entry["sample_sha256"] = sample_sha256(p, entry["bytes"])
    return entry


def file_entries(root: Path, with_sha: bool = True) -> dict[str, dict[str, Any]]:
    """{relative path: file_entry} for every file under root except the manifest."""
    return {p.relative_to(root).as_posix(): file_entry(p, with_sha)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}


def content_differs(f: Path, entry: Mapping[str, Any]) -> str | None:
    """Why the file's content does not match its entry (None: it matches): the sampled blocks of a large file
    whose entry records them, unless HALD_VERIFY=full; the whole sha256 otherwise (and for older manifests)."""
    if "sample_sha256" in entry and verify_mode() != "full":
        return None if sample_sha256(f, entry["bytes"]) == entry["sample_sha256"] else "sampled blocks' sha256"
    return None if sha256_file(f) == entry["sha256"] else "sha256"


SEAL = "manifest_sha256"


def seal_of(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its own seal: a manifest edited by hand (5 passes
    made 2) or damaged no longer matches it."""
    body = {k: v for k, v in manifest.items() if k != SEAL}
    return hashlib.sha256(json.dumps(plain(body), sort_keys=True, default=str).encode()).hexdigest()


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest, checked against its seal."""
    path = Path(path)
    mf = path / MANIFEST if path.is_dir() else path
    try:
        manifest = json.loads(mf.read_text())
    except (FileNotFoundError, NotADirectoryError):
        raise ArtifactError(f"{path}: no {MANIFEST} (not an artifact, or an interrupted write); "
                            f"fix: delete it and run again") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{mf}: corrupted manifest ({e.msg}); fix: delete {path} and run again") from None
    if manifest.get(SEAL) != seal_of(manifest):
        what = "has no seal (made by an older hald)" if SEAL not in manifest else "does not match its seal (edited or damaged)"
        raise ArtifactError(f"{mf} {what}; fix: delete {path} and run again, or rebuild it with this hald")
    return manifest


def verify(path: Path, deep: bool = False) -> dict[str, Any]:
    """Return the manifest if every listed file has its recorded size (and content when deep: content_differs)."""
    path = Path(path)
    manifest = read_manifest(path)
    for rel, entry in manifest.get("files", {}).items():
        f = path / rel
        if not f.is_file():
            raise ArtifactError(f"{path}: file {rel} listed in the manifest is missing; fix: delete {path} and run again")
        size = f.stat().st_size
        if size != entry["bytes"]:
            raise ArtifactError(f"{f}: {size} bytes on disk, manifest says {entry['bytes']} (truncated or "
                                f"overwritten); fix: delete {path} and run again")
        what = content_differs(f, entry) if deep and "sha256" in entry else None
        if what:
            raise ArtifactError(f"{f}: {what} differs from the manifest (corrupted); fix: delete {path} and run again")
    return manifest


def is_complete(path: Path) -> bool:
    try:
        verify(path)
        return True
    except ArtifactError:
        return False


def problem(path: Path) -> str | None:
    """Why a cached artifact cannot be reused (None: it can; "absent": there is none). Every file's content is
    checked against its manifest each time (whole sha256; sampled blocks for large files unless HALD_VERIFY=full):
    a flipped byte in a teacher or two swapped images must not be trusted on their sizes (docs/checks.md has
    the cost)."""
    if not Path(path).exists():
        return "absent"
    try:
        verify(path, deep=True)
        return None
    except ArtifactError as e:
        return str(e)


def set_aside(path: Path) -> None:
    """Remove a broken artifact (renamed first, so no reader sees it half-deleted)."""
    aside = Path(path).with_name(f".{Path(path).name}.broken.{owner()}")
    os.replace(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


def owner() -> str:
    """host-pid: names temp dirs so that a later run can tell a crashed builder's leftovers from live work."""
    return f"{_host()}-{os.getpid()}"


def _host() -> str:
    return socket.gethostname().replace(".", "_").replace("-", "_")


def remove_stale(parent: Path, name: str) -> None:
    """Remove temp dirs of `name` left by builders on this host that no longer run (killed with -9); temp
    dirs of live processes, or of other hosts sharing the cache, are left alone."""
    host = _host()
    for d in Path(parent).glob(f".{name}.*"):
        parts = d.name[len(name) + 2:].split(".")
        if len(parts) < 3 or parts[0] not in ("building", "rank") or not parts[1].startswith(f"{host}-"):
            continue
        try:
            os.kill(int(parts[1].rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


@contextmanager
def exclusive(final: Path, what: str) -> Iterator[None]:
    """One builder per artifact, across processes, users and hosts: a POSIX lock (fcntl.lockf, which NFS
    serves through its lock manager) on `.<key>.lock` next to the artifact. The kernel releases it when the
    holder exits, however it dies, so a killed run never blocks the next. A second builder says once that it
    waits, and for whom. The lock file stays (deleting it would let a third process lock a stale inode)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    path = final.parent / f".{final.name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EAGAIN / EACCES: held by another process
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            logging.getLogger("hald").info("%s: %s is building %s; waiting for it, then reusing it", what,
                                           holder, final)
            fcntl.lockf(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{owner()} (pid {os.getpid()} on {socket.gethostname()})".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def building(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it is renamed to `final`.

    If `final` appeared meanwhile (another job of a parallel sweep won the race) ours is discarded.
    On failure the temporary directory is removed and nothing at `final` changes.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final.parent, final.name)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.building.{owner()}."))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would keep a shared lab cache private to one user
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists() and is_complete(final):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    if final.exists():  # an incomplete leftover from a crashed run: move it aside, never mix files
        shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def build_manifest(stage: str, key: str, config: Any, upstream: Mapping[str, str] | None,
                   files: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    import hald

    manifest = {
        "stage": stage,
        "key": key,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "hald_version": hald.__version__,
        "config": plain(config),
        "upstream": dict(upstream or {}),
        **{k: plain(v) for k, v in extra.items()},
    }
    manifest["files"] = files
    manifest["bytes"] = sum(e["bytes"] for e in files.values())
    manifest[SEAL] = seal_of(manifest)
    return manifest


def manifest_size(manifest: Mapping[str, Any]) -> int:
    """Bytes the manifest takes on disk (as write_json_atomic writes it)."""
    return len(json.dumps(plain(dict(manifest)), indent=2, default=str).encode())


def finish(path: Path, stage: str, key: str, config: Any, upstream: Mapping[str, str] | None = None,
           **extra: Any) -> dict[str, Any]:
    """Write the manifest of a built artifact directory (last, so its presence means complete)."""
    manifest = build_manifest(stage, key, config, upstream, file_entries(Path(path)), **extra)
    write_json_atomic(Path(path) / MANIFEST, manifest)
    return manifest


def check_writable(directory: Path) -> None:
    """Before building: the directory can take new files (a read-only cache is fine for reuse only)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ArtifactError(f"cannot write to the cache '{directory}' ({e.strerror or e}); fix: "
                            f"paths.cache_dir=<a writable directory> (complete artifacts in a read-only cache are "
                            f"still reused)") from None
