"""What a run prints: stages and their reuse, phase switches, results; not library chatter. And progress that
also shows when stdout is a log file (SLURM, nohup, CI), where live progress bars print nothing until the end.

Imports nothing of the project: every layer that builds a Lightning Trainer takes its progress callbacks here.
"""
from __future__ import annotations

import logging
import os
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import ProgressBar

log = logging.getLogger("hald")

# Lightning's per-run banners and tips, and one message per checkpoint save; none says anything about the run.
CHATTER = ("`weights_only` was not set", "Tip:", "GPU available:", "TPU available:", "HPU available:",
           "Loading `train_dataloader` to estimate", "`Trainer.fit` stopped:", "LOCAL_RANK:",
           "Trainer already configured with model summary", "has `shuffle=True`",
           "was configured so 1 batch", "was configured so 100% of the batches",  # limit_*_batches echoes
           "Automatic Mixed Precision (AMP)")  # the run says its precision per stage once (hald/compute.py)


class DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(c in msg for c in CHATTER)


def quiet_libraries() -> None:
    """Every library record goes through the root handlers once (Hydra's console and job log file), minus the
    chatter. `lightning` installs its own console handler at import ("INFO: ..."): every message twice."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        for h in [h for h in lg.handlers if type(h) is logging.StreamHandler]:
            lg.removeHandler(h)
        lg.propagate = True
    for h in logging.getLogger().handlers:
        if not any(isinstance(f, DropChatter) for f in h.filters):
            h.addFilter(DropChatter())
        if launched_rank() > 0:  # every rank runs this script: one console (and one run.log) speaks for all
            h.setLevel(max(h.level, logging.WARNING))


def launched_rank() -> int:
    """This process's global rank as its launcher set it (torchrun, SLURM's srun, Lightning's launcher), before
    any process group exists."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


class LogProgress(ProgressBar):
    """Progress as log lines, one every `every_s` seconds: stage, epoch, batches done, rate and ETA.

    For stdout that is not a terminal: a rich bar there writes nothing until it ends (an 18-minute squeeze
    epoch of an ImageNet-shaped run showed not one line)."""

    def __init__(self, every_s: float = 30.0, name: str = "train"):
        super().__init__()
        self.every_s, self.name = every_s, name
        self._enabled = True
        self._t0 = self._last = self._fit_t0 = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _start(self) -> None:
        # The rate is per epoch; the cadence runs across epochs, so many short epochs still give a line.
        self._t0 = time.monotonic()
        self._last = self._last or self._t0

    def _tick(self, what: str, done: int, total: int | float | None, trainer: L.Trainer) -> None:
        now = time.monotonic()
        if not self._enabled or now - self._last < self.every_s:
            return
        self._last = now
        rate = done / max(now - self._t0, 1e-9)
        finite = bool(total) and total != float("inf")
        where = f"{done}/{int(total)} batches ({100.0 * done / total:.0f}%)" if finite else f"{done} batches"
        if what == "train":  # the whole fit's ETA from its average pace so far (epochs vary: soft vs hard)
            epochs = trainer.current_epoch + (done / total if finite else 0.0)
            left = (now - self._fit_t0) * max(trainer.max_epochs - epochs, 0.0) / max(epochs, 1e-9)
            log.info("%s epoch %d/%d: %s, %.2f it/s, ETA %s", self.name, trainer.current_epoch + 1,
                     trainer.max_epochs, where, rate, _clock(left))
        else:
            eta = f", ETA {_clock((total - done) / max(rate, 1e-9))}" if finite else ""
            log.info("%s %s: %s, %.2f it/s%s", self.name, what, where, rate, eta)

    def on_train_start(self, trainer, pl_module) -> None:
        self._fit_t0 = time.monotonic()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._tick("train", batch_idx + 1, self.total_train_batches, trainer)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self._start()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._tick("validation", batch_idx + 1, _nth(trainer.num_val_batches, dataloader_idx), trainer)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._tick("test", batch_idx + 1, _nth(trainer.num_test_batches, dataloader_idx), trainer)

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self._start()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._tick("predict", batch_idx + 1, _nth(trainer.num_predict_batches, dataloader_idx), trainer)


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _nth(batches: list, i: int) -> int | float | None:
    return batches[i] if i < len(batches) else None


def is_terminal() -> bool:
    return sys.stdout.isatty()


def progress_every() -> float:
    return float(os.environ.get("HALD_PROGRESS_EVERY", 30))


class Ticker:
    """Progress of a long loop as log lines, one every `every_s` seconds (HALD_PROGRESS_EVERY, default 30):
    what, done / total, rate, ETA. For stdout that is not a terminal, where a transient rich bar writes
    nothing (RDED's scoring at ImageNet-1K shape ran 12 minutes without a line)."""

    def __init__(self, what: str, total: int | None, unit: str = "", every_s: float | None = None):
        self.what, self.total, self.unit = what, total, unit
        self.every_s = progress_every() if every_s is None else every_s
        self.t0 = self.last = time.monotonic()

    def update(self, done: int, extra: str = "") -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        where = f"{done}/{self.total}{' ' + self.unit if self.unit else ''}" if self.total else f"{done} {self.unit}"
        pct = f" ({100.0 * done / self.total:.0f}%)" if self.total else ""
        eta = f", ETA {_clock((self.total - done) / max(rate, 1e-9))}" if self.total else ""
        log.info("%s: %s%s, %.2f/s%s%s", self.what, where, pct, rate, eta, f"; {extra}" if extra else "")


def _logged(items, description: str):
    seq = items if hasattr(items, "__len__") else list(items)
    ticker = Ticker(description, len(seq))
    for i, item in enumerate(seq):
        yield item
        ticker.update(i + 1)


def track(items, description: str):
    """rich's transient progress bar on a terminal; elsewhere `Ticker` lines (a transient bar in a log file
    leaves only blank lines)."""
    if not is_terminal():
        return _logged(items, description)
    from rich.progress import track as rich_track

    return rich_track(items, description=description, transient=True)


def progress_callbacks(enabled: bool, name: str, every_s: float | None = None) -> list[L.Callback]:
    """The progress display for a Trainer: Lightning's own bar on a terminal, `LogProgress` lines elsewhere
    (`HALD_PROGRESS_EVERY` seconds, default 30), nothing when progress is off."""
    if not enabled or is_terminal():
        return []
    return [LogProgress(float(every_s or progress_every()), name)]
