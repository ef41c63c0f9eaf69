"""Shared fixtures: the src/ layout on sys.path, composed configs, and tiny real data (mnist5k)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Tests of how much of a mapped file stays in a process's RSS: Linux's /proc accounting and MADV_DONTNEED
def _can_hand_back() -> bool:
    from hald.data.distilled import CAN_HAND_BACK

    return CAN_HAND_BACK and os.path.exists("/proc/self/status")


page_accounting = pytest.mark.skipif(not _can_hand_back(), reason="Linux page accounting and MADV_DONTNEED")


def file_rss_mb() -> float:
    """This process's file-backed RSS (mapped pages), MB."""
    from hald_tools.bench_memory import status_kb

    return status_kb("RssFile")["RssFile"] / 1024


def cold(paths: list[Path]) -> None:
    """Evict the files from the page cache for a cold-read test; skip where that cannot be done (tmpfs: its
    pages are the file)."""
    from hald_tools.page_cache import cached_mb, evict

    mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    mount = max((m for m in mounts if str(paths[0]).startswith(m[1])), key=lambda m: len(m[1]))
    if mount[2] == "tmpfs":
        pytest.skip("tmpfs keeps a file's pages (they are the file): cold reads cannot be measured here")
    evict(paths)
    assert cached_mb(paths) < 0.1, "page_cache.evict left pages of the files in the cache"
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("WANDB_MODE", "disabled")

# Overrides that make the whole pipeline take seconds: 50 train images per digit, a small teacher
# trained one epoch, a short schedule, no loggers.
FAST = [
    "++dataset.train_per_class=50",  # ++: also composes when a test picks another dataset
    "teacher.models=[convnet_w32]",
    "teacher.squeeze.epochs=1",
    "teacher.squeeze.batch_size=50",
    "ipc=4",
    "slc=8",
    "labels.batch_size=8",
    "train.epochs=4",
    "logger=none",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
]


def compose(overrides: list[str] | None = None, tmp: Path | None = None):
    """The project's config as `python src/run.py OVERRIDES` would see it (hydra interpolations resolved
    against `tmp` as the output directory)."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = hcompose(config_name="config", overrides=list(overrides or []), return_hydra_config=True)
    if tmp is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp / "out")
            cfg.paths.cache_dir = str(tmp / "cache")
            cfg.hydra.runtime.output_dir = str(tmp / "out")
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture
def fast_cfg(tmp_path):
    def make(*extra: str):
        return compose(FAST + list(extra), tmp_path)
    return make


@pytest.fixture
def one_thread():
    """Tiny tensors (recover batches of 10 digits): on a shared 2-core machine two intra-op threads spend more
    time waiting for each other than working. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
