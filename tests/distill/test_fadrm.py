"""FADRM / FADRM+ (distill/fadrm.py) against the official recover (Jiacheng8/FADRM recover/recover.py = R): the
stage rule, the cosine lr, the data-residual blend, the teacher turns, BN-less teachers, a fresh Adam per stage,
the saved pixels, and builds through the registry and the pipeline (resume included)."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import FAST, compose
from hald import artifacts
from hald.data.sources import build_source
from hald.distill import fadrm as fm
from hald.distill.registry import METHODS
from hald.errors import InputError
from hald.models import build_backbone, save_weights
from hald.models.teachers import Teacher
from hald.pipeline.cache import Context
from hald.pipeline.preflight import preflight
from hald.pipeline.stages import stage_distill, stage_squeeze

MNIST = {"name": "mnist5k", "num_classes": 10, "channels": 1, "input_size": 28, "mean": [0.1307], "std": [0.3081]}
pytestmark = pytest.mark.usefixtures("one_thread")


# -- the defining steps, by hand ------------------------------------------------------------------------------
def test_residual_blend_at_alpha_half_resizes_both_sides():
    x, init = torch.full((2, 3, 8, 8), 1.0), torch.full((2, 3, 16, 16), 3.0)
    out = fm.residual_blend(x, init, 0.5, 16)  # x upsampled 8 -> 16, init kept: 0.5 * 1 + 0.5 * 3
    assert out.shape == (2, 3, 16, 16) and torch.equal(out, torch.full_like(out, 2.0))
    out = fm.residual_blend(x, init, 0.5, 8)  # init downsampled 16 -> 8
    assert out.shape == (2, 3, 8, 8) and torch.equal(out, torch.full_like(out, 2.0))
    # bilinear, align_corners=False, no antialias: 2x2 -> 1x1 samples the centre, (0 + 1 + 2 + 3) / 4 = 1.5
    init = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    assert fm.residual_blend(torch.zeros(1, 1, 1, 1), init, 0.5, 1).item() == pytest.approx(0.75)
    assert fm.residual_blend(torch.zeros(1, 1, 1, 1), init, 0.25, 1).item() == pytest.approx(1.125)
    # same size: the exact convex mix, nothing resized
    a, b = torch.randn(1, 2, 5, 5), torch.randn(1, 2, 5, 5)
    assert torch.equal(fm.residual_blend(a, b, 0.5, 5), 0.5 * a + 0.5 * b)


def test_resolution_switches_at_the_budget_boundary():
    budgets, sizes = [500, 500, 500, 500], [200, 224, 200, 224]  # the official IN-1K / Nette / Woof scripts
    assert [fm.stage_at(i, budgets) for i in (0, 499, 500, 999, 1000, 1499, 1500, 1999)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert sizes[fm.stage_at(499, budgets)] == 200 and sizes[fm.stage_at(500, budgets)] == 224
    assert fm.stage_at(2, [1, 1, 3]) == 2 and fm.stage_at(0, [1]) == 0
    assert fm.stage_sizes(None, budgets, 64) == [64, 64, 64, 64]  # CIFAR / Tiny: every stage at the input size


def test_lr_is_cosine_over_the_global_iteration():
    assert fm.cosine_lr(0.25, 0, 2000) == 0.25
    assert fm.cosine_lr(0.25, 500, 2000) == pytest.approx(0.125 * (1 + math.sqrt(0.5)))  # 0.2133883
    assert fm.cosine_lr(0.25, 1000, 2000) == pytest.approx(0.125)
    assert fm.cosine_lr(0.25, 1999, 2000) == pytest.approx(0.125 * (1 - math.cos(math.pi / 2000)))  # never 0


def test_teacher_turns_round_robin_in_pool_order():
    assert [fm.teacher_turn(i, 4) for i in range(9)] == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert fm.turn_order("fadrm", ["r18", "d121", "sv2"]) == ["r18"]
    assert fm.turn_order("fadrm_plus", ["r18", "d121", "sv2"]) == ["r18", "d121", "sv2"]


# -- one unit, with constructed teachers ----------------------------------------------------------------------
class Recording(nn.Module):
    """A tiny teacher (conv -> BN -> pool -> linear, or no BN) that logs which of the pool forwarded and the
    side of the input it saw."""

    def __init__(self, tag, log, bn=True, classes=4):
        super().__init__()
        self.tag, self.log = tag, log
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4) if bn else nn.Identity(),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, classes))

    def forward(self, x):
        self.log.append((self.tag, x.shape[-1]))
        return self.body(x)


def _settings(**kw):
    base = dict(iterations=0, lr=0.25, jitter=2, flip_p=0.5, log_every=1, input_sizes=(12, 16), budgets=(2, 3),
                amp=False)
    base.update(kw)
    base["iterations"] = sum(base["budgets"])
    return fm.FadrmSettings(**base)


def _unit(teachers, s, p0=None):
    torch.manual_seed(0)
    p0 = torch.rand(4, 1, 16, 16) if p0 is None else p0
    ds = {"mean": [0.0], "std": [1.0]}
    return fm.fadrm_unit([t.eval().requires_grad_(False) for t in teachers], p0, torch.arange(4), ds, s)


def test_unit_turns_teachers_per_iteration_and_switches_size_at_the_boundary():
    log = []
    teachers = [Recording(k, log) for k in "abc"]
    x, hist = _unit(teachers, _settings())
    # iteration i uses teacher i mod 3 across the stage boundary (no reset), at the stage's size (2 x 12, 3 x 16)
    assert log == [("a", 12), ("b", 12), ("c", 16), ("a", 16), ("b", 16)]
    assert hist["teacher"] == [0, 1, 2, 0, 1] and hist["iteration"] == [0, 1, 2, 3, 4]
    assert x.shape == (4, 1, 16, 16)


def test_a_teacher_without_batchnorm_gives_ce_only_steps():
    log = []
    teachers = [Recording("bn", log), Recording("plain", log, bn=False)]  # AlexNet in FADRM+ IN-1K IPC 1
    _, hist = _unit(teachers, _settings(budgets=(2, 2)))
    assert [h for h in hist["bn"][1::2]] == [0.0, 0.0] and all(b > 0 for b in hist["bn"][0::2])
    assert hist["loss"][1::2] == pytest.approx(hist["ce"][1::2])


def test_residual_at_every_boundary_but_the_last_and_a_fresh_adam_per_stage(monkeypatch):
    made, lrs = [], []

    class Spy(torch.optim.Adam):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

        def step(self, *a, **k):
            lrs.append(self.param_groups[0]["lr"])
            return super().step(*a, **k)

    monkeypatch.setattr(torch.optim, "Adam", Spy)
    p0 = torch.rand(4, 1, 16, 16)
    # lr 0: the steps change nothing, so the image is the blends alone
    x, _ = _unit([Recording("a", [])], _settings(lr=0.0, input_sizes=(8, 16, 16), budgets=(1, 1, 1)), p0)
    down = F.interpolate(p0, size=(8, 8), mode="bilinear", align_corners=False)
    once = 0.5 * F.interpolate(down, size=(16, 16), mode="bilinear", align_corners=False) + 0.5 * p0
    assert torch.allclose(x, 0.5 * once + 0.5 * p0, atol=1e-6)  # two blends, none after the last stage
    assert len(made) == 3 and len({id(o) for o in made}) == 3
    lrs.clear()
    _unit([Recording("a", [])], _settings(lr=0.25, budgets=(2, 2)))
    assert lrs == pytest.approx([fm.cosine_lr(0.25, i, 4) for i in range(4)])


def test_saved_pixels_truncate_by_default_or_round():
    ds = {"mean": [0.5], "std": [0.25]}
    x01 = torch.tensor([100.7, 0.2, 254.9, 300.0]).view(1, 1, 2, 2) / 255
    x = (x01 - 0.5) / 0.25
    assert fm.to_pixels(x, ds, "truncate").flatten().tolist() == [100, 0, 254, 255]
    assert fm.to_pixels(x, ds, "round").flatten().tolist() == [101, 0, 255, 255]


# -- builds -----------------------------------------------------------------------------------------------------
def _teacher(tmp, name, seed):
    torch.manual_seed(seed)
    path = tmp / f"{name}.safetensors"
    save_weights(build_backbone(name, 10, 1, 28), path)
    return Teacher(name=name, key=f"{name}-{seed}", weights=str(path), source="checkpoint")


@pytest.fixture(scope="module")
def source():
    return build_source(compose(FAST).dataset, "train")


def _build(source, out, teachers, work=None, **extra):
    kw = dict(source=source, dataset=MNIST, teachers=teachers, method="fadrm_plus", ipc=2, seed=0,
              budgets=[2, 2], input_sizes=[24, 28], flip_p=0.0, class_chunk=5, log_every=1,
              rded={"mipc": 10, "num_crops": 2}, trainer_kwargs={"accelerator": "cpu", "enable_progress_bar": False})
    kw.update(extra)
    return METHODS[kw["method"]].build(out_dir=out, work_dir=work, **kw)


def test_fadrm_plus_builds_resumes_and_gives_the_same_bytes(source, tmp_path, monkeypatch):
    teachers = [_teacher(tmp_path, "convnet_w32", 0), _teacher(tmp_path, "resnet10_w16_small", 1)]
    a = _build(source, tmp_path / "a", teachers)
    assert {k: a[k] for k in ("method", "ipc", "init", "input_sizes", "budgets", "iterations", "alpha", "amp",
                              "rounding", "jitter")} == {
        "method": "fadrm_plus", "ipc": 2, "init": "rded", "input_sizes": [24, 28], "budgets": [2, 2],
        "iterations": 4, "alpha": 0.5, "amp": True, "rounding": "truncate", "jitter": 4}
    assert [t["name"] for t in a["teachers"]] == ["convnet_w32", "resnet10_w16_small"]
    assert [(u["ipc_index"], u["chunk"]) for u in a["units"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(u["teachers"] == ["convnet_w32", "resnet10_w16_small"] and u["iterations"] == 4 for u in a["units"])
    assert a["units"][0]["first"]["teacher"] == 0 and a["units"][0]["last"]["teacher"] == 1
    assert len(a["init_selection"]) == 10
    pngs = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a" / "images").rglob("*.png"))
    assert len(pngs) == 20 and (tmp_path / "a" / "grid.png").is_file() and not (tmp_path / "a" / ".work").exists()
    from PIL import Image
    assert Image.open(tmp_path / "a" / pngs[0]).size == (28, 28)  # the last stage's size

    # killed on the third unit, then started again: the two finished units are kept, the same bytes come out
    real, calls = fm.fadrm_unit, []

    def dies_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(fm, "fadrm_unit", dies_on_the_third)
    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        _build(source, tmp_path / "b", teachers, work)
    assert len(list((work / "units").glob("*.json"))) == 2
    calls.clear()
    monkeypatch.setattr(fm, "fadrm_unit", lambda *args, **kwargs: (calls.append(1), real(*args, **kwargs))[1])
    b = _build(source, tmp_path / "b", teachers, work)
    assert len(calls) == 2 and b["units"] == a["units"]
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in pngs)


def test_fadrm_in_the_pipeline_with_one_teacher(tmp_path):
    torch.manual_seed(0)
    ck = tmp_path / "t.safetensors"
    save_weights(build_backbone("convnet_w32", 10, 1, 28), ck)
    cfg = compose(FAST + ["distill=fadrm", f"teacher.checkpoints=[{ck}]", "ipc=1", "distill.budgets=[2,1]",
                          "distill.input_sizes=[24,28]", "distill.class_chunk=10", "distill.rded.mipc=10",
                          "distill.rded.num_crops=2", "distill.amp=false"], tmp_path)
    preflight(cfg)
    ctx = Context(cfg, tmp_path / "cache")
    image_dir, key, reused = stage_distill(ctx, stage_squeeze(ctx))[:3]
    made = artifacts.read_manifest(image_dir.parent)
    assert not reused and len(list(image_dir.rglob("*.png"))) == 10
    assert made["method"] == "fadrm" and made["iterations"] == 3 and made["amp"] is False
    assert [t["name"] for t in made["teachers"]] == ["convnet_w32"]


def test_a_teacher_that_cannot_take_a_stage_size_is_a_config_error(source, tmp_path):
    from hald.errors import ConfigError

    # the ConvNet's head is sized for its input: 20 px leaves 2 x 2 features where 28 px leaves 3 x 3
    with pytest.raises(ConfigError, match="cannot take 20-px inputs"):
        _build(source, tmp_path / "a", [_teacher(tmp_path, "convnet_w32", 0)], input_sizes=[20, 28])


@pytest.mark.parametrize("extra, match", [
    ("distill.input_sizes=[24,28]", "one positive size per stage"),  # 4 budgets, 2 sizes
    ("distill.budgets=[5,0]", "distill.budgets"),
    ("distill.rounding=ceil", "distill.rounding"),
    ("distill.alpha=1.5", "distill.alpha"),
])
def test_bad_fadrm_configs_stop_in_preflight(tmp_path, extra, match):
    with pytest.raises(InputError, match=match):
        preflight(compose(FAST + ["distill=fadrm", extra], tmp_path))


@pytest.mark.slow
def test_fadrm_plus_shares_ipc_indices_over_two_ddp_ranks(source, tmp_path):
    """Two CPU processes (Lightning Fabric, ddp_spawn): IPC index i runs on rank i mod 2 and the images equal a
    one-process run's (units are seeded by what they are). The job carries the teachers as plain dicts:
    Lightning's spawn launcher refuses frozen dataclasses (Teacher)."""
    teachers = [_teacher(tmp_path, "convnet_w32", 0), _teacher(tmp_path, "resnet10_w16_small", 1)]
    two = _build(source, tmp_path / "two", teachers, devices=2)
    _build(source, tmp_path / "one", teachers, devices=1)
    assert sorted((u["ipc_index"], u["rank"]) for u in two["units"]) == [(0, 0), (0, 0), (1, 1), (1, 1)]
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.png"))
    assert len(files) == 21  # 20 images + the grid
    assert all((tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes() for f in files)
