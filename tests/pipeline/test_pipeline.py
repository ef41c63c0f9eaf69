"""The pipeline in-process on tiny mnist5k: phase switching, caching, passing artifacts in."""
import json

import pytest

from hald import pipeline
from hald.data.distilled import load_distilled
from hald.labels.store import open_store_for
from hald.pipeline import cache, stages
from hald.train.datamodule import HALDDataModule
from hald.train.phases import SoftReplayDataset, standard_phases
from hald.data.sources import build_source
from hald.train.schedule import make_schedule


def test_phase_switching_uses_soft_and_hard_paths_in_exactly_their_epochs(fast_cfg, caplog):
    cfg = fast_cfg("train.epochs=6", "train.soft_batch_size=16")  # S6: soft 0-0 | hard 1-3 | soft 4-5
    out = pipeline.run(cfg)
    schedule = make_schedule("S6", 6)
    assert out["schedule"] == "soft 0-0 | hard 1-3 | soft 4-5"
    assert out["phase_audit"] == {e: [schedule.phase_at(e)] for e in range(6)}
    # accuracy logged at every phase end (epochs 0, 3) and at the end
    assert [e["epoch"] for e in out["eval_log"]] == [0, 3, 5]
    assert [e["phase"] for e in out["eval_log"]] == ["soft", "hard", "soft"]
    assert (out["slc"], out["sli"], out["ipc"]) == (8, 2, 4)
    results = json.loads((pipeline.Path(cfg.paths.output_dir) / "results.json").read_text())
    assert results["top1"] == out["top1"] and 0 <= out["top1"] <= 100
    assert any("last.ckpt" in str(p) for p in (pipeline.Path(cfg.paths.output_dir) / "checkpoints").iterdir())


def test_datamodule_reads_phase_from_the_schedule_not_the_callback(fast_cfg):
    cfg = fast_cfg("train.epochs=6")
    ctx = cache.Context(cfg, pipeline.Path(cfg.paths.cache_dir))
    teachers = stages.stage_squeeze(ctx)
    image_dir, key, _ = stages.stage_distill(ctx, teachers)
    images = load_distilled(image_dir, build_source(cfg.dataset, "test").classes, 1)
    store, _ = stages.stage_relabel(ctx, images, key, teachers)
    schedule = make_schedule("S6", 6)
    dm = HALDDataModule(images, open_store_for(store, images), cfg.dataset, schedule, standard_phases(16, 8),
                        build_source(cfg.dataset, "test"))
    for epoch in range(6):  # no trainer, no callback: the loader alone picks the phase
        loader = dm.train_dataloader(epoch)
        is_soft = isinstance(loader.dataset, SoftReplayDataset)
        assert is_soft == (schedule.phase_at(epoch) == "soft")
        batch = next(iter(loader))
        if is_soft:  # soft batch 16 = two stored batches of 8, replayed
            assert batch["x"].shape == (16, 1, 28, 28) and batch["target"].shape == (16, 10)
            assert len(batch["records"]) == 2
        else:
            assert batch[0].shape == (8, 1, 28, 28) and batch[1].shape == (8,)
    # two soft epochs (SLI = 2) cover every stored batch exactly once
    ids = sorted(sum((dm.phases["soft"].dataset(e).groups for e in (0, 4)), []), key=lambda g: g[0])
    assert sorted(r for g in ids for r in g) == list(range(dm.store.num_records))


def test_second_run_reuses_teacher_images_and_labels_and_new_slc_only_relabels(fast_cfg, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="hald")
    first = pipeline.run(fast_cfg("train.epochs=1"))
    assert not first["images_reused"] and not first["labels_reused"]
    second = pipeline.run(fast_cfg("train.epochs=1"))
    assert second["images_reused"] and second["labels_reused"] and second["teachers"][0]["reused"]
    third = pipeline.run(fast_cfg("train.epochs=1", "slc=12"))
    assert third["images_reused"] and third["teachers"][0]["reused"] and not third["labels_reused"]
    assert third["sli"] == 3
    assert "squeeze: reused" in caplog.text and "distill: reused" in caplog.text


def test_artifacts_can_be_passed_in(fast_cfg, tmp_path):
    first = pipeline.run(fast_cfg("train.epochs=1"))
    teacher = next((pipeline.Path(fast_cfg().paths.cache_dir) / "squeeze").glob("*/teacher.safetensors"))
    out = pipeline.run(fast_cfg("train.epochs=1", "distill=folder", f"distill.path={first['images']}",
                                f"labels.store={first['store']}", f"teacher.checkpoints=[{teacher}]"))
    assert out["teachers"][0]["source"] == "checkpoint"
    assert out["store"] == first["store"] and out["ipc"] == 4


def test_soft_loader_with_workers_gives_the_same_batches(fast_cfg):
    import torch
    from torch.utils.data import DataLoader

    cfg = fast_cfg("train.epochs=2")
    out = pipeline.run(cfg)
    images = load_distilled(out["images"], [str(i) for i in range(10)], 1)
    dm = HALDDataModule(images, open_store_for(pipeline.Path(out["store"]), images), cfg.dataset, make_schedule("S6", 2),
                        standard_phases(8, 8), build_source(cfg.dataset, "test"))
    ds = dm.phases["soft"].dataset(0)
    a = list(DataLoader(ds, batch_size=None, num_workers=0))
    b = list(DataLoader(ds, batch_size=None, num_workers=2))
    assert len(a) == len(b) == len(ds)
    for x, y in zip(a, b):
        assert torch.equal(x["x"], y["x"]) and torch.equal(x["target"], y["target"])


def test_file_based_rgb_dataset_runs_end_to_end(fast_cfg, tmp_path):
    """The tiny_imagenet layout (RGB JPEGs, 64 px, file-based source) through every stage."""
    from PIL import Image

    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819", "n01641577"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    ann = []
    g = __import__("numpy").random.default_rng(0)
    for c, w in enumerate(wnids):
        d = root / "train" / w / "images"
        d.mkdir(parents=True)
        for k in range(12):
            arr = (g.random((64, 64, 3)) * 80 + 60 * c).astype("uint8")
            Image.fromarray(arr).save(d / f"{w}_{k}.JPEG")
        for k in range(4):
            name = f"val_{c}_{k}.JPEG"
            Image.fromarray((g.random((64, 64, 3)) * 80 + 60 * c).astype("uint8")).save(root / "val" / "images" / name)
            ann.append(f"{name}\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    cfg = fast_cfg("dataset=tiny_imagenet", f"dataset.root={root}", "dataset.num_classes=3", "train.epochs=2",
                   "teacher.squeeze.batch_size=12")
    out = pipeline.run(cfg)
    assert out["ipc"] == 4 and out["sli"] == 2 and 0 <= out["top1"] <= 100
    assert len(list(pipeline.Path(out["images"]).rglob("*.png"))) == 12


def test_csv_and_wandb_loggers_record_phase_lr_accuracy_and_label_bytes(fast_cfg):
    import os

    assert os.environ["WANDB_MODE"] == "disabled"  # conftest: W&B never leaves the machine in tests
    cfg = fast_cfg("train.epochs=3", "logger=many")
    pipeline.run(cfg)
    text = next(pipeline.Path(cfg.paths.output_dir).rglob("metrics.csv")).read_text()
    header = text.splitlines()[0].split(",")
    for col in ("labels/bytes", "train/phase", "lr-AdamW/pg1", "val/top1", "val/top5", "train/loss_soft",
                "train/loss_hard"):
        assert col in header, (col, header)
