"""Relabel: the teacher(s) label recorded crops of the distilled images; the result is a label store.

Per pass p: a seeded shuffle of all images into batches of `batch_size`, per-image RandomResizedCrop and flip,
per-batch CutMix (see data/replay.py), then p_soft = softmax(z / T) of the committee on exactly those pixels,
encoded by the store's codec. Runs through Lightning's predict loop, so the device comes from Lightning.

Speed: `groups_per_forward` stored batches go through the teacher in one forward (`auto`: 8 on GPUs, 1 on
CPU, where grouping measured slower). In eval mode a label does
not depend on its batch, so they are simply concatenated; in BSSL mode each stored batch must see its own
BatchNorm statistics: the groups are concatenated and every BatchNorm layer normalises each group with
its own statistics (ghost batch norm, `models.teachers.grouped_batch_stats`), identical to one forward per
group (tested) while every other layer runs once on the whole stack.

Resumable and shared over ranks: a pass is a unit (units.py) of the work dir `<cache>/relabel/.partial-<key>/`;
under DDP pass p runs on rank p mod world size, each on its own device. A killed relabel computes only the
missing passes; pass p is seeded by `seed + p` alone, so the shards do not depend on ranks or resumes.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from hald import compute, dist
from hald.console import progress_callbacks
from hald.data.distilled import DistilledImages
from hald.data.replay import Geometry, render, render_layout, sample_pass
from hald.artifacts import SAMPLE_MIN, build_manifest, manifest_size
from hald.errors import DivergedError
from hald.labels.budget import Plan
from hald.labels.store import FORMAT_VERSION, shard_name, write_shard
from hald.models.teachers import Committee
from hald.units import UnitStore

log = logging.getLogger(__name__)


class PassDataset(Dataset):
    """Item j = the rendered pixels of a group of consecutive stored batches of one pass."""

    def __init__(self, images: torch.Tensor, batches: list[Geometry], out_size: int, mean, std, group: int):
        self.images, self.batches, self.out_size = images, batches, out_size
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)
        self.groups = [list(range(i, min(i + group, len(batches)))) for i in range(0, len(batches), group)]

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, j: int) -> list[torch.Tensor]:
        return [render(self.images, self.batches[k], self.out_size, self.mean, self.std) for k in self.groups[j]]


def groups_per_forward(value: Any, accelerator: str) -> int:
    """`auto`: 8 stored batches per forward on an accelerator (fills the device, fewer launches), 1 on CPU,
    where a 128-image forward ran slower than eight 16-image ones (cache-bound convolutions; `make bench`).
    The labels do not depend on it (it is not part of the store's key)."""
    if value != "auto":
        if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1:
            raise ValueError(f"labels.groups_per_forward={value}; fix: a positive integer or auto")
        return int(value)
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()
                                      and not torch.backends.mps.is_available())
    return 1 if on_cpu else 8


def check_bssl_group(value: Any, batch_size: int) -> int | None:
    """`labels.bssl_group_size`: null = BatchNorm statistics over each whole stored batch (HALD's BSSL), or a
    divisor of the stored batch size (CV-DD: 8, its relabel forwards each batch of 16 as two halves)."""
    if value is None:
        return None
    if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1 or int(batch_size) % int(value):
        raise ValueError(f"labels.bssl_group_size={value} with labels.batch_size={batch_size}; fix: null (the whole "
                         f"stored batch) or a divisor of the batch size (CV-DD: 8 of 16)")
    return int(value)


def bssl_logits(committee: Committee, chunks: list[torch.Tensor]) -> torch.Tensor:
    """Committee logits of each chunk with BatchNorm statistics of that chunk alone, chunks of one size
    stacked into one forward (ghost batch norm), in the chunks' order."""
    out: list[torch.Tensor | None] = [None] * len(chunks)
    by_size: dict[int, list[int]] = {}
    for i, c in enumerate(chunks):
        by_size.setdefault(len(c), []).append(i)
    for size, ids in by_size.items():
        z = committee(torch.cat([chunks[i] for i in ids]), groups=len(ids))
        for i, zi in zip(ids, z.split(size)):
            out[i] = zi
    return torch.cat(out)


def label_groups(committee: Committee, xs: list[torch.Tensor], temperature: float,
                 bn_group: int | None = None) -> list[torch.Tensor]:
    """Soft labels of each stored batch in xs, computed in as few forwards as the teacher mode allows.

    BSSL: BatchNorm statistics per stored batch, or per consecutive group of `bn_group` images of it
    (CV-DD: two halves of 8 of each batch of 16; a short last batch is cut the same way)."""
    sizes = [len(x) for x in xs]
    if committee.mode == "eval":
        z = committee(torch.cat(xs))
    else:
        z = bssl_logits(committee, [c for x in xs for c in (x.split(bn_group) if bn_group else (x,))])
    # float32 softmax whatever the forward's precision (the committee returns float logits)
    return list(torch.softmax(z.float() / temperature, dim=1).cpu().split(sizes))


class Labeller(L.LightningModule):
    """The committee's labels of each loader item; its precision is the Trainer's (compute.relabel), its layout
    `channels_last` (compute.channels_last: the teachers' weights and every batch)."""

    def __init__(self, committee: Committee, temperature: float, bn_group: int | None = None,
                 channels_last: bool = False):
        super().__init__()
        self.committee, self.temperature, self.bn_group = committee, temperature, bn_group
        self.channels_last = channels_last
        compute.channels_last(committee, channels_last)

    def predict_step(self, xs: list[torch.Tensor], batch_idx: int) -> list[torch.Tensor]:
        xs = [compute.as_input(x, self.channels_last) for x in xs]
        return label_groups(self.committee, xs, self.temperature, self.bn_group)


def store_fields(plan: Plan, cfg: Mapping[str, Any], dataset: Mapping[str, Any], *, num_images: int, ipc: int,
                 classes: list[str], images_sha256: str, teacher_mode: str, teacher_weights: list[float],
                 shards: list[dict]) -> dict[str, Any]:
    """The label store's manifest fields (besides the artifact fields written by artifacts.finish)."""
    n, c, bsz = num_images, len(classes), int(cfg["batch_size"])
    return {
        "format_version": FORMAT_VERSION, "passes": plan.sli, "sli": plan.sli, "ipc": ipc,
        "slc": plan.sli * ipc, "batch_size": bsz, "batches_per_pass": -(-n // bsz), "num_images": n,
        "num_classes": c, "classes": list(classes), "images_sha256": images_sha256,
        "codec": plan.codec.spec(), "label_budget": plan.budget,
        "temperature": float(cfg["temperature"]), "teacher_mode": teacher_mode,
        "bssl_group_size": cfg.get("bssl_group_size") if teacher_mode == "bssl" else None,
        "teacher_weights": [round(float(w), 6) for w in teacher_weights],
        "crop": {"size": int(dataset["input_size"]), "scale": list(cfg["crop_scale"]),
                 "ratio": list(cfg["crop_ratio"]),
                 "interpolation": "bilinear, antialiased, uint8 per image (replay.render)"},
        "flip_p": float(cfg["flip_p"]),
        "mix": {"type": "cutmix" if cfg["cutmix_alpha"] else "none", "alpha": cfg["cutmix_alpha"]},
        "seed": int(cfg["seed"]), "seed_rule": "pass p uses seed + p",
        "mean": [float(v) for v in dataset["mean"]], "std": [float(v) for v in dataset["std"]],
        "shards": shards, "shard_bytes": sum(s["bytes"] for s in shards),
    }


def manifest_reserve(sli: int, codec: Any, cfg: Mapping[str, Any], dataset: Mapping[str, Any], *, num_images: int,
                     ipc: int, classes: list[str], teacher_mode: str, n_teachers: int, config: Any,
                     extra: Mapping[str, Any]) -> int:
    """Bytes the store's manifest will take, for a byte budget that counts it: the manifest relabel would
    write (these fields, this config, `extra` fields such as the teachers), with the largest numbers its
    sizes and hashes can have, plus slack."""
    plan = Plan(sli, codec, 10**12, 0, 10**12)
    shards = [{"file": shard_name(p), "pass": p, "records": 10**6, "images": 10**7, "bytes": 10**12}
              for p in range(sli)]
    fields = store_fields(plan, cfg, dataset, num_images=num_images, ipc=ipc, classes=classes,
                          images_sha256="0" * 64, teacher_mode=teacher_mode, teacher_weights=[1.0] * n_teachers,
                          shards=shards)
    large = num_images * (8 * len(classes) + 64) + (1 << 16) >= SAMPLE_MIN  # a shard that may get a sample_sha256
    files = {s["file"]: {"bytes": 10**12, "sha256": "0" * 64, **({"sample_sha256": "0" * 64} if large else {})}
             for s in shards}
    mock = build_manifest("relabel", "0" * 12, config, {"images": "0" * 12}, files, **{**fields, **extra})
    return manifest_size(mock) + 256  # slack for longer numbers in the real one


def relabel(distilled: DistilledImages, committee: Committee, plan: Plan, cfg: Mapping[str, Any],
            dataset: Mapping[str, Any], out_dir: Path, trainer_kwargs: Mapping[str, Any] | None = None,
            work_dir: Path | None = None, channels_last: bool = False) -> dict[str, Any]:
    """Write every pass's shard into out_dir; return the store's manifest fields (the caller writes it).

    work_dir keeps finished passes between runs (resume); None = a work dir inside out_dir (no resume)."""
    bsz = int(cfg["batch_size"])
    store = UnitStore(Path(work_dir) if work_dir is not None else Path(out_dir) / ".work")
    mine = [p for p in range(plan.sli) if p % dist.world() == dist.rank()]
    todo = [p for p in mine if not store.is_done(shard_name(p))]
    if len(todo) < len(mine):
        log.info("relabel: %d pass(es) finished before (resume), %d to do", len(mine) - len(todo), len(todo))
    labeller = Labeller(committee, float(cfg["temperature"]), check_bssl_group(cfg.get("bssl_group_size"), bsz),
                        channels_last)
    per_forward = groups_per_forward(cfg.get("groups_per_forward", "auto"),
                                     (trainer_kwargs or {}).get("accelerator", "auto"))
    kwargs = dict(trainer_kwargs or {})
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_model_summary=False,
                        callbacks=progress_callbacks(kwargs.get("enable_progress_bar", True), "relabel"), **kwargs)
    images = render_layout(distilled.images)  # the layout render is fastest on; a mapped set has it (no copy)
    for p in todo:
        batches = sample_pass(len(distilled), distilled.hw, bsz, int(dataset["input_size"]),
                              seed=int(cfg["seed"]) + p, scale=tuple(cfg["crop_scale"]),
                              ratio=tuple(cfg["crop_ratio"]), flip_p=float(cfg["flip_p"]),
                              cutmix_alpha=cfg["cutmix_alpha"])
        data = PassDataset(images, batches, int(dataset["input_size"]), dataset["mean"], dataset["std"],
                           per_forward)
        loader = DataLoader(data, batch_size=None, num_workers=dist.loader_workers(cfg["num_workers"], "relabel"))
        labels = [lab for group in trainer.predict(labeller, loader) for lab in group]
        if not all(torch.isfinite(lab).all() for lab in labels):  # never write (and mark done) NaN labels
            raise DivergedError(f"relabel pass {p}: the teacher's soft labels are not finite (NaN or inf); fix: "
                                f"check the teacher (its weights, labels.temperature={cfg['temperature']})")
        store.root.mkdir(parents=True, exist_ok=True)
        entry = write_shard(store.root / shard_name(p), batches, labels, plan.codec, p, len(distilled))
        store.commit(shard_name(p), [shard_name(p)], {"shard": entry, "rank": dist.rank()})
        log.info("relabel pass %d/%d: %d batches, %d bytes", p + 1, plan.sli, len(batches), entry["bytes"])
    dist.barrier()  # every rank's passes are on disk
    names = [shard_name(p) for p in range(plan.sli)]
    missing = [n for n in names if not store.is_done(n)]
    if missing:
        raise RuntimeError(f"relabel finished {plan.sli - len(missing)} of {plan.sli} passes in {store.root}; "
                           f"run again to resume")
    store.promote(names, Path(out_dir))
    shards = [r["shard"] for r in store.records(names)]  # read before a private work dir is removed
    if work_dir is None:
        shutil.rmtree(store.root, ignore_errors=True)
    return store_fields(plan, cfg, dataset, num_images=len(distilled), ipc=distilled.ipc, classes=distilled.classes,
                        images_sha256=distilled.sha256, teacher_mode=committee.mode,
                        teacher_weights=committee.weights.tolist(), shards=shards)
