"""Fair evaluation of a distilled set with soft labels, as DD-Ranking defines it (peers.md §1c).

Accuracy alone mostly measures the knowledge-distillation recipe: random real images trained with the same
soft labels can match a distillation method. So, per training seed, four accuracies (fractions of 1):

    real_hard      the real train set, hard labels          syn_hard       the distilled images, hard labels
    syn_recipe     the distilled images, this run's recipe  random_recipe  a random real subset of the same IPC,
                                                                           the same recipe and label settings
    HLR = real_hard - syn_hard      IOR = syn_recipe - random_recipe
    LRS = (e^a - e^-1) / (e - e^-1) with a = w IOR - (1 - w) HLR

This module is the pure arithmetic; the trainings behind the four accuracies are derived runs of the
pipeline (hald/pipeline/fair.py).
"""
from __future__ import annotations

import math
import statistics

ROLES = ("real_hard", "syn_hard", "syn_recipe", "random_recipe")


def normalised(x: float) -> float:
    """DD-Ranking's map of a score x in [-1, 1] onto [0, 1]: (e^x - e^-1) / (e - e^-1) (LRS and ARS). With
    accuracies as fractions, as here; DD-Ranking's package applies it to percent points (its accuracies are
    percents), so its printed LRS / ARS are not in [0, 1] and not comparable with these (README)."""
    return (math.exp(x) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def lrs(hlr: float, ior: float, weight: float = 0.5) -> float:
    """DD-Ranking's label-robust score: a = w IOR - (1 - w) HLR mapped from [-1, 1] onto [0, 1] by exp."""
    return normalised(weight * ior - (1.0 - weight) * hlr)


def ars(syn_aug: float, random_aug: float, syn_noaug: float, random_noaug: float, gamma: float = 0.5) -> float:
    """DD-Ranking's augmentation-robust score (ddranking 0.2.0 metrics/aug_robust.py:577-580), fractions:
    b = gamma (syn_aug - random_aug) + (1 - gamma) (syn_noaug - random_noaug), ARS = normalised(b)."""
    return normalised(gamma * (syn_aug - random_aug) + (1.0 - gamma) * (syn_noaug - random_noaug))


def scores(acc: dict[str, float], weight: float = 0.5) -> dict[str, float]:
    """HLR, IOR and LRS from the four accuracies (fractions)."""
    hlr = acc["real_hard"] - acc["syn_hard"]
    ior = acc["syn_recipe"] - acc["random_recipe"]
    return {"hlr": hlr, "ior": ior, "lrs": lrs(hlr, ior, weight)}


def mean_std(rows: list[dict[str, float]], keys: tuple[str, ...], ddof: int = 1
             ) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and std over rows; ddof 1 = the sample std (hald), 0 = the population std (DD-Ranking's np.std)."""
    mean = {k: statistics.mean(r[k] for r in rows) for k in keys}
    spread = statistics.pstdev if ddof == 0 else statistics.stdev
    std = {k: spread([r[k] for r in rows]) if len(rows) > ddof else 0.0 for k in keys}
    return mean, std
