"""`make rehearse` (hald/rehearse): stand-ins in the official layouts, the counts it shrinks, its cost model."""
import json
import pathlib
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from conftest import FAST, ROOT, compose
from hald.data.sources import build_source
from hald.data.sources.registry import class_names
from hald.distill.recover import distill_recover
from hald.models import build_backbone, save_weights
from hald.models.teachers import Teacher
from hald_tools.rehearse import standins
from hald_tools.rehearse.__main__ import store_bytes_full
from hald_tools.rehearse.estimate import SPLITS, stage_costs
from hald_tools.rehearse.presets import BY_NAME, FAMILIES, PRESETS, STANDIN

MNIST = {"name": "mnist5k", "num_classes": 10, "channels": 1, "input_size": 28, "mean": [0.1307], "std": [0.3081]}


def test_every_paper_preset_is_rehearsed():
    papers = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")
                    if p.stem.startswith(("hald_", "cvdd_", "fadrm_", "cim_", "lpqld_")))
    assert sorted(BY_NAME) == papers
    assert all(p.family in FAMILIES and p.family in STANDIN for p in PRESETS)


def test_rehearsal_overrides_change_counts_only(tmp_path):
    """Every override of every preset compose, and none touches a shape: classes, resolution, models, batch
    sizes, T, codec, teacher mode and schedule stay the preset's."""
    paths = {"tiny": "/t", "in1k": "/i", "cifar100": "/c", "nette": "/n", "woof": "/w", "published": "/p"}
    for p in PRESETS:
        published = ["distill.path=/p"] if p.published else []
        full = compose([f"experiment={p.name}", *published], tmp_path)
        r = compose([f"experiment={p.name}", *p.overrides(paths)], tmp_path)
        for key in ("dataset.num_classes", "dataset.input_size", "model.name", "teacher.models",
                    "teacher.pretrained", "labels.batch_size", "labels.temperature", "labels.codec",
                    "labels.teacher_mode", "labels.bssl_group_size", "train.soft_batch_size",
                    "train.hard_batch_size", "train.micro_batch_size", "schedule", "trainer.precision",
                    "distill.method", "optimizer"):
            assert OmegaConf.select(r, key) == OmegaConf.select(full, key), (p.name, key)
        assert r.dataset.name == FAMILIES[p.family].dataset, p.name
        if full.distill.method == "cvdd":
            assert r.distill.pool.models == full.distill.pool.models and r.distill.class_chunk == 100
        if full.distill.method in ("fadrm", "fadrm_plus"):  # one step per stage: the stages stay
            for key in ("pool.models", "pool.pretrained", "input_sizes", "class_chunk", "alpha", "jitter", "amp",
                        "rounding", "rded.factor"):
                assert OmegaConf.select(r.distill, key) == OmegaConf.select(full.distill, key), (p.name, key)
            assert len(r.distill.budgets) == len(full.distill.budgets) and set(r.distill.budgets) == {1}
        if full.distill.method == "cim":
            for key in ("pool.models", "pool.pretrained", "factor", "feature_layer", "shift", "cutout", "flip_p"):
                assert OmegaConf.select(r.distill, key) == OmegaConf.select(full.distill, key), (p.name, key)
            assert r.distill.mipc == 4 * r.ipc  # the ipc x factor^2 real images CIM tiles


def test_stage_costs_follow_the_shrunk_counts(tmp_path):
    p = BY_NAME["cvdd_tiny"]
    r = stage_costs(compose([f"experiment={p.name}", *p.overrides({"tiny": "/t"})], tmp_path), 2000, 200)
    f = stage_costs(compose([f"experiment={p.name}"], tmp_path), *SPLITS["tiny_imagenet"])
    assert r["squeeze"].units == 5 and len(r["squeeze"].parts) == 5  # 1 step for each pool teacher
    assert r["distill"].parts[0] == "1 of 2 units x 1 iterations" and r["distill"].units == 1
    assert f["distill"].parts[0] == "20 of 20 units x 4000 iterations" and f["distill"].units == 80_000
    assert r["train"].units == 4 * 3 and f["train"].units == 300 * 2000 / 16
    assert r["relabel"].units == 2 * 200 and f["relabel"].units == 300 * 2000
    for stage in r:  # the full run is more work in every stage
        assert f[stage].flops > r[stage].flops > 0, stage


@pytest.mark.parametrize("name, units, full_units, parts", [
    ("fadrm_plus_in1k", 4, 100 * 2000, ("1 of 10 units x 4 iterations (200/224/200/224 px)",
                                        "100 of 100 units x 2000 iterations (200/224/200/224 px)")),
    ("fadrm_tiny", 2, 100 * 1000, ("1 of 2 units x 2 iterations (64/64 px)", "100 of 100 units x 1000 iterations (64/64 px)")),
    ("cim_in1k_ipc10", 1, 1000 * 200, ("1 of 1000 classes x 1 iterations", "1000 of 1000 classes x 200 iterations")),
])
def test_new_methods_are_priced_by_their_cost_records(tmp_path, name, units, full_units, parts):
    """FADRM's and CIM's distill stage is priced by the method's own Cost (distill/registry.py): the
    rehearsal's shrunk counts and the full preset's, from the same record."""
    p = BY_NAME[name]
    fam = FAMILIES[p.family]
    paths = {p.family: "/d"}
    r = stage_costs(compose([f"experiment={name}", *p.overrides(paths)], tmp_path),
                    STANDIN[p.family]["train"] * fam.classes, STANDIN[p.family]["test"] * fam.classes)
    f = stage_costs(compose([f"experiment={name}"], tmp_path), *fam.splits)
    assert (r["distill"].units, f["distill"].units) == (units, full_units)
    assert (r["distill"].parts[0], f["distill"].parts[0]) == parts
    assert f["distill"].flops > r["distill"].flops > 0


def test_full_store_bytes_of_the_285mb_preset():
    assert store_bytes_full(BY_NAME["hald_in1k_285mb"])[::2] == (301_783_062, 3)


def test_full_store_bytes_of_the_lpqld_presets():
    """LPQLD's IPC 10 row at its byte count (conf/experiment/lpqld_in1k_ipc10.yaml: 30 shards of 4,112,858 B)."""
    assert store_bytes_full(BY_NAME["lpqld_in1k_ipc10"])[::2] == (123_385_740, 30)
    assert store_bytes_full(BY_NAME["lpqld_in1k_ipc50"])[0] == 5 * 123_385_740


def test_units_run_recovers_the_first_units_and_keeps_the_init_of_the_rest(tmp_path, one_thread):
    torch.manual_seed(0)
    net = build_backbone("convnet_w32", 10, 1, 28)
    save_weights(net, tmp_path / "t.safetensors")
    teacher = Teacher("convnet_w32", "k", str(tmp_path / "t.safetensors"), source="checkpoint")
    source = build_source(compose(FAST).dataset, "train")
    kw = dict(source=source, dataset=MNIST, teachers=[teacher], method="sre2l", ipc=2, seed=0, iterations=2,
              flip_p=0.0, class_chunk=5, trainer_kwargs={"accelerator": "cpu", "enable_progress_bar": False})
    capped = distill_recover(out_dir=tmp_path / "capped", units_run=1, **kw)
    full = distill_recover(out_dir=tmp_path / "full", **kw)
    assert capped["units_run"] == 1 and full["units_run"] is None
    assert [u["iterations"] for u in capped["units"]] == [2, 0, 0, 0]
    assert capped["units"][1]["members"] == [] and capped["units"][1]["last"] is None
    run = tmp_path / "capped" / "images" / "00000" / "00000.png"  # class 0: unit (0, 0), recovered in both
    assert run.read_bytes() == (tmp_path / "full" / "images" / "00000" / "00000.png").read_bytes()
    kept = tmp_path / "capped" / "images" / "00005" / "00000.png"  # class 5: unit (0, 1), its init only
    assert kept.read_bytes() != (tmp_path / "full" / "images" / "00005" / "00000.png").read_bytes()


def test_units_run_must_be_positive(fast_cfg):
    from hald.errors import ConfigError
    from hald.pipeline.preflight import preflight

    with pytest.raises(ConfigError, match="distill.units_run=0"):
        preflight(fast_cfg("distill=sre2l", "distill.units_run=0"))


def test_tiny_imagenet_standin_is_read_by_the_official_layout_source(tmp_path):
    root = standins.tiny_imagenet(tmp_path / "tiny-imagenet-200", train_per_class=2, val_per_class=1)
    cfg = compose(["dataset=tiny_imagenet", f"dataset.root={root}"], tmp_path)
    train, test = build_source(cfg.dataset, "train"), build_source(cfg.dataset, "test")
    assert len(train) == 400 and len(test) == 200 and class_names(cfg.dataset) == standins.wnids(200)
    x, y = train[399]
    assert tuple(x.shape) == (3, 64, 64) and x.dtype == torch.uint8 and y == 199
    stamp = (root / "standin.json").stat().st_mtime_ns
    assert standins.tiny_imagenet(root, 2, 1) == root and (root / "standin.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("family, overrides", [
    ("cifar100", []), ("nette", []), ("woof", [])])
def test_small_family_standins_are_read_by_their_sources(tmp_path, family, overrides):
    """CIFAR-100's pickles and the imagenette2 / imagewoof2 folders, read by the dataset the family's presets name."""
    fam = FAMILIES[family]
    root = standins.family_data(family, tmp_path, train_per_class=2, val_per_class=1)
    cfg = compose([f"dataset={fam.dataset}", f"dataset.root={root}", *overrides], tmp_path)
    train, test = build_source(cfg.dataset, "train"), build_source(cfg.dataset, "test")
    assert (len(train), len(test), len(class_names(cfg.dataset))) == (2 * fam.classes, fam.classes, fam.classes)
    x, y = train[len(train) - 1]
    assert x.dtype == torch.uint8 and y == fam.classes - 1 and x.shape[0] == 3
    assert (tuple(x.shape[1:]) == (32, 32)) == (family == "cifar100")
    stamp = (root / "standin.json").stat().st_mtime_ns
    assert standins.family_data(family, tmp_path, 2, 1) == root and (root / "standin.json").stat().st_mtime_ns == stamp


def test_standin_torchvision_weights_take_the_pretrained_code_path(tmp_path, monkeypatch):
    from hald.models.build import load_teacher

    home = standins.torchvision_weights(tmp_path / "torch_home", ["resnet18"])
    monkeypatch.setenv("TORCH_HOME", str(home))
    net = load_teacher("resnet18", 1000, 3, 224, pretrained="torchvision:IMAGENET1K_V1")
    ref = torch.load(next((home / "hub" / "checkpoints").glob("resnet18-*.pth")), weights_only=True)
    assert torch.equal(net.state_dict()["fc.weight"], ref["fc.weight"])


@pytest.mark.slow
def test_imagenet_and_published_standins_are_read_as_their_families(tmp_path):
    root = standins.imagenet1k(tmp_path / "imagenet", train_per_class=1, val_per_class=1)
    published = standins.published_set(tmp_path / "published", ipc=1)
    cfg = compose(["dataset=imagenet1k", f"dataset.root={root}"], tmp_path)
    train = build_source(cfg.dataset, "train")
    assert len(train) == 1000 and tuple(train[0][0].shape[1:]) in {(h, w) for w, h in standins.IMAGENET_SIZES}
    assert sorted(p.name for p in published.iterdir() if p.is_dir()) == [f"{c:05d}" for c in range(1000)]


@pytest.mark.slow
def test_make_rehearse_runs_a_preset_of_each_shape_end_to_end(tmp_path):
    """The short rehearsal CI runs (the whole `make rehearse` takes ~30 minutes on 2 idle cores and far more on
    a busy machine): Tiny-ImageNet at 64 px with every stage built, and HALD on a published ImageNet-1K set at
    224 px with 1,000 classes and torchvision's weight files (stand-ins) loaded by name."""
    presets = ["hald_tiny_slc50", "hald_in1k_rded"]
    proc = subprocess.run([sys.executable, "-m", "hald_tools.rehearse", "--only", ",".join(presets), "--work",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = (tmp_path / "rehearse.md").read_text()
    tiny, in1k = text.split("### hald_tiny_slc50")[1].split("### hald_in1k_rded")
    for stage in ("squeeze", "distill", "relabel"):
        assert f"| {stage} | built |" in tiny, stage
    assert "| squeeze | loaded |" in in1k and "| distill | folder read |" in in1k and "| relabel | built |" in in1k
    assert "Full preset: 201,193,380 B of shards (SLI 10)" in in1k  # SLC 100 at the published sets' IPC 10
    for name, dataset, student, classes in (("hald_tiny_slc50", "tiny_imagenet", "resnet18_cifar", 200),
                                            ("hald_in1k_rded", "imagenet1k", "resnet18_tv", 1000)):
        res = json.loads((tmp_path / "runs" / name / "results.json").read_text())
        assert (res["dataset"], res["student"], res["ipc"]) == (dataset, student, 1)
        store = json.loads((pathlib.Path(res["store"]) / "manifest.json").read_text())
        assert store["num_classes"] == classes


def test_merge_replaces_the_run_presets_and_keeps_the_others():
    """`--only A --merge`: A's summary row and section are the new run's, every other preset's stay as they were
    (old sections get the old file's date), in the presets' order."""
    from hald_tools.rehearse.__main__ import merge

    def doc(date, rows):
        summary = ["| preset | s |", "|---|---|", *(f"| {n} | {v} |" for n, v in rows)]
        sections = [f"### {n}\n\n{'Measured ' + date + '. ' if date == 'new' else ''}body {v}\n" for n, v in rows]
        return "\n".join(["# Rehearsal", "", f"Machine: x; {date}; command", "", "## Summary", "", *summary, "",
                          "## Per preset", "", *sections])

    a, b, c = PRESETS[0].name, PRESETS[1].name, PRESETS[2].name
    old = doc("2026-12-02", [(a, 1), (b, 2), (c, 3)]).replace("new", "")
    out = merge(old, doc("new", [(b, 20)]))
    assert f"| {b} | 20 |" in out and f"| {b} | 2 |" not in out and "body 20" in out and "body 2\n" not in out
    assert out.index(f"| {a} | 1 |") < out.index(f"| {b} | 20 |") < out.index(f"| {c} | 3 |")
    assert out.count("Measured 2026-12-02 (an earlier `make rehearse`).") == 2 and "body 1" in out
