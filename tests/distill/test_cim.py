"""CIM (distill=cim): the hand-computed case of its defining step (mosaic, views, paired L1 loss, one AdamW
step), the shared augmentation, the observer's feature layer, anchor selection by teacher CE, the record
(real images, cost, pre-flight) and builds on mnist5k through the registry (end to end, resume, two ranks)."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import FAST, compose
from hald.data.distilled import load_distilled
from hald.data.sources import ArraySource, build_source
from hald.distill import cim as cim_mod
from hald.distill import method_of
from hald.distill.cim import (CimSettings, cim_loss, class_anchors, distill_cim, layer_input, mosaic,
                              quadrant_views, resolve_feature_layer, shared_augment, synthesize)
from hald.errors import ConfigError, InputError
from hald.models import build_backbone
from hald.pipeline.cache import Context
from hald.pipeline.preflight import preflight
from hald.pipeline.stages import stage_distill, stage_squeeze

MNIST = {"name": "mnist5k", "num_classes": 10, "channels": 1, "input_size": 28, "mean": [0.1307], "std": [0.3081]}
PLAIN = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}  # normalisation = identity
pytestmark = pytest.mark.usefixtures("one_thread")


# -- the defining step, by hand (spec section 6: H = W = 4, factor 2, ipc 1, identity features, no augmentation) --
def _hand_anchors():
    """r0[y, x] = 2 b[y] + b[x] with b = [0, 0, 1, 1], then the constants 5, 7, 9; three identical channels."""
    b = torch.tensor([0.0, 0.0, 1.0, 1.0])
    r0 = (2 * b[:, None] + b[None, :]).expand(3, 4, 4)
    return torch.stack([r0, *(torch.full((3, 4, 4), v) for v in (5.0, 7.0, 9.0))])


def test_hand_computed_mosaic_views_loss_gradient_and_one_adamw_step():
    a = _hand_anchors()
    m = mosaic(a, ipc=1, factor=2)  # nearest 4 -> 2 keeps pixels 0 and 2
    assert m[0, 0].tolist() == [[0, 1, 5, 5], [2, 3, 5, 5], [7, 7, 9, 9], [7, 7, 9, 9]]
    assert torch.equal(m[0, 1], m[0, 0]) and torch.equal(m[0, 2], m[0, 0])
    v = quadrant_views(m, factor=2)  # bilinear 2 -> 4: 2 u[y] + u[x], u = [0, .25, .75, 1]
    u = torch.tensor([0.0, 0.25, 0.75, 1.0])
    assert torch.allclose(v[0], (2 * u[:, None] + u[None, :]).expand(3, 4, 4))
    assert [float(v[q].unique()) for q in (1, 2, 3)] == [5.0, 7.0, 9.0]  # views 1-3 equal their anchors
    assert cim_loss(v, a).item() == pytest.approx(0.3125, abs=1e-7)  # sum |2dy + dx| = 5 over 16 px
    assert cim_loss(quadrant_views(m + 0.1), a).item() == pytest.approx(0.6375, abs=1e-6)  # 0.3375 + 3 x 0.1
    delta = torch.zeros_like(m, requires_grad=True)
    cim_loss(quadrant_views(m + delta), a).backward()
    expect = torch.zeros(4, 4)
    expect[:2, :2] = torch.tensor([[1 / 32, 1 / 96], [-1 / 96, -1 / 32]])
    assert all(torch.allclose(delta.grad[0, c], expect, atol=1e-7) for c in range(3))
    # one AdamW step (lr 0.01, wd 0.01): lr * sign(g) where g != 0, exactly 0 elsewhere
    x, hist = synthesize(lambda f: f, a, 1, PLAIN, CimSettings(iterations=1), augment=lambda f: f)
    step = torch.zeros(4, 4)
    step[:2, :2] = torch.tensor([[-0.01, -0.01], [0.01, 0.01]])
    assert all(torch.allclose(x[0, c] - m[0, c], step, atol=1e-6) for c in range(3))
    assert hist == {"iteration": [0], "loss": [pytest.approx(0.3125)]}


def test_mosaic_places_anchor_q_times_ipc_plus_j_and_views_give_them_back():
    ipc, size = 3, 8
    a = torch.arange(4 * ipc, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 2, size, size).contiguous()
    m = mosaic(a, ipc, factor=2)
    assert m.shape == (ipc, 2, size, size)
    for j in range(ipc):  # tile q (row-major) of image j = anchor q * ipc + j
        corners = [m[j, 0, 0, 0], m[j, 0, 0, -1], m[j, 0, -1, 0], m[j, 0, -1, -1]]
        assert corners == [j, ipc + j, 2 * ipc + j, 3 * ipc + j]
    assert torch.equal(quadrant_views(m, 2), a)  # constant anchors survive nearest-down / bilinear-up exactly
    g = torch.rand(4 * ipc, 1, size, size)  # in general: tile q of image j = anchor q * ipc + j at even pixels
    tiles = mosaic(g, ipc, 2).view(ipc, 1, 2, 4, 2, 4).permute(2, 4, 0, 1, 3, 5).reshape(4 * ipc, 1, 4, 4)
    assert torch.equal(tiles, g[:, :, ::2, ::2])


def test_shared_augment_is_one_draw_for_the_whole_batch():
    a = torch.randn(4, 3, 16, 16)
    torch.manual_seed(3)
    out = shared_augment(torch.cat([a, a]), flip_p=0.5)
    assert torch.equal(out[:4], out[4:])  # a real image and its view get identical augmentation
    torch.manual_seed(3)
    assert torch.equal(shared_augment(torch.cat([a, a]), flip_p=0.5), out)  # seeded: reproducible
    assert (out == 0).float().mean() >= 0.2  # the cutout: a zeroed 8 x 8 square (clipped at the border)
    assert torch.equal(shared_augment(a, flip_p=0.0, shift=0.0, cutout=0.0), a)
    ones = torch.ones(1, 1, 16, 16)
    shifted = [shared_augment(ones, 0.0, 0.125, 0.0) for _ in range(20)]  # zero fill, at most 2 px per axis
    assert all((s.sum(-1) == 0).sum() <= 2 and (s.sum(-2) == 0).sum() <= 2 for s in shifted)
    assert any(s.min() == 0 for s in shifted)


# -- the observer's features -------------------------------------------------------------------------------------
def test_feature_layer_auto_follows_cims_depth_per_architecture():
    import torchvision

    conv = build_backbone("convnet_w32", 10, 1, 28).eval()
    assert resolve_feature_layer(conv) == "head"  # the last block, flattened (CIM: depth 3 on conv4)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(layer_input(conv, "head", x), torch.flatten(conv.features(x), 1))
    assert resolve_feature_layer(build_backbone("resnet18_modified", 10, 3, 64)) == "fc"  # CIM: -1, 512-d
    tv = torchvision.models.resnet18(weights=None).eval()
    assert resolve_feature_layer(tv) == "layer3"  # CIM: -4 = the input of child 6 = layer2's output
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))
        assert torch.equal(layer_input(tv, "layer3", x), want.flatten(1))
    assert resolve_feature_layer(build_backbone("resnet18", 10, 3, 224)) == "layer3"  # timm's, same stem
    assert resolve_feature_layer(conv, "features.3") == "features.3"
    with pytest.raises(ConfigError, match="feature_layer='layer9'"):
        resolve_feature_layer(conv, "layer9")


# -- anchors ----------------------------------------------------------------------------------------------------
class Brightness(nn.Module):
    """Logit of class 0 = 10 x the mean pixel: CE to class 0 falls as an image gets brighter."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([10 * self.w * m, torch.zeros_like(m)], 1)


def test_anchors_are_the_lowest_ce_real_images_in_ascending_order():
    ds = {"num_classes": 2, "channels": 1, "input_size": 8, "mean": [0.0], "std": [1.0], "test_resize": None}
    level = np.random.default_rng(1).permutation(12)  # class-0 image k has brightness 20 (level[k] + 1)
    imgs = np.concatenate([(20 * (level + 1)).astype(np.uint8)[:, None, None, None] * np.ones((12, 1, 8, 8), np.uint8),
                           np.zeros((12, 1, 8, 8), np.uint8)])
    src = ArraySource("toy", "train", ["0", "1"], [0] * 12 + [1] * 12, imgs)
    anchors, rec = class_anchors(src, Brightness(), 0, ds, n=4, mipc=12, seed=0, batch_size=5)
    assert anchors.shape == (4, 1, 8, 8) and anchors.dtype == torch.float32
    assert rec["train_indices"] == np.argsort(-level)[:4].tolist()  # the 4 brightest, brightest first
    assert rec["ce"] == sorted(rec["ce"])
    assert anchors[:, 0, 0, 0].mul(255).round().tolist() == sorted((20 * (level + 1)).tolist(), reverse=True)[:4]
    # of a seeded subset of mipc = 6: the same draw for the same seed, the best 4 of those 6
    _, a = class_anchors(src, Brightness(), 0, ds, n=4, mipc=6, seed=5)
    _, b = class_anchors(src, Brightness(), 0, ds, n=4, mipc=6, seed=5)
    assert a == b and len(set(a["train_indices"])) == 4
    with pytest.raises(ConfigError, match="CIM needs ipc"):
        class_anchors(src, Brightness(), 0, ds, n=13, mipc=300, seed=0)


# -- the record ---------------------------------------------------------------------------------------------------
def test_real_images_cost_and_preflight(tmp_path):
    rec = method_of("cim")
    assert rec.uses_teacher and rec.collective
    assert rec.real_images({"ipc": 3, "factor": 2}, MNIST) == 12  # ipc * factor^2 distinct images per class
    pool = {"models": ["convnet_w32"], "pretrained": None}
    cost = rec.cost({"pool": pool, "mipc": 300, "iterations": 200, "factor": 2}, MNIST, 10)
    score, opt = cost.work
    assert (score.images, score.train, opt.images, opt.train, opt.units) == (3000, False, 10 * 200 * 80, True, 2000)
    for extra, match in [("distill.mipc=7", "distill.mipc=7"), ("distill.factor=1", "factor=1"),
                         ("distill.feature_layer=layer9", "layer9"), ("distill.factor=3", "factor=3")]:
        with pytest.raises(InputError, match=match):
            preflight(compose(FAST + ["distill=cim", "ipc=2", extra], tmp_path))


# -- on mnist5k, through the registry -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A real (weak) teacher: convnet_w32 squeezed 1 epoch on 50 images per digit."""
    tmp = tmp_path_factory.mktemp("teacher")
    return stage_squeeze(Context(compose(FAST, tmp), tmp / "cache"))[0]


def test_synthesis_lowers_the_loss_on_a_real_teacher(teacher):
    from hald.distill.runtime import load_pool_teacher

    net = load_pool_teacher(teacher, MNIST, torch.device("cpu"))
    anchors, _ = class_anchors(build_source(compose(FAST).dataset, "train"), net, 3, MNIST, n=8, mipc=50, seed=0)
    s = CimSettings(iterations=30, flip_p=0.0, log_every=1)
    x, hist = synthesize(lambda b: layer_input(net, "head", b), anchors, 2, MNIST, s, augment=lambda b: b)
    assert hist["loss"][-1] < 0.8 * hist["loss"][0], hist["loss"]
    assert x.shape == (2, 1, 28, 28) and not torch.equal(x, mosaic(anchors, 2))


def _cim_cfg(tmp, *extra):
    return compose(FAST + ["distill=cim", "ipc=2", "distill.iterations=3", "distill.mipc=20", *extra], tmp)


def test_cim_end_to_end_on_mnist5k(tmp_path):
    ctx = Context(_cim_cfg(tmp_path), tmp_path / "cache")
    images_dir, key, reused = stage_distill(ctx, stage_squeeze(ctx))[:3]
    assert not reused
    assert sorted(p.name for p in images_dir.iterdir()) == [f"{c:05d}" for c in range(10)]
    made = load_distilled(images_dir, [str(c) for c in range(10)], 1)
    assert len(made) == 20 and made.ipc == 2 and made.hw == (28, 28)
    manifest = json.loads((images_dir.parent / "manifest.json").read_text())
    assert manifest["method"] == "cim" and manifest["feature_layer"] == "head" and manifest["iterations"] == 3
    units = manifest["units"]
    assert [u["class"] for u in units] == list(range(10))
    assert all(len(u["anchors"]["train_indices"]) == 8 and u["anchors"]["ce"] == sorted(u["anchors"]["ce"])
               and u["iterations"] == 3 and u["first_loss"] > 0 and 0 <= u["clamped_fraction"] <= 1
               and 0 <= u["clamped_mean_abs"] <= 0.03 for u in units)  # |delta| <= 3 steps x lr
    assert (images_dir.parent / "grid.png").is_file()
    # the images are mosaics of the anchors they record: tile 0 of image 0 ~ anchor 0, nearest-downsampled
    source = build_source(ctx.cfg.dataset, "train")
    a0 = source[units[4]["anchors"]["train_indices"][0]][0][0, ::2, ::2].float()
    assert (made.images[8, 0, :14, :14].float() - a0).abs().mean() < 8  # 3 steps of lr 0.01 move little


def test_resume_after_an_interrupted_cim_gives_the_same_files(tmp_path, monkeypatch, teacher):
    source = build_source(compose(FAST).dataset, "train")
    kw = dict(source=source, dataset=MNIST, teachers=[teacher], ipc=1, seed=0, iterations=2, mipc=10,
              trainer_kwargs={"accelerator": "cpu", "enable_progress_bar": False})
    whole = distill_cim(out_dir=tmp_path / "a", **kw)
    calls, real = [], cim_mod.synthesize

    def dies_on_the_fourth(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(cim_mod, "synthesize", dies_on_the_fourth)
    work = tmp_path / "partial"
    with pytest.raises(KeyboardInterrupt):
        distill_cim(out_dir=tmp_path / "b", work_dir=work, **kw)
    assert sorted(p.stem for p in (work / "units").glob("*.json")) == ["c00000", "c00001", "c00002"]
    calls.clear()
    monkeypatch.setattr(cim_mod, "synthesize", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    again = distill_cim(out_dir=tmp_path / "b", work_dir=work, **kw)
    assert len(calls) == 7 and again["units"] == whole["units"]
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 11  # 10 images + the grid
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)


@pytest.mark.slow
def test_cim_shares_classes_over_two_ddp_ranks(teacher, tmp_path):
    """Two CPU processes over gloo: class c on rank c mod 2, the same images as one process (seeded by class)."""
    source = build_source(compose(FAST).dataset, "train")
    kw = dict(source=source, dataset=MNIST, teachers=[teacher], ipc=1, seed=0, iterations=2, mipc=10,
              trainer_kwargs={"accelerator": "cpu", "enable_progress_bar": False})
    two = distill_cim(out_dir=tmp_path / "two", devices=2, **kw)
    one = distill_cim(out_dir=tmp_path / "one", devices=1, **kw)
    assert [(u["class"], u["rank"]) for u in two["units"]] == [(c, c % 2) for c in range(10)]
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.png"))
    assert len(files) == 11
    assert all((tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes() for f in files)
