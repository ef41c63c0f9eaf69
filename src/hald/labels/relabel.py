"""Relabel: the teacher(s) label recorded crops of the distilled images; the result is a label store.

Per pass p: a seeded shuffle of all images into batches of `batch_size`, per-image RandomResizedCrop and flip,
per-batch CutMix (see data/replay.py), then p_soft = softmax(z / T) of the committee on exactly those pixels.
Runs through Lightning's predict loop, so the device comes from Lightning (CPU here, GPU for users).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from hald.data.distilled import DistilledImages
from hald.data.replay import Geometry, render, sample_pass
from hald.labels.store import LABEL_DTYPES, shard_name, write_shard
from hald.models.teachers import Committee

log = logging.getLogger(__name__)


class LabelBudgetError(ValueError):
    """slc / ipc / batch size that do not make a valid store (one-line cause and fix)."""


def plan_passes(slc: int, ipc: int) -> int:
    """SLI = slc / ipc passes over the images. No silent rounding: an inexact budget is an error."""
    if slc < ipc:
        raise LabelBudgetError(f"slc={slc} is below ipc={ipc}: every image needs at least one soft label; fix: "
                               f"slc>={ipc} (a multiple of ipc)")
    if slc % ipc:
        lo, hi = (slc // ipc) * ipc, (slc // ipc + 1) * ipc
        raise LabelBudgetError(f"slc={slc} is not a multiple of ipc={ipc} (SLI = slc/ipc passes over the images); "
                               f"fix: slc={lo} or slc={hi}")
    return slc // ipc


class PassDataset(Dataset):
    """Item k = the rendered pixels of stored batch k of one pass (rendered in loader workers)."""

    def __init__(self, images: torch.Tensor, batches: list[Geometry], out_size: int, mean, std):
        self.images, self.batches, self.out_size = images, batches, out_size
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> torch.Tensor:
        return render(self.images, self.batches[k], self.out_size, self.mean, self.std)


class Labeller(L.LightningModule):
    def __init__(self, committee: Committee, temperature: float):
        super().__init__()
        self.committee, self.temperature = committee, temperature

    def predict_step(self, x: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return torch.softmax(self.committee(x) / self.temperature, dim=1).cpu()


def relabel(distilled: DistilledImages, committee: Committee, cfg: Mapping[str, Any], dataset: Mapping[str, Any],
            out_dir: Path, trainer_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write every pass's shard into out_dir; return the store's manifest fields (the caller writes it)."""
    ipc = distilled.ipc
    passes = plan_passes(int(cfg["slc"]), ipc)
    bsz = int(cfg["batch_size"])
    if cfg["dtype"] not in LABEL_DTYPES:
        raise LabelBudgetError(f"labels.dtype={cfg['dtype']} unknown; fix: labels.dtype=float16|float32")
    labeller = Labeller(committee, float(cfg["temperature"]))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_model_summary=False,
                        **dict(trainer_kwargs or {}))
    shards = []
    for p in range(passes):
        batches = sample_pass(len(distilled), distilled.hw, bsz, int(dataset["input_size"]),
                              seed=int(cfg["seed"]) + p, scale=tuple(cfg["crop_scale"]),
                              ratio=tuple(cfg["crop_ratio"]), flip_p=float(cfg["flip_p"]),
                              cutmix_alpha=cfg["cutmix_alpha"])
        loader = DataLoader(PassDataset(distilled.images, batches, int(dataset["input_size"]), dataset["mean"],
                                        dataset["std"]), batch_size=None, num_workers=int(cfg["num_workers"]))
        labels = trainer.predict(labeller, loader)
        shards.append(write_shard(Path(out_dir) / shard_name(p), batches, labels, cfg["dtype"], p))
        log.info("relabel pass %d/%d: %d batches, %d bytes", p + 1, passes, len(batches), shards[-1]["bytes"])
    n, c = len(distilled), len(distilled.classes)
    return {
        "passes": passes, "sli": passes, "ipc": ipc, "slc": int(cfg["slc"]), "batch_size": bsz,
        "batches_per_pass": -(-n // bsz), "num_images": n, "num_classes": c, "classes": distilled.classes,
        "images_sha256": distilled.sha256, "image_files": distilled.files,
        "temperature": float(cfg["temperature"]), "teacher_mode": committee.mode,
        "teacher_weights": [round(float(w), 6) for w in committee.weights],
        "crop": {"size": int(dataset["input_size"]), "scale": list(cfg["crop_scale"]),
                 "ratio": list(cfg["crop_ratio"]), "interpolation": "bilinear (roi_align, aligned)"},
        "flip_p": float(cfg["flip_p"]), "mix": {"type": "cutmix" if cfg["cutmix_alpha"] else "none",
                                                "alpha": cfg["cutmix_alpha"]},
        "seed": int(cfg["seed"]), "seed_rule": "pass p uses seed + p", "dtype": cfg["dtype"],
        "mean": [float(v) for v in dataset["mean"]], "std": [float(v) for v in dataset["std"]], "shards": shards,
        "shard_bytes": sum(s["bytes"] for s in shards),
        "label_payload_bytes": passes * n * c * torch.empty((), dtype=LABEL_DTYPES[cfg["dtype"]]).element_size(),
    }
