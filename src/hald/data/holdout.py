"""A held-out part of the TRAIN split: measured quantities that steer distillation (CV-DD's committee priors)
are taken on it, never on the test split (the official code selected them on the test set).

`holdout_split` is stratified and seeded: per class, a fixed fraction of the train items (at least one)
is held out. `SourceView` is an ImageSource restricted to some items of another one.
"""
from __future__ import annotations

import numpy as np
import torch

from hald.data.sources import ImageSource


class SourceView(ImageSource):
    """Items `indices` of `base`, same classes and channels; `base_indices` maps back."""

    def __init__(self, base: ImageSource, indices: list[int], split: str):
        self.base, self.base_indices = base, list(indices)
        super().__init__(base.name, split, base.classes, [base.targets[i] for i in self.base_indices],
                         base.channels, base.class_names)

    def _image(self, i: int) -> torch.Tensor:
        return self.base[self.base_indices[i]][0]


def holdout_split(targets: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held out) item indices; per class round(fraction * n) items, at least 1, held out."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction {fraction} must be in (0, 1); fix: e.g. 0.1")
    t = np.asarray(targets)
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for c in np.unique(t):
        idx = np.flatnonzero(t == c)
        k = min(max(1, round(fraction * len(idx))), len(idx) - 1)
        held += rng.choice(idx, k, replace=False).tolist()
    held_set = set(held)
    return [i for i in range(len(t)) if i not in held_set], sorted(held)


def holdout_views(train: ImageSource, fraction: float, seed: int) -> tuple[SourceView, SourceView]:
    """(train minus the held-out part, the held-out part), both views of the train split."""
    if train.split != "train":
        raise ValueError(f"a held-out part is taken from the train split, got split '{train.split}'")
    kept, held = holdout_split(train.targets, fraction, seed)
    return SourceView(train, kept, "train"), SourceView(train, held, "train-holdout")
