"""Local semantic drift (LVSD): how much the teacher's soft label of a distilled image moves from crop to crop,
and what that costs a store that keeps only SLI labels per image.

For image i, p_k = softmax(teacher(crop_k) / T) over random crops (the relabel crop sampler, at the store's
temperature), p̄ their mean and Σ their covariance. HALD's decomposition of a student fitted to the average of
s stored labels: E‖p̂_s − e_y‖² = ‖p̄ − e_y‖² + Tr(Σ)/s; the second term is the drift, Tr(Σ)/SLI for the store.

Measured here, from `crops` views per image:
- Tr(Σ) per image (unbiased covariance), its mean per class and overall, and the drift term Tr(Σ)/SLI;
- for s = 1, 2, 4, 8, 16 the mean squared deviation of an s-crop average from the all-crop mean, over disjoint
  groups of s crops, and its log-log slope against s (theory: −1). The all-crop mean contains the group
  itself, so E = Tr(Σ)(1/s − 1/M) exactly for M crops; `msd_corrected` divides that factor out and the slope
  is fitted on it (the raw values are kept too).

    python -m hald.evaluate.lvsd RUN_DIR [--crops 64]      # writes RUN_DIR/lvsd.json (report.py plots it)
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from hald.evaluate.consistency import per_class_mean
from hald.evaluate.crops import crop_probs_many

SIZES = (1, 2, 4, 8, 16)


@dataclass
class LVSD:
    crops: int                    # views per image (M)
    temperature: float
    sli: int                      # the store's soft labels per image
    trace: list[float]            # Tr(Σ) per image
    trace_per_class: list[float]
    trace_mean: float
    drift_at_sli: float           # mean over images of Tr(Σ) / SLI
    sizes: list[int]              # s
    msd: list[float]              # mean ‖mean of s crops − mean of all M crops‖²
    msd_corrected: list[float]    # msd / (1 − s/M): estimates Tr(Σ)/s
    predicted: list[float]        # trace_mean / s (the theory line)
    slope: float                  # fitted d log(msd_corrected) / d log(s); theory −1
    intercept: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def headline(self) -> dict[str, float]:
        return {"slope": round(self.slope, 4), "trace_mean": self.trace_mean, "drift_at_sli": self.drift_at_sli,
                "sli": self.sli, "crops": self.crops}


def lvsd_from_probs(probs: torch.Tensor, targets: torch.Tensor, num_classes: int, sli: int,
                    sizes: Sequence[int] = SIZES, temperature: float = float("nan")) -> LVSD:
    """probs: [N, M, C] predictions on M independent crops of each of N images."""
    p = probs.double()
    n, m, _ = p.shape
    sizes = [s for s in sizes if s < m]  # s = M would measure nothing (the group is the whole mean)
    if m < 2 or not sizes:
        raise ValueError(f"LVSD needs more crops than the largest s; got {m} crops")
    trace = p.var(dim=1, unbiased=True).sum(dim=1)  # Tr(Σ) = sum of per-class variances
    mean_all = p.mean(dim=1, keepdim=True)
    msd = []
    for s in sizes:
        g = m // s
        groups = p[:, :g * s].reshape(n, g, s, -1).mean(dim=2)
        msd.append(float(((groups - mean_all) ** 2).sum(-1).mean()))
    corrected = [v / (1 - s / m) for v, s in zip(msd, sizes)]
    tm = float(trace.mean())
    if min(corrected) > 0:
        slope, intercept = np.polyfit(np.log(sizes), np.log(corrected), 1)
    else:  # a teacher that ignores the crop: no drift, no slope
        slope, intercept = float("nan"), float("nan")
    return LVSD(crops=m, temperature=temperature, sli=sli, trace=[float(v) for v in trace],
                trace_per_class=[float(v) for v in per_class_mean(trace, targets, num_classes)], trace_mean=tm,
                drift_at_sli=tm / sli, sizes=list(sizes), msd=msd, msd_corrected=corrected,
                predicted=[tm / s for s in sizes], slope=float(slope), intercept=float(intercept))


def lvsd(teacher: nn.Module, images: torch.Tensor, targets: torch.Tensor, store: Mapping[str, Any], crops: int = 64,
         seed: int = 0, sizes: Sequence[int] = SIZES, batch_size: int = 256) -> LVSD:
    """LVSD of a teacher on distilled images, with the crops, flips, temperature and SLI of a label store
    (`store` = its manifest). The teacher is used in eval mode: a per-image crop distribution, not BSSL's
    batch-dependent one."""
    crop = store["crop"]
    teacher.eval()
    # Seeds far from relabel's (labels.seed + p) so these crops are fresh, not the stored ones.
    probs = crop_probs_many(teacher, images, crops, seed=10_000_019 + seed * crops, out_size=int(crop["size"]),
                            mean=store["mean"], std=store["std"], temperature=float(store["temperature"]),
                            scale=crop["scale"], ratio=crop["ratio"], flip_p=float(store["flip_p"]),
                            batch_size=batch_size)
    return lvsd_from_probs(probs, targets, int(store["num_classes"]), int(store["passes"]), sizes,
                           float(store["temperature"]))


def store_teacher(store_path: Path, teacher_cfg: Mapping[str, Any], dataset: Mapping[str, Any]) -> nn.Module:
    """The teacher(s) that made a label store, from its manifest: squeezed teachers live in the same cache
    (`<cache>/squeeze/<key>`), given ones in teacher.checkpoints; weighted as the store records."""
    from hald.models.teachers import Teacher, build_committee

    manifest = json.loads((Path(store_path) / "manifest.json").read_text())
    cache = Path(store_path).resolve().parent.parent
    members = []
    for i, t in enumerate(manifest["teachers"]):
        weights = {"squeeze": str(cache / "squeeze" / t["key"] / "teacher.safetensors"),
                   "checkpoint": (teacher_cfg.get("checkpoints") or [None] * (i + 1))[i]}.get(t["source"])
        members.append(Teacher(t["name"], t["key"], weights, source=t["source"]))
    return build_committee(members, dataset, torch.tensor(manifest["teacher_weights"]), "eval",
                           teacher_cfg.get("pretrained"))


def main(argv: list[str] | None = None) -> None:
    from omegaconf import OmegaConf

    from hald.data.image_array import open_images

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="a run directory (results.json + .hydra/config.yaml)")
    ap.add_argument("--crops", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/lvsd.json")
    args = ap.parse_args(argv)
    saved = OmegaConf.load(args.run_dir / ".hydra" / "config.yaml")
    ds, tcfg = (OmegaConf.to_container(saved[k], resolve=True) for k in ("dataset", "teacher"))
    results = json.loads((args.run_dir / "results.json").read_text())
    store = json.loads((Path(results["store"]) / "manifest.json").read_text())
    images = open_images(Path(results["images"]), store["classes"], int(ds["channels"]))
    res = lvsd(store_teacher(Path(results["store"]), tcfg, ds), images.images, images.targets, store, args.crops,
               args.seed)
    out = args.out or args.run_dir / "lvsd.json"
    out.write_text(json.dumps(res.to_dict()))
    print(f"LVSD: mean Tr(Sigma) {res.trace_mean:.3g}, drift Tr/SLI {res.drift_at_sli:.3g} at SLI {res.sli}, "
          f"slope {res.slope:.3f} (theory -1) -> {out}")


if __name__ == "__main__":
    main()
