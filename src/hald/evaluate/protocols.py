"""Evaluation protocols: which trainings stand behind a number, which of their accuracies counts, over which
seeds, with which spread and learning rate. A protocol is config (`evaluate/protocol=hald | ddranking | papers`,
conf/evaluate/protocol/); this module reads it, picks a training's accuracy by its rule, and writes its *card*:
the fields that must agree before two numbers may share a column (results.json `protocol`, the summary table,
report.py, W&B).

| protocol  | trainings behind the fair metrics                   | accuracy                         | seeds | std    | LR |
|-----------|-----------------------------------------------------|----------------------------------|-------|--------|----|
| hald      | the run's recipe (AdamW, cosine), hard labels on crops | final epoch                     | 3     | ddof 1 | the run's |
| ddranking | DD-Ranking 0.2.0's LRS-soft roles, SGD + step, hard labels without augmentation, + ARS | best of the checks after every 20 epochs, then best LR | 5 | ddof 0 | grid 1e-3..0.1 |
| papers    | the run's recipe                                    | best of epochs 0, 10, ..., last  | 3     | ddof 1 | the run's |

DD-Ranking's procedure as read from its package (ddranking 0.2.0: metrics/soft_label.py, aug_robust.py,
utils/train_and_eval.py; docs/evaluation.md has the line-by-line table and the departures).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

from hald.errors import ConfigError
from hald.ranges import one_of

ROLES_ARS = ("syn_noaug", "random_noaug")
# DD-Ranking's cached full-data accuracies (%, utils/train_and_eval.py REAL_DATA_ACC_CACHE), for the students
# hald builds of the same network (ResNet-18 with BatchNorm; torchvision's at 224 px, the CIFAR-style at 64).
CACHED_REAL = {("imagenet1k", "resnet18"): 56.5, ("imagenet1k", "resnet18_tv"): 56.5,
               ("tiny_imagenet", "resnet18_cifar"): 46.4, ("tiny_imagenet", "resnet18_small"): 46.4,
               ("tiny_imagenet", "resnet18_modified"): 46.4}
CACHED_SOURCE = "DD-Ranking 0.2.0 REAL_DATA_ACC_CACHE (utils/train_and_eval.py:15-18)"


def best_at(eval_log: Sequence[Mapping[str, Any]], epochs: set[int]) -> tuple[Mapping[str, Any] | None, int]:
    """The best evaluation (test top-1) among those at `epochs` (ties: the earliest, as a `>` loop keeps it),
    and how many there were."""
    chosen = [e for e in eval_log if e["epoch"] in epochs]
    return (max(chosen, key=lambda e: (e["top1"], -e["epoch"])) if chosen else None), len(chosen)


@dataclass
class ProtocolConfig:
    """The schema of conf/evaluate/protocol/*.yaml (checked by hald/schema.py with the rest of the config)."""
    name: str = "hald"
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    std_ddof: int = 1
    accuracy: str = "final"
    every: int = 0
    offset: int = 0
    include_last: bool = True
    lr_grid: List[float] = field(default_factory=list)
    search: List[str] = field(default_factory=list)
    optimizer: Dict[str, Any] = field(default_factory=dict)
    hard_augment: bool = True
    real: str = "trained"
    real_lr: Optional[float] = None
    batch_size: Optional[int] = None
    ars: bool = False
    ars_gamma: float = 0.5

    def __post_init__(self) -> None:
        one_of("evaluate.protocol", "accuracy", self.accuracy, ("final", "best_every"))
        one_of("evaluate.protocol", "std_ddof", self.std_ddof, (0, 1))
        one_of("evaluate.protocol", "real", self.real, ("trained", "cached"))
        if not self.seeds:
            raise ConfigError("evaluate.protocol.seeds=[]; fix: at least one seed, e.g. [0, 1, 2]")
        if self.accuracy == "best_every" and self.every < 1:
            raise ConfigError(f"evaluate.protocol.every={self.every} with accuracy=best_every; fix: "
                              f"evaluate.protocol.every=10 (or accuracy=final)")
        roles = ("syn_hard", "syn_recipe", "random_recipe", "real_hard", "syn_noaug", "random_noaug")
        for role in self.search:
            one_of("evaluate.protocol", "search", role, roles)
        unknown = set(self.optimizer) - {"name", "momentum", "weight_decay", "lr_schedule", "step_size", "gamma",
                                         "betas", "eta"}
        if unknown:
            raise ConfigError(f"evaluate.protocol.optimizer has {sorted(unknown)}; fix: keys of `optimizer` only "
                              f"(name, momentum, weight_decay, lr_schedule, step_size, gamma, betas, eta)")


@dataclass(frozen=True)
class Protocol:
    name: str
    seeds: tuple[int, ...]
    std_ddof: int
    accuracy: str                 # final | best_every
    every: int                    # best_every: evaluations every N epochs ...
    offset: int                   # ... starting at this epoch (0: 0, N, 2N; N - 1: after N, 2N, ... epochs)
    include_last: bool            # the last epoch counts too (the papers' loops), not only the checks
    lr_grid: tuple[float, ...]    # learning rates searched (empty: the run's optimizer.lr)
    search: tuple[str, ...]       # the roles whose LR is searched over the grid
    optimizer: Mapping[str, Any]  # optimizer.* values of the protocol's trainings (empty: the run's)
    hard_augment: bool            # hard-label trainings on fresh crops + flips (false: whole images)
    real: str                     # trained | cached (DD-Ranking's table when it has the dataset and student)
    real_lr: float | None         # the full-data training's LR (None: the run's)
    batch_size: int | None        # hard-label trainings' batch (None: the run's train.hard_batch_size)
    ars: bool                     # also the augmentation-robust score (two more roles per seed)
    ars_gamma: float
    units: str = "fractions"

    @classmethod
    def of(cls, cfg: Mapping[str, Any]) -> "Protocol":
        p = dict(cfg)
        return cls(name=str(p["name"]), seeds=tuple(int(s) for s in p["seeds"]), std_ddof=int(p["std_ddof"]),
                   accuracy=str(p["accuracy"]), every=int(p.get("every") or 0), offset=int(p.get("offset") or 0),
                   include_last=bool(p.get("include_last", True)),
                   lr_grid=tuple(float(x) for x in p.get("lr_grid") or ()), search=tuple(p.get("search") or ()),
                   optimizer=dict(p.get("optimizer") or {}), hard_augment=bool(p.get("hard_augment", True)),
                   real=str(p.get("real", "trained")), real_lr=p.get("real_lr"),
                   batch_size=p.get("batch_size"), ars=bool(p.get("ars", False)),
                   ars_gamma=float(p.get("ars_gamma", 0.5)))

    # -- which evaluations count ----------------------------------------------------------------------------------
    def check_epochs(self, total: int) -> list[int]:
        """The epochs (0-based) a training must be evaluated at for this protocol's accuracy (the last always)."""
        regular = range(self.offset, total, self.every) if self.accuracy == "best_every" and self.every > 0 else ()
        return sorted(set(regular) | {total - 1})

    def top1(self, eval_log: Sequence[Mapping[str, Any]], final: float, total: int) -> dict[str, Any]:
        """A training's accuracy (%) under the rule: {"top1", "epoch", "rule"}. `final` = the test top-1 after
        the last epoch. Under best_every, the best of the checks; when no check falls within the epochs
        (a training shorter than `every`), the final accuracy, said so in `rule`."""
        if self.accuracy == "final":
            return {"top1": float(final), "epoch": total - 1, "rule": "final"}
        checks = set(range(self.offset, total, self.every)) if self.every > 0 else set()
        if self.include_last:
            checks.add(total - 1)
        best, _ = best_at(eval_log, checks)
        if best is None:
            return {"top1": float(final), "epoch": total - 1, "rule": f"final (no check every {self.every} within "
                                                                      f"{total} epochs)"}
        return {"top1": float(best["top1"]), "epoch": int(best["epoch"]), "rule": self.rule()}

    def rule(self) -> str:
        if self.accuracy == "final":
            return "final epoch"
        at = f"at epochs {self.offset}, {self.offset + self.every}, ..." if self.offset == 0 else \
            f"after every {self.every} epochs" if self.offset == self.every - 1 else \
            f"at epochs {self.offset}, {self.offset + self.every}, ..."
        return f"best of the evaluations {at}{' and the last' if self.include_last else ''}"

    def lrs_for(self, role: str, run_lr: float) -> list[float]:
        """The learning rates a role trains with (the best is kept): the grid, or the run's one."""
        return list(self.lr_grid) if role in self.search and self.lr_grid else [float(run_lr)]

    # -- the card -----------------------------------------------------------------------------------------------------
    def card(self, cfg: Mapping[str, Any], lr: float, real: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What a number was measured under; report.py compares these before it puts numbers in one column."""
        return {"name": self.name, "accuracy": self.rule(), "seeds": list(self.seeds),
                "std": f"ddof={self.std_ddof} ({'population' if self.std_ddof == 0 else 'sample'})",
                "lr": list(self.lr_grid) if self.lr_grid and self.search else float(lr),
                "lr_searched_for": list(self.search) if self.lr_grid else [],
                "optimizer": dict(self.optimizer) or "the run's",
                "hard_labels": "fresh crops + flips" if self.hard_augment else "whole images, no augmentation",
                "real": dict(real) if real else self.real, "units": self.units,
                **({"ars_gamma": self.ars_gamma} if self.ars else {})}


def comparable(card: Mapping[str, Any] | None) -> tuple:
    """The part of a card that must agree for two numbers to share a column. The real-data accuracy is not in
    it (a run without fair metrics has none; the fair table shows it next to HLR), nor the LR where the run
    trains with its own (a sweep over lr is a sweep, not a mix of protocols)."""
    if not card:
        return ("unrecorded",)
    lr = card.get("lr") if isinstance(card.get("lr"), list) else "the run's"
    return (*(tuple((k, repr(card.get(k))) for k in ("name", "accuracy", "seeds", "std", "optimizer", "hard_labels",
                                                      "units"))), ("lr", repr(lr)))


def cached_real(dataset: str, model: str) -> float | None:
    return CACHED_REAL.get((dataset, model))
