"""LPQLD's soft-label training (he-y/soft-label-pruning-quantization-for-dataset-distillation @ 107c7a5, TPAMI'26)
as a phase kind: `student=lpqld` (conf/student/lpqld.yaml) replaces the soft phase with `LPQLDReplay`.

What LPQLD stores is hald's `codec=topk labels.codec.rest=renorm` at the same bytes per row: its "MR-k" keeps the
teacher's top-k fp16 logits and int16 class ids (relabel_and_validate/generate_soft_label_pruning_batch.py:395-414),
hald keeps the top-k fp16 probabilities softmax(z / T0) and int16 ids (uint8 at <= 256 classes). Renormalised
over the kept k, the two give the same target: softmax(z_topk / T) on the kept classes, 0 elsewhere
(train_FKD_LPQLD.py:753-764). Its "pruning" (keep ~30 of 300 augmentation epochs) is SLI = 30 passes.
Abbreviation below: T = relabel_and_validate/train_FKD_LPQLD.py, U = relabel_and_validate/utils_fkd.py.

What this phase adds to `SoftReplay`:

- **Re-tempering (DKR).** The target of epoch e is the stored top-k at the teacher temperature
  T_t(e) = max(t_min, t0 * decay ** (e // step)) (T:515-518) with e LPQLD's 1-based epoch (T:597): 20 for
  epochs 1-29, 14 for 30-59, ..., 2 from 210. From renorm probabilities this is exact: log p * T0 equals the
  kept logits up to a per-row constant, so p' = softmax(log p * T0 / T_t) over the kept entries (zeros stay 0).
  Only rest=renorm is exact (rest=uniform's spread mass is not a logit): `retemper=true` refuses any other
  codec; `retemper=auto` (conf/student/lpqld.yaml) re-tempers topk renorm labels and trains any other codec at
  its stored T with a warning (then LPQLD's trainer without DKR, e.g. LPLD's full fp16 labels).
- **Student temperature (CA).** The loss is KL(p || softmax(s / T_s)) batchmean (T:782-783), without T^2 on
  ImageNet-1K (`t2=false`; with t2 it is times T_t^2, LPQLD's 'tiny' branch: T:785-788). T_s starts at
  `loss.temperature` (1.0: `--temp_stu_dynamic 1.0`) and, after every epoch, becomes the argmin over
  t in linspace(0.01, 1, 100) of KL(p || softmax(s / t)) on the epoch's last training batch (T:814-825);
  `search_student_temperature=false` keeps it fixed; `loss.temperature=null` uses T_t (T:775-780).
- **Stored-batch draw.** Each epoch draws `floor(n / B)` stored batches (one pass's worth of full batches,
  U:453) uniformly from all stored batches of the store, without replacement within the epoch and
  independently across epochs (T:558, 581-586: `random.sample(pool, batch_num_per_epoch)`), seeded here by
  (seed, epoch) where the official Python `random` is unseeded. `sampling=schedule` uses hald's
  `schedule.pool` instead.
- **Drop last.** LPQLD's relabel drops each epoch's partial batch (generate_soft_label_pruning_batch.py:334);
  a hald store keeps it, so `drop_last=true` leaves partial stored batches out of the draw (they are still
  stored: n mod B rows per pass, 16 at IPC 10 with B = 128).

Epochs: LPQLD counts training epochs from 1; this phase uses the run's epoch + 1 (`soft_only` is LPQLD's
schedule; in a mixed schedule the temperature follows the run's epoch, not the count of soft epochs).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hald.labels.codecs import Codec
from hald.seeding import seed_of
from hald.train.phases import SoftReplay, SoftReplayDataset, _wrong_batch
from hald.train.schedule import soft_pool

log = logging.getLogger(__name__)

DRAW_STREAM = 3  # seed_of(seed, 3, epoch): the draw's own stream (soft_pool uses (seed, cycle), (seed, 1, ...))
SAMPLING = ("iid", "schedule")


# -- the temperature schedule and re-tempering -----------------------------------------------------------------
def lpqld_temperature(epoch: int, t0: float = 20.0, t_min: float = 2.0, decay: float = 0.7, step: int = 30) -> float:
    """LPQLD's `step` DKR schedule at its (1-based) epoch: t0 * decay ** (epoch // step), floored at t_min
    (T:515-518: `temperature if temperature > 2 else 2`)."""
    t = float(t0) * float(decay) ** (int(epoch) // int(step))
    return t if t > t_min else float(t_min)


def retemper(p: torch.Tensor, ratio: float) -> torch.Tensor:
    """Renormalised top-k probabilities at T0 -> the same kept classes at T = T0 / ratio: p' ∝ p ** ratio on the
    entries > 0, exactly softmax(z_topk / T) when p = softmax(z_topk / T0); zeros stay zero."""
    if ratio == 1.0:
        return p
    kept = p > 0
    logits = torch.where(kept, p.clamp_min(torch.finfo(p.dtype).tiny).log() * ratio, float("-inf"))
    return torch.softmax(logits, dim=1)


def retemperable(codec: Codec | Mapping[str, Any] | None) -> bool:
    """Whether labels of this codec can be re-tempered exactly: topk with rest=renorm."""
    if codec is None:
        return False
    spec = codec.spec() if isinstance(codec, Codec) else dict(codec)
    return spec.get("name") == "topk" and spec.get("rest") == "renorm"


def check_retemperable(codec: Codec | Mapping[str, Any] | None, where: str) -> None:
    """Re-tempering is exact only for topk with rest=renorm: refuse anything else (ValueError with the fix)."""
    if codec is None:
        return
    spec = codec.spec() if isinstance(codec, Codec) else dict(codec)
    if not retemperable(spec):
        shown = " ".join(f"{k}={v}" for k, v in spec.items())
        raise ValueError(f"LPQLD re-tempering needs stored labels that are renormalised top-k probabilities, "
                         f"{where} has codec {shown}; fix: codec=topk labels.codec.rest=renorm (LPQLD's MR-k), "
                         f"or student.phases.soft.retemper=false (train at the stored T)")


def draw_records(pool: Sequence[int], n: int, seed: int, epoch: int) -> list[int]:
    """`n` stored-batch ids drawn uniformly from `pool` without replacement, in random order (as
    random.sample), a pure function of (seed, epoch): each epoch independent of the others."""
    if n > len(pool):
        raise ValueError(f"cannot draw {n} stored batches from a pool of {len(pool)}")
    g = torch.Generator().manual_seed(seed_of(seed, DRAW_STREAM, epoch))
    return [int(pool[i]) for i in torch.randperm(len(pool), generator=g)[:n].tolist()]


# -- the loss --------------------------------------------------------------------------------------------------
def kl_at(logits: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """KLDivLoss(batchmean)(log_softmax(s / T_s), p): zero targets contribute 0 (T:782-783)."""
    return F.kl_div(F.log_softmax(logits / temperature, dim=1), target, reduction="batchmean")


class StudentKL:
    """LPQLD's soft loss (student.phases.soft.loss): KL(p || softmax(s / T_s)), batchmean, times T_t^2 when t2.

    `temperature` is the student's T_s (the start of the search when the phase searches it; null = the
    teacher's T_t of the epoch, T:779-780). `teacher_temperature` is set by the phase every epoch."""

    def __init__(self, temperature: float | None = 1.0, t2: bool = False):
        if temperature is not None and float(temperature) <= 0:
            raise ValueError(f"student.phases.soft.loss.temperature={temperature}; fix: a temperature > 0 "
                             f"(LPQLD's start: 1.0) or null (the teacher's T)")
        self.temperature = None if temperature is None else float(temperature)
        self.t2 = bool(t2)
        self.teacher_temperature = 1.0

    @property
    def student_temperature(self) -> float:
        return self.teacher_temperature if self.temperature is None else self.temperature

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = kl_at(logits, target, self.student_temperature)
        return loss * self.teacher_temperature ** 2 if self.t2 else loss


def search_temperature(logits: torch.Tensor, target: torch.Tensor, grid: Sequence[float]) -> tuple[float, float]:
    """(argmin t, its KL) of KL(target || softmax(logits / t)) over `grid` (the first minimum, as np.argmin).
    Under DDP every rank's KL values are averaged first, so all ranks pick the same t."""
    with torch.no_grad():
        losses = torch.stack([kl_at(logits.float(), target.float(), float(t)) for t in grid])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(losses)
            losses /= torch.distributed.get_world_size()
        i = int(torch.argmin(losses))
    return float(grid[i]), float(losses[i])


# -- the phase -------------------------------------------------------------------------------------------------
class RetemperedDataset(SoftReplayDataset):
    """SoftReplayDataset whose targets are re-tempered by `ratio` = T0 / T_t (1 = as stored)."""

    def __init__(self, *args, ratio: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.ratio = float(ratio)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        item["target"] = retemper(item["target"], self.ratio)
        return item


class LPQLDReplay(SoftReplay):
    """Soft epochs as LPQLD trains them: stored top-k labels re-tempered per epoch, a student temperature,
    stored batches drawn independently every epoch (module docstring)."""

    def __init__(self, loss, batch_size: int, label_temperature: float, retemper: bool | str = "auto",
                 t_min: float = 2.0,
                 decay: float = 0.7, step: int = 30, sampling: str = "iid", drop_last: bool = True,
                 search_student_temperature: bool = True, search_grid: Sequence[float] = (0.01, 1.0, 100),
                 codec: Mapping[str, Any] | None = None):
        super().__init__(loss, batch_size)
        if float(label_temperature) <= 0 or float(t_min) <= 0 or not 0 < float(decay) or int(step) < 1:
            raise ValueError(f"LPQLD schedule label_temperature={label_temperature} t_min={t_min} decay={decay} "
                             f"step={step}; fix: temperatures > 0, decay > 0, step >= 1 (LPQLD: 20, 2, 0.7, 30)")
        if sampling not in SAMPLING:
            raise ValueError(f"student.phases.soft.sampling={sampling!r}; fix: one of {list(SAMPLING)}")
        self.t0, self.t_min, self.decay, self.step = float(label_temperature), float(t_min), float(decay), int(step)
        if retemper not in (True, False, "auto"):
            raise ValueError(f"student.phases.soft.retemper={retemper!r}; fix: true, false or auto (re-temper when "
                             f"the labels are topk rest=renorm)")
        self.auto = retemper == "auto"
        self.retemper = retemper is True or (self.auto and retemperable(codec))
        self.sampling, self.drop_last = sampling, bool(drop_last)
        self.search = bool(search_student_temperature)
        lo, hi, n = search_grid
        self.grid = [float(t) for t in np.linspace(float(lo), float(hi), int(n))]  # T:816
        if self.search and getattr(loss, "temperature", None) is None:
            raise ValueError("LPQLD's student-temperature search needs a loss with a numeric `temperature` (its "
                             "start); fix: student.phases.soft.loss.temperature=1.0, or "
                             "student.phases.soft.search_student_temperature=false")
        if retemper is True:
            check_retemperable(codec, "labels.codec")  # early: pre-flight builds the phases from the config
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # the last training batch (logits, target)
        self._last_epoch: int | None = None
        self.history: list[dict[str, float]] = []  # per epoch: teacher and student temperature

    # -- binding: the store must be one this phase can replay exactly ----------------------------------------
    def bind(self, name: str, data) -> None:
        super().bind(name, data)
        store = data.store
        if self.auto:
            self.retemper = retemperable(store.codec)
            if not self.retemper:
                log.warning("LPQLD: the labels are codec %s, not topk rest=renorm: trained at their stored T=%s "
                            "(no re-tempering); LPQLD's DKR needs codec=topk labels.codec.rest=renorm",
                            store.codec.describe(), store.manifest["temperature"])
        if self.retemper:
            check_retemperable(store.codec, f"the label store {store.path}")
            stored_t = float(store.manifest["temperature"])
            if stored_t != self.t0:
                raise ValueError(f"the label store holds labels at T={stored_t}, student.phases.soft."
                                 f"label_temperature={self.t0}; fix: label_temperature=${{labels.temperature}} "
                                 f"(the stored T; re-tempering starts from it)")
        n, b, bpp = int(store.manifest["num_images"]), store.batch_size, store.batches_per_pass
        partial = self.drop_last and n % b != 0  # the last batch of every pass has n mod b images
        self.full = [r for r in range(store.num_records) if not (partial and r % bpp == bpp - 1)]
        self.per_epoch = n // b if self.drop_last else bpp  # U:453 (drop last) / every stored batch of a pass
        if self.per_epoch == 0:
            raise ValueError(f"drop_last with {n} images and stored batches of {b}: no full batch; fix: "
                             f"student.phases.soft.drop_last=false or labels.batch_size<={n}")

    # -- what epoch e replays -----------------------------------------------------------------------------
    def teacher_temperature(self, epoch: int) -> float:
        """T_t of the run's 0-based `epoch` (LPQLD's epoch + 1); the stored T when re-tempering is off."""
        if not self.retemper:
            return self.t0
        return lpqld_temperature(epoch + 1, self.t0, self.t_min, self.decay, self.step)

    def records(self, epoch: int) -> list[int]:
        d = self.data
        if self.sampling == "iid":
            return draw_records(self.full, self.per_epoch, d.seed, epoch)
        ids = soft_pool(d.schedule, epoch, d.store.passes, d.store.batches_per_pass, d.seed, phase=self.name)
        keep = set(self.full)
        return [r for r in ids if r in keep]

    def dataset(self, epoch: int, render_here: bool = True) -> RetemperedDataset:
        d = self.data
        ids = self.records(epoch)
        k = self.batch_size // d.store.batch_size
        groups = [ids[i:i + k] for i in range(0, len(ids), k)]
        return RetemperedDataset(d.store, d.images, groups, d.input_size, d.mean, d.std, render_here=render_here,
                                 ratio=self.t0 / self.teacher_temperature(epoch))

    # -- the loss -------------------------------------------------------------------------------------------
    def _start_epoch(self, epoch: int) -> None:
        """Before epoch's first batch: T_s from the previous epoch's last batch (T:814-825), T_t of this epoch."""
        if self.search and self._last is not None and self._last_epoch != epoch:
            self.loss.temperature, _ = search_temperature(*self._last, self.grid)
        elif self.search and self._last is None and self.data.schedule.soft_epochs_before(epoch, self.name) > 0:
            log.warning("LPQLD: student temperature restarts at %s in epoch %d (resumed: the searched value is not "
                        "in the checkpoint)", self.loss.temperature, epoch)
        self.loss.teacher_temperature = self.teacher_temperature(epoch)
        self.history.append({"epoch": epoch, "teacher_temperature": self.loss.teacher_temperature,
                             "student_temperature": getattr(self.loss, "student_temperature",
                                                            getattr(self.loss, "temperature", None))})
        self._last_epoch = epoch

    def training_loss(self, module, batch):
        if not isinstance(batch, dict) or "target" not in batch:
            raise _wrong_batch(self, "a replayed stored batch", module)
        epoch = int(module.current_epoch)
        if epoch != self._last_epoch:
            self._start_epoch(epoch)
        logits = module.micro_forward(batch["x"])
        loss = self.loss(logits, batch["target"])
        if self.search:
            self._last = (logits.detach(), batch["target"].detach())
        bs = int(batch["x"].shape[0])
        if hasattr(module, "log"):  # the epoch's temperatures next to its loss (constant within the epoch)
            for key, t in (("teacher", self.loss.teacher_temperature),
                           ("student", getattr(self.loss, "student_temperature", None))):
                if t is not None:
                    module.log(f"train/{self.name}_{key}_T", float(t), on_step=False, on_epoch=True, batch_size=bs,
                               sync_dist=True)
        return loss, bs
