"""Synthesis building blocks: the BN-statistics term, the recover objective on a real teacher, committees and
voter weights, RDED selection, bad configs, resume after an interrupted recover, and recover over two DDP ranks.
The methods inside the pipeline (priors, distill=cvdd end to end, DDP): test_synthesis.py."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import FAST, compose
from hald import artifacts, pipeline
from hald.data.sources import ArraySource, build_source
from hald.distill import recover as recover_mod
from hald.distill.bn_matching import BNStatistics
from hald.distill.committee import CommitteeSchedule, voter_weights
from hald.distill.recover import distill_recover
from hald.distill.rded import best_crops, random_crops, select_class, stitch
from hald.errors import ConfigError, InputError
from hald.models import build_backbone, save_weights
from hald.pipeline.cache import Context
from hald.pipeline.preflight import preflight
from hald.pipeline.stages import stage_distill, stage_squeeze

MNIST = {"name": "mnist5k", "num_classes": 10, "channels": 1, "input_size": 28, "mean": [0.1307], "std": [0.3081]}
pytestmark = pytest.mark.usefixtures("one_thread")


# -- the BN-statistics term ---------------------------------------------------------------------------------
def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())


def _running_stats_of(net, x):
    """Running statistics := the biased batch statistics of x at every layer (built, not learnt)."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0
    net.train()
    with torch.no_grad():
        net(x)
    n = x.shape[0] * x.shape[2] * x.shape[3]
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.mul_((n - 1) / n)  # PyTorch keeps the unbiased variance; the loss uses the biased one
    return net.eval()


def test_bn_term_is_zero_when_the_batch_statistics_equal_the_running_ones():
    x = torch.randn(8, 3, 10, 10) * 2 + 1
    net = _running_stats_of(_net(), x)
    stats = BNStatistics(net, first_multiplier=10)
    net(x)
    assert stats.pop().item() == pytest.approx(0.0, abs=1e-4)
    # The second layer's input does not depend on its own running stats: moving them by 1 per channel costs
    # exactly ||1||_2 = sqrt(6) (s = 1 there).
    net[4].running_mean += 1
    net(x)
    assert stats.pop().item() == pytest.approx(math.sqrt(6), rel=1e-4)
    net[4].running_mean -= 1
    # The first BatchNorm counts 10x: same shift, multiplier 10 vs 1 differs by 9 * sqrt(4) on that layer.
    net[1].running_mean += 1
    net(x)
    ten = stats.pop().item()
    stats.remove()
    one = BNStatistics(net, first_multiplier=1)
    net(x)
    assert ten - one.pop().item() == pytest.approx(9 * math.sqrt(4), rel=1e-4)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A real (weak) teacher: convnet_w32 squeezed 2 epochs on 50 images per digit."""
    tmp = tmp_path_factory.mktemp("teacher")
    return stage_squeeze(Context(compose(FAST + ["teacher.squeeze.epochs=2"], tmp), tmp / "cache"))[0]


def test_recover_lowers_the_bn_term_and_the_ce_on_a_real_teacher(teacher):
    from hald.distill.runtime import load_pool_teacher

    net = load_pool_teacher(teacher, MNIST, torch.device("cpu"))
    s = recover_mod.RecoverSettings(iterations=150, jitter=4, flip_p=0.0, log_every=1)
    torch.manual_seed(0)
    lo, hi = (0 - 0.1307) / 0.3081, (1 - 0.1307) / 0.3081
    x0, y = torch.randn(10, 1, 28, 28).clamp(lo, hi), torch.arange(10)
    x, hist = recover_mod.recover_unit([net], torch.ones(1), x0, y, MNIST, s)
    early, late = slice(0, 10), slice(-10, None)  # the logged terms are on jittered crops: average a few
    assert np.mean(hist["bn"][late]) < 0.5 * np.mean(hist["bn"][early]), hist["bn"]
    assert np.mean(hist["ce"][late]) < np.mean(hist["ce"][early]), hist["ce"]
    with torch.no_grad():  # on the images themselves (a weak 2-epoch teacher: its logits stay small)
        ce0, ce1 = (torch.nn.functional.cross_entropy(net(v), y).item() for v in (x0, x))
        assert ce1 < 0.75 * ce0 and (net(x).argmax(1) == y).float().mean() >= 0.8
    assert x.min() >= lo - 1e-6 and x.max() <= hi + 1e-6  # clamped to the valid pixel range


# -- committees ---------------------------------------------------------------------------------------------
def test_voter_weights_are_softmax_of_priors_over_five():
    w = voter_weights([64.0, 51.6])  # CV-DD's CIFAR-100 pair (R18, SV2): 0.92 / 0.08
    assert w.tolist() == pytest.approx([0.9227, 0.0773], abs=1e-4)
    a = [63.0, 65.3, 68.5]
    expect = np.exp(np.array(a) / 5) / np.exp(np.array(a) / 5).sum()
    assert voter_weights(a).tolist() == pytest.approx(expect.tolist(), rel=1e-5)
    # over the chosen committee only: members 0 and 2 of the pool
    sched = CommitteeSchedule(["a", "b", "c"], 2, "fixed", ["a", "c"], priors=a)
    assert sched.weights(0).tolist() == pytest.approx(voter_weights([63.0, 68.5]).tolist())
    assert CommitteeSchedule(["a", "b"], 2, "fixed", weighting="equal").weights(3).tolist() == [0.5, 0.5]


def test_committee_modes_fixed_pairs_random():
    pool = ["convnet", "resnet", "mobilenet", "shufflenet"]
    fixed = CommitteeSchedule(pool, 2, "fixed", ["mobilenet", 0], weighting="equal")
    assert all(fixed.members(i) == [2, 0] for i in range(7))
    pairs = CommitteeSchedule(pool, 2, "pairs", weighting="equal")
    order = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert [tuple(pairs.members(i)) for i in range(6)] == order
    assert tuple(pairs.members(6)) == order[0] and tuple(pairs.members(13)) == order[1]  # wraps, never crashes
    rnd = CommitteeSchedule(pool, 2, "random", seed=3, weighting="equal")
    draws = [rnd.members(i) for i in range(40)]
    assert all(len(set(d)) == 2 and d == sorted(d) for d in draws)
    assert draws == [CommitteeSchedule(pool, 2, "random", seed=3, weighting="equal").members(i) for i in range(40)]
    assert draws != [CommitteeSchedule(pool, 2, "random", seed=4, weighting="equal").members(i) for i in range(40)]
    assert set(sum(draws, [])) == {0, 1, 2, 3} and len({tuple(d) for d in draws}) > 3


@pytest.mark.parametrize("kwargs, match", [
    ({"size": 4, "mode": "pairs", "weighting": "equal"}, "committee.size=4"),
    ({"size": 2, "mode": "vote", "weighting": "equal"}, "committee.mode=vote"),
    ({"size": 2, "mode": "fixed", "fixed": ["a", "zzz"], "weighting": "equal"}, "not in the pool"),
    ({"size": 2, "mode": "pairs", "weighting": "prior"}, "need the teachers' priors"),
])
def test_bad_committees_are_one_line_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match) as e:
        CommitteeSchedule(["a", "b", "c"], **kwargs)
    assert "fix:" in str(e.value) and "\n" not in str(e.value)


def test_bad_recover_config_stops_in_preflight(tmp_path):
    for extra, match in [("distill.committee.size=5", "committee.size=5"), ("distill.init=zeros", "distill.init"),
                         ("distill.rded.factor=5", "factor=5")]:
        with pytest.raises(InputError, match=match):
            preflight(compose(FAST + ["distill=cvdd", extra], tmp_path))


# -- RDED ----------------------------------------------------------------------------------------------------
class Brightness(nn.Module):
    """A constructed teacher: the logit of class 0 is 10 x the mean pixel, so CE to class 0 falls as a crop
    gets brighter; the best crop of an image is its brightest one."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([10 * self.w * m, torch.zeros_like(m)], 1)


def _glyphs(n=12, size=16):
    """Class-0 images j: dark, with a bright square whose brightness grows with j; class 1 images black."""
    g = np.random.default_rng(0)
    imgs = np.zeros((2 * n, 1, size, size), np.uint8)
    for j in range(n):
        y, x = g.integers(0, size // 2, 2)
        imgs[j, 0, y:y + size // 2, x:x + size // 2] = 20 * (j + 1)
    return ArraySource("toy", "train", ["0", "1"], [0] * n + [1] * n, imgs)


def test_rded_keeps_each_images_best_crop_and_the_best_images():
    ds = {"num_classes": 2, "channels": 1, "input_size": 16, "mean": [0.0], "std": [1.0]}
    src = _glyphs()
    torch.manual_seed(0)
    crops = torch.stack([random_crops(src[j][0], 6, 16, (0.1, 1.0)) for j in range(12)])
    best, ce = best_crops(Brightness(), crops, 0, ds)
    means = crops.mean(dim=(2, 3, 4))
    assert torch.equal(best, crops[torch.arange(12), means.argmax(1)])  # lowest CE = brightest crop
    # ranking: uniform images of shuffled brightness; the three brightest are kept, brightest first
    level = np.random.default_rng(1).permutation(12)
    flat = ArraySource("toy", "train", ["0", "1"], [0] * 12 + [1] * 12,
                       np.concatenate([np.full((12, 1, 16, 16), 0, np.uint8) + (20 * (level + 1))[:, None, None, None]
                                       .astype(np.uint8), np.zeros((12, 1, 16, 16), np.uint8)]))
    images, rec = select_class(flat, Brightness(), 0, ds, ipc=3, seed=0, factor=1, mipc=12, num_crops=6,
                               crop_scale=(0.1, 1.0), batch_size=7)
    assert images.shape == (3, 1, 16, 16) and images.dtype == torch.uint8
    assert rec["ce"] == sorted(rec["ce"])
    assert rec["train_indices"] == np.argsort(-level)[:3].tolist()
    assert images[:, 0, 0, 0].tolist() == sorted((20 * (level + 1)).tolist(), reverse=True)[:3]


def test_stitch_places_ranked_crops_row_by_row():
    tiles = torch.arange(1, 9, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 1, 4, 4)
    out = stitch(tiles, factor=2, size=8)  # RDED's mix_images: tile k of image i = ranked crop k * M + i
    assert out.shape == (2, 1, 8, 8)
    assert [out[0, 0, 0, 0], out[0, 0, 0, 7], out[0, 0, 7, 0], out[0, 0, 7, 7]] == [1, 3, 5, 7]
    assert [out[1, 0, 0, 0], out[1, 0, 0, 7], out[1, 0, 7, 0], out[1, 0, 7, 7]] == [2, 4, 6, 8]


# -- resume --------------------------------------------------------------------------------------------------
def _random_teacher(path):
    torch.manual_seed(0)
    save_weights(build_backbone("convnet_w32", 10, 1, 28), path)
    return path


def _recover_cfg(tmp, ck):
    return compose(FAST + ["distill=sre2l", f"teacher.checkpoints=[{ck}]", "ipc=3", "distill.iterations=4",
                           "distill.class_chunk=4"], tmp)


def test_resume_after_an_interrupted_recover_gives_the_same_files(tmp_path, monkeypatch):
    ck = _random_teacher(tmp_path / "t.safetensors")
    # uninterrupted
    cfg_a = _recover_cfg(tmp_path / "a", ck)
    ctx_a = Context(cfg_a, tmp_path / "a" / "cache")
    dir_a, key_a, _ = stage_distill(ctx_a, stage_squeeze(ctx_a))
    # killed after 4 of 9 units (3 IPC indices x 3 class chunks)
    calls = []
    real = recover_mod.recover_unit

    def dies_on_the_fifth(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(recover_mod, "recover_unit", dies_on_the_fifth)
    cfg_b = _recover_cfg(tmp_path / "b", ck)
    ctx_b = Context(cfg_b, tmp_path / "b" / "cache")
    teachers = stage_squeeze(ctx_b)
    with pytest.raises(KeyboardInterrupt):
        stage_distill(ctx_b, teachers)
    partial = tmp_path / "b" / "cache" / "distill" / f".partial-{key_a}"
    markers = sorted((partial / "units").glob("*.json"))
    assert len(markers) == 4 and not artifacts.is_complete(tmp_path / "b" / "cache" / "distill" / key_a)
    units = [json.loads(m.read_text()) for m in markers]
    assert [(u["ipc_index"], u["chunk"]) for u in units] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    finished = {}  # relative path -> (inode, mtime) of every image of a finished unit
    for u in units:
        for c in u["classes"]:
            p = partial / "images" / f"{c:05d}" / f"{u['ipc_index']:05d}.png"
            finished[p.relative_to(partial / "images")] = (p.stat().st_ino, p.stat().st_mtime_ns)
    assert len(finished) == 4 + 4 + 2 + 4  # class chunks of 4, 4 and 2
    # started again: only the 5 missing units run, finished ones are never rewritten
    calls.clear()
    monkeypatch.setattr(recover_mod, "recover_unit", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    dir_b, key_b, reused = stage_distill(ctx_b, teachers)
    assert key_b == key_a and not reused and len(calls) == 5
    assert not partial.exists()  # promoted (hard links) into the artifact, then removed
    assert all(((dir_b / f).stat().st_ino, (dir_b / f).stat().st_mtime_ns) == v for f, v in finished.items())
    files_a = sorted(p.relative_to(dir_a) for p in dir_a.rglob("*.png"))
    assert files_a == sorted(p.relative_to(dir_b) for p in dir_b.rglob("*.png")) and len(files_a) == 30
    assert all((dir_a / f).read_bytes() == (dir_b / f).read_bytes() for f in files_a)


@pytest.mark.slow
def test_recover_shares_ipc_indices_over_two_ddp_ranks(teacher, tmp_path):
    """Two CPU processes over gloo (Lightning Fabric, ddp_spawn): IPC index i runs on rank i mod 2, and the
    images equal a one-process run's (units are seeded by (seed, IPC index, chunk), not by rank)."""
    source = build_source(compose(FAST).dataset, "train")
    kw = dict(source=source, dataset=MNIST, teachers=[teacher], method="sre2l", ipc=4, seed=0, iterations=3,
              flip_p=0.0, class_chunk=5, trainer_kwargs={"accelerator": "cpu", "enable_progress_bar": False})
    two = distill_recover(out_dir=tmp_path / "two", devices=2, **kw)
    one = distill_recover(out_dir=tmp_path / "one", devices=1, **kw)
    assert sorted((u["ipc_index"], u["rank"]) for u in two["units"]) == [(i, i % 2) for i in range(4) for _ in "ab"]
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.png"))
    assert len(files) == 41  # 40 images + the grid
    assert all((tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes() for f in files)


def test_recover_and_rded_report_progress_as_log_lines_when_stdout_is_a_file(tmp_path, monkeypatch, caplog):
    """No terminal (a SLURM log): recover's units and RDED's scoring each give Ticker lines (console.py)."""
    import logging

    monkeypatch.setenv("HALD_PROGRESS_EVERY", "0")
    ck = _random_teacher(tmp_path / "t.safetensors")
    cfg = compose(FAST + ["distill=sre2lpp", f"teacher.checkpoints=[{ck}]", "ipc=2", "distill.iterations=3",
                          "distill.class_chunk=5", "trainer.enable_progress_bar=true"], tmp_path)
    ctx = Context(cfg, tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="hald"):
        stage_distill(ctx, stage_squeeze(ctx))
    lines = [r.getMessage() for r in caplog.records]
    recover = [ln for ln in lines if ln.startswith("recover: ") and " iterations (" in ln]
    assert recover and recover[-1].startswith("recover: 12/12 iterations (100%)") and "ce " in recover[-1], lines
    assert any(ln.startswith("rded: scoring crops: 10/10 (100%)") for ln in lines), lines
