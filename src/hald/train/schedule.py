"""The phase schedule is a value: (phase, epochs) segments and a pure phase_at(epoch).

Both the phase callback and the datamodule read it, so the data side never depends on a callback having run
first (Lightning rebuilds the train loader before on_train_epoch_start), every DDP rank agrees, and resume
needs no extra state.

Presets (H hard epochs, S soft epochs, n = SLI stored passes), as in the HALD code's --setting:
  S1 hard H -> soft S           S2 blocks of n, hard first     S3 blocks of 2n, hard first
  S4 blocks of n, soft first    S5 blocks of 2n, soft first
  S6 soft floor(S/2) -> hard H -> soft S - floor(S/2)   (HALD, the default)
  S7 hard floor(H/2) -> soft S -> hard H - floor(H/2)   S8 soft S -> hard H
  soft_only, hard_only

Which stored batches a soft epoch replays (`schedule.pool`):
  run      each stored batch once per SLI consecutive soft epochs of the run, in a seeded order (the default)
  segment  the same, restarted at the start of every soft segment (HALD validate/train_fkd.py:458-470)
  pass     soft epoch s replays stored pass s mod SLI whole, in its stored order: each image once per epoch
           (CV-DD validate/train_fkd.py:353, set_epoch: epoch e trains on the labels of epoch e)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from hald.seeding import seed_of

SOFT, HARD = "soft", "hard"  # the presets' two phases (student.phases.soft / .hard)
POOLS = ("run", "segment", "pass")


@dataclass(frozen=True)
class Schedule:
    """Segments (phase name, epochs). A phase name is a key of `student.phases` (the presets use soft and
    hard); the phases themselves check that every name the schedule uses exists (train/phases.bind_phases)."""
    segments: tuple[tuple[str, int], ...]
    pool: str = "run"

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"schedule.pool={self.pool!r}; fix: one of {list(POOLS)}")
        for phase, n in self.segments:
            if not isinstance(phase, str) or not phase or isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"bad schedule segment ({phase!r}, {n}); fix: [phase name, epochs >= 0]")
        if self.total_epochs == 0:
            raise ValueError("schedule has no epochs; fix: train.epochs > 0")

    @property
    def total_epochs(self) -> int:
        return sum(n for _, n in self.segments)

    def phase_at(self, epoch: int) -> str:
        """Phase of 0-based epoch; epochs past the end keep the last phase."""
        for phase, n in self.segments:
            if epoch < n:
                return phase
            epoch -= n
        return [p for p, n in self.segments if n][-1]

    def soft_epochs_before(self, epoch: int, phase: str = SOFT) -> int:
        """How many epochs of `phase` precede `epoch` (indexes the soft-batch pool)."""
        return sum(self.phase_at(e) == phase for e in range(epoch))

    def eval_epochs(self, every: int = 0, phase_ends: bool = True, offset: int = 0) -> list[int]:
        """The epochs validated during training: the last epoch, the last epoch of every phase (phase_ends),
        and epochs offset, offset + every, ... (every > 0; the papers': offset 0 = epochs 0, 10, ...;
        DD-Ranking's: offset every - 1 = after 20, 40, ... epochs). The callback and the cost estimator both
        read this."""
        last = self.total_epochs - 1
        ends = {e - 1 for e in self.switches()} if phase_ends else set()
        regular = set(range(offset, self.total_epochs, every)) if every > 0 else set()
        return sorted({last} | ends | regular)

    def phase_ends(self) -> list[int]:
        """The last epoch of every phase, the final epoch included (the crop-consistency probe's epochs)."""
        return sorted({e - 1 for e in self.switches()} | {self.total_epochs - 1})

    def segment_of(self, epoch: int) -> tuple[int, int]:
        """(index, first epoch) of the non-empty segment holding `epoch`."""
        start = 0
        for i, (_, n) in enumerate(self.segments):
            if n and epoch < start + n:
                return i, start
            start += n
        return len(self.segments) - 1, start - self.segments[-1][1]

    def switches(self) -> list[int]:
        """Epochs whose phase differs from the previous epoch's."""
        return [e for e in range(1, self.total_epochs) if self.phase_at(e) != self.phase_at(e - 1)]

    def timeline(self) -> str:
        """e.g. 'soft 0-74 | hard 75-224 | soft 225-299'."""
        out, start = [], 0
        for phase, n in self._merged():
            out.append(f"{phase} {start}-{start + n - 1}")
            start += n
        return " | ".join(out)

    def _merged(self) -> list[tuple[str, int]]:
        merged: list[list] = []
        for phase, n in self.segments:
            if n == 0:
                continue
            if merged and merged[-1][0] == phase:
                merged[-1][1] += n
            else:
                merged.append([phase, n])
        return [(p, n) for p, n in merged]


def _blocks(total: int, block: int, first: str) -> list[tuple[str, int]]:
    segs, phase, left = [], first, total
    other = {SOFT: HARD, HARD: SOFT}
    while left > 0:
        segs.append((phase, min(block, left)))
        left -= block
        phase = other[phase]
    return segs


def make_schedule(preset: str, epochs: int, soft_fraction: float = 0.5, block: int = 1, pool: str = "run",
                  segments: list | None = None) -> Schedule:
    """Build a preset. epochs = H + S with S = round(epochs * soft_fraction); block = n for S2-S5.
    `segments` (schedule.segments: [[phase, epochs], ...]) replaces the preset: any phases of student.phases,
    in any order; their epochs must add up to `epochs`."""
    if segments:
        segs = tuple((str(p), int(n)) for p, n in segments)
        if sum(n for _, n in segs) != epochs:
            raise ValueError(f"schedule.segments add up to {sum(n for _, n in segs)} epochs, train.epochs={epochs}; "
                             f"fix: make them equal")
        return Schedule(segs, pool)
    s = int(round(epochs * soft_fraction))
    h = epochs - s
    if block < 1:
        raise ValueError(f"schedule block must be >= 1, got {block}")
    presets = {
        "S1": lambda: [(HARD, h), (SOFT, s)],
        "S2": lambda: _blocks(epochs, block, HARD),
        "S3": lambda: _blocks(epochs, 2 * block, HARD),
        "S4": lambda: _blocks(epochs, block, SOFT),
        "S5": lambda: _blocks(epochs, 2 * block, SOFT),
        "S6": lambda: [(SOFT, s // 2), (HARD, h), (SOFT, s - s // 2)],
        "S7": lambda: [(HARD, h // 2), (SOFT, s), (HARD, h - h // 2)],
        "S8": lambda: [(SOFT, s), (HARD, h)],
        "soft_only": lambda: [(SOFT, epochs)],
        "hard_only": lambda: [(HARD, epochs)],
    }
    presets["hald"] = presets["S6"]
    if preset not in presets:
        raise ValueError(f"unknown schedule preset '{preset}'; fix: schedule.preset=one of {sorted(presets)}")
    return Schedule(tuple(presets[preset]()), pool)


def soft_pool(schedule: Schedule, epoch: int, passes: int, batches_per_pass: int, seed: int,
              phase: str = SOFT) -> list[int]:
    """Stored-batch ids for an epoch of the replay phase `phase`: each stored batch once per `passes`
    consecutive epochs of it, in a seeded random order. One epoch uses batches_per_pass records (= every
    image once)."""
    if schedule.pool == "pass":
        p = schedule.soft_epochs_before(epoch, phase) % passes
        return list(range(p * batches_per_pass, (p + 1) * batches_per_pass))
    if schedule.pool == "segment":
        index, start = schedule.segment_of(epoch)
        cycle, within = divmod(epoch - start, passes)
        g = torch.Generator().manual_seed(seed_of(seed, 1, index, cycle))  # its own stream: (seed, 1, segment, cycle)
    else:
        cycle, within = divmod(schedule.soft_epochs_before(epoch, phase), passes)
        g = torch.Generator().manual_seed(seed_of(seed, cycle))
    perm = torch.randperm(passes * batches_per_pass, generator=g)
    return perm[within * batches_per_pass:(within + 1) * batches_per_pass].tolist()
