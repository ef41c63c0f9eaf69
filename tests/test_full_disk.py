"""A full disk while writing a label shard, the exported student or last.ckpt: one OSError that names the file
(the app prints it as one line), and no temp file left behind.

The libraries hide the OS error (safetensors: SafetensorError "... (os error 28)"; torch.save: a RuntimeError from
its zip writer), so a plain `except OSError` missed both. The real-disk tests mount a 64 KiB tmpfs (root only;
skipped elsewhere); the injected tests raise the libraries' exact errors and run everywhere."""
from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors import SafetensorError

from hald import pipeline
from hald.artifacts import atomic_write, write_error
from hald.models.build import save_weights


@pytest.fixture
def full_disk(tmp_path):
    """A directory on a 64 KiB tmpfs: the first write of more than that fails with ENOSPC."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    import gc

    gc.collect()  # torch.save's failed zip writer may still hold its file open
    subprocess.run(["umount", "-l", str(mnt)], check=False)  # lazy: detached now even if a handle lingers


def big_net() -> nn.Module:
    return nn.Linear(200, 200)  # 160 KB of weights: more than the tmpfs holds


def test_exporting_weights_onto_a_full_disk_names_the_file_and_leaves_nothing(full_disk):
    with pytest.raises(OSError) as e:
        save_weights(big_net(), full_disk / "student.safetensors")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(full_disk / "student.safetensors")
    assert list(full_disk.iterdir()) == []  # no temp file, no 0-byte weights


def test_torch_save_onto_a_full_disk_is_an_enospc_naming_the_file(full_disk):
    target = full_disk / "last.ckpt"
    with pytest.raises(OSError) as e:
        with atomic_write(target) as tmp:
            torch.save({"w": torch.zeros(100_000)}, tmp)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert list(full_disk.iterdir()) == []


def test_the_libraries_hidden_io_errors_become_oserrors(tmp_path):
    path = tmp_path / "pass_0000.safetensors"
    hidden = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    err = write_error(hidden, path)
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC and err.filename == str(path)
    assert write_error(ValueError("shapes differ"), path) is None  # a bug stays a bug, with its traceback
    assert write_error(KeyboardInterrupt(), path) is None
    # torch.save's zip writer names no cause: only a disk with no room left makes it an ENOSPC
    assert write_error(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos"), path) is None


def test_a_full_disk_while_writing_a_shard_stops_with_the_shard_named(fast_cfg, monkeypatch):
    """The store writer's real call, failing the way safetensors fails on a full disk."""
    from hald.labels import store as store_mod

    def full(*a, **kw):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(store_mod, "save_file", full)
    cfg = fast_cfg("train.epochs=1")
    with pytest.raises(OSError, match=r"No space left on device: '.*pass_0000\.safetensors'") as e:
        pipeline.run(cfg)
    assert e.value.errno == errno.ENOSPC
    leftovers = [p for p in Path(cfg.paths.cache_dir).rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
