"""Evaluation and analysis: LRS, LVSD, crop consistency, gradient similarity, report.py, evaluate=fair, and the
paper-scale experiment configs (composed, and one training step each on stand-in data)."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf
from PIL import Image

from conftest import FAST, ROOT, compose
from hald import pipeline
from hald.data.replay import Geometry
from hald.evaluate.consistency import crop_consistency, js_divergence, pair_consistency
from hald.evaluate.fair import lrs, scores
from hald.evaluate.gradsim import gradient_cosine, replayed_hard_targets
from hald.evaluate.lvsd import lvsd, lvsd_from_probs
from hald.train.schedule import make_schedule
from hald.pipeline import student

pytestmark = pytest.mark.usefixtures("one_thread")


# -- fair metrics ---------------------------------------------------------------------------------------------------
def test_lrs_on_known_numbers():
    e = math.e
    assert lrs(0.0, 0.0) == pytest.approx((1 - 1 / e) / (e - 1 / e))  # a = 0: 0.2689
    assert lrs(hlr=0.0, ior=2.0) == pytest.approx(1.0)   # a = 1: the top of the scale
    assert lrs(hlr=2.0, ior=0.0) == pytest.approx(0.0)   # a = -1: the bottom
    s = scores({"real_hard": 0.9, "syn_hard": 0.5, "syn_recipe": 0.8, "random_recipe": 0.7})
    assert s["hlr"] == pytest.approx(0.4) and s["ior"] == pytest.approx(0.1)
    assert s["lrs"] == pytest.approx((math.exp(-0.15) - 1 / e) / (e - 1 / e))  # a = 0.05 - 0.2
    assert lrs(0.4, 0.1, weight=1.0) == pytest.approx((math.exp(0.1) - 1 / e) / (e - 1 / e))


# -- LVSD -----------------------------------------------------------------------------------------------------------
def store_manifest(n_classes=4, sli=5, size=16, temperature=4.0):
    return {"crop": {"size": size, "scale": [0.08, 1.0], "ratio": [0.75, 4 / 3]}, "mean": [0.5], "std": [0.25],
            "temperature": temperature, "flip_p": 0.5, "num_classes": n_classes, "passes": sli}


def images(n=24, size=16, n_classes=4):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g), torch.arange(n) % n_classes


class ConstantNet(nn.Module):
    """Ignores its input: every crop gets the same prediction."""

    def __init__(self, n_classes=4):
        super().__init__()
        self.logits = nn.Parameter(torch.randn(n_classes))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def random_teacher(n_classes=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(128, n_classes))


def test_lvsd_of_a_teacher_that_ignores_the_crop_is_zero():
    x, y = images()
    res = lvsd(ConstantNet(), x, y, store_manifest(), crops=16)
    assert max(res.trace) < 1e-12 and res.drift_at_sli < 1e-12 and max(res.msd) < 1e-12
    assert math.isnan(res.slope)


def test_lvsd_falls_as_one_over_s_on_a_random_teacher():
    x, y = images()
    res = lvsd(random_teacher(), x, y, store_manifest(sli=5), crops=64)
    assert res.trace_mean > 1e-6  # the crops do move the prediction
    assert res.slope == pytest.approx(-1.0, abs=0.12)
    assert res.msd_corrected[0] == pytest.approx(res.trace_mean, rel=0.05)  # s = 1: E = Tr(Sigma) (1 - 1/M)/(1 - 1/M)
    assert res.drift_at_sli == pytest.approx(res.trace_mean / 5)
    assert len(res.trace_per_class) == 4 and np.mean(res.trace_per_class) == pytest.approx(res.trace_mean)


def test_lvsd_trace_is_the_covariance_trace():
    """Constructed predictions: image 0 alternates between two vectors (covariance known), image 1 is fixed."""
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    probs = torch.stack([torch.stack([a, b] * 8), torch.stack([a] * 16)])  # [2, 16, 2]
    res = lvsd_from_probs(probs, torch.tensor([0, 1]), 2, sli=2, sizes=(1, 2))
    # each coordinate is Bernoulli(1/2) over 16 crops: unbiased variance 16/15 * 1/4, two coordinates
    assert res.trace[0] == pytest.approx(2 * 0.25 * 16 / 15) and res.trace[1] == 0.0
    assert res.trace_per_class == pytest.approx([res.trace[0], 0.0])
    # s = 2 averages of alternating crops are exactly the mean: no deviation at all
    assert res.msd[1] == pytest.approx(0.0)


# -- crop consistency -----------------------------------------------------------------------------------------------
def test_js_and_cosine_of_identical_predictions_are_0_and_1_and_of_disjoint_ones_ln2_and_0():
    p = torch.softmax(torch.randn(6, 5), 1)
    same = pair_consistency(p, p.clone(), torch.tensor([0, 0, 1, 1, 2, 2]), 3)
    assert same.js == pytest.approx(0.0, abs=1e-7) and same.cos == pytest.approx(1.0)
    one, other = torch.eye(2)[[0]], torch.eye(2)[[1]]
    assert float(js_divergence(one, other)) == pytest.approx(math.log(2))
    diff = pair_consistency(one, other, torch.tensor([1]), 2)
    assert diff.cos == pytest.approx(0.0) and math.isnan(diff.js_per_class[0]) and diff.js == pytest.approx(math.log(2))


def test_crop_consistency_of_a_crop_blind_model_is_perfect_and_leaves_train_mode():
    x, y = images()
    net = ConstantNet()
    net.train()
    res = crop_consistency(net, x, y, 4, 16, [0.5], [0.25], pairs=2)
    assert res.js == pytest.approx(0.0, abs=1e-7) and res.cos == pytest.approx(1.0) and net.training
    res = crop_consistency(random_teacher(), x, y, 4, 16, [0.5], [0.25], pairs=2)
    assert res.js > 1e-6 and res.cos < 1.0


# -- gradient similarity --------------------------------------------------------------------------------------------
def test_gradient_cosine_on_a_constructed_linear_model():
    net = nn.Linear(2, 2, bias=False)
    x = torch.tensor([[1.0, 0.0]])
    # d z00 / dW = [[1, 0], [0, 0]], d z01 / dW = [[0, 0], [1, 0]]: orthogonal
    assert gradient_cosine(net, x, lambda z: z[0, 0], lambda z: z[0, 1]) == pytest.approx(0.0)
    assert gradient_cosine(net, x, lambda z: z[0, 0], lambda z: 3 * z[0, 0]) == pytest.approx(1.0)
    assert gradient_cosine(net, x, lambda z: z[0, 0], lambda z: -z[0, 0]) == pytest.approx(-1.0)
    assert gradient_cosine(net, x, lambda z: z[0, 0], lambda z: z[0, 0] + z[0, 1]) == pytest.approx(1 / math.sqrt(2))
    assert net.weight.grad is None  # the probe leaves no gradient behind


def test_gradient_probe_leaves_batchnorm_statistics_and_rng_alone():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(8, 3) * 5 + 3
    rng = torch.get_rng_state()
    gradient_cosine(net, x, lambda z: z.sum(), lambda z: (z ** 2).sum())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_replayed_hard_targets_mix_with_the_stored_box():
    g = Geometry(index=torch.arange(2), box=torch.zeros(2, 4, dtype=torch.int16), flip=torch.zeros(2, dtype=torch.bool),
                 mix_perm=torch.tensor([1, 0], dtype=torch.int16), mix_box=torch.tensor([0, 0, 4, 2], dtype=torch.int16))
    t = replayed_hard_targets(torch.tensor([0, 2]), [g], num_classes=3, smoothing=0.0, out_size=4)  # box = half
    assert torch.allclose(t, torch.tensor([[0.5, 0.0, 0.5], [0.5, 0.0, 0.5]]))
    t = replayed_hard_targets(torch.tensor([0, 2]), [g], num_classes=3, smoothing=0.3, out_size=4)
    assert torch.allclose(t.sum(1), torch.ones(2)) and t[0, 1] == pytest.approx(0.1)


@pytest.mark.slow
def test_training_probes_log_without_changing_the_training(fast_cfg):
    on = pipeline.run(fast_cfg("train.grad_sim_every=1", "train.crop_consistency=true"))
    phase_ends = [e for e in range(4) if e + 1 in make_schedule("S6", 4).switches() or e == 3]
    assert [c["epoch"] for c in on["consistency"]] == phase_ends
    assert all(0 <= c["js"] <= math.log(2) and -1 <= c["cos"] <= 1 for c in on["consistency"])
    soft_steps = {g["epoch"] for g in on["grad_sim"]}
    assert on["grad_sim"] and soft_steps <= {0, 3}  # soft epochs only: hard ones have no teacher label
    off = pipeline.run(fast_cfg("train.grad_sim_every=0", "train.crop_consistency=false"))
    assert "consistency" not in off and "grad_sim" not in off
    assert off["eval_log"] == on["eval_log"] and off["top1"] == on["top1"]


# -- report.py ------------------------------------------------------------------------------------------------------
def fake_run(d, schedule, slc, seed, top1, label_bytes, with_lvsd=False):
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml({"schedule": {"preset": schedule}, "slc": slc,
                                                                  "seed": seed}))
    res = {"top1": top1, "top5": 99.0, "label_bytes": label_bytes, "sli": slc // 10, "images": str(d / "none"),
           "schedule": "soft 0-1 | hard 2-5 | soft 6-7" if schedule == "S6" else "soft 0-7",
           "eval_log": [{"epoch": 7, "phase": "soft", "top1": top1, "top5": 99.0}],
           "consistency": [{"epoch": 1, "phase": "soft", "js": 0.2, "cos": 0.7},
                           {"epoch": 5, "phase": "hard", "js": 0.05, "cos": 0.95}],
           "fair": {"seeds": [0, 1], "mean": dict(hlr=0.1, ior=0.02, lrs=0.3, real_hard=0.98, syn_hard=0.88,
                                                   syn_recipe=0.93, random_recipe=0.91),
                    "std": dict(hlr=0.01, ior=0.01, lrs=0.01)}}
    (d / "results.json").write_text(json.dumps(res))
    (d / "csv" / "version_0").mkdir(parents=True)
    rows = ["epoch,step,train/loss_soft,train/loss_hard,val/top1"]
    rows += [f"{e},{e},{'' if schedule == 'S6' and 2 <= e <= 5 else 1.0 / (e + 1)},"
             f"{2.0 / (e + 1) if schedule == 'S6' and 2 <= e <= 5 else ''},{50 + e}" for e in range(8)]
    (d / "csv" / "version_0" / "metrics.csv").write_text("\n".join(rows) + "\n")
    noise = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(d / "distilled_grid.png")
    if with_lvsd:
        sizes = [1, 2, 4, 8, 16]
        (d / "lvsd.json").write_text(json.dumps({"sizes": sizes, "msd": [0.1 / s for s in sizes], "msd_corrected":
                                                 [0.1 / s for s in sizes], "predicted": [0.1 / s for s in sizes],
                                                 "slope": -1.0, "sli": 2, "crops": 64, "trace_mean": 0.1,
                                                 "drift_at_sli": 0.05}))


def test_report_on_a_fake_multirun(tmp_path):
    sweep = tmp_path / "multirun"
    job = 0
    for schedule, top1 in (("S6", 90.0), ("soft_only", 80.0)):
        for slc, nbytes in ((10, 5000), (20, 10000)):
            for seed in (0, 1):
                fake_run(sweep / str(job), schedule, slc, seed, top1 + slc / 10 + seed, nbytes, with_lvsd=job == 0)
                job += 1
    r = subprocess.run([sys.executable, "src/report.py", str(sweep)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    md = (sweep / "report" / "report.md").read_text()
    assert "| S6 | 10 | 2 | 91.50 ± 0.71 |" in md  # seeds 0, 1: 91, 92
    assert "| soft_only | 20 | 2 | 82.50 ± 0.71 |" in md
    assert "0.3000 ± 0.0100" in md and "e1:soft 0.200 → e5:hard 0.050" in md and "| 0 | 2 | 64 |" in md
    for png in ("accuracy_vs_bytes.png", "timeline_S6.png", "timeline_soft_only.png", "lvsd_0.png",
                "distilled_grid.png"):
        assert (sweep / "report" / png).stat().st_size > 1000 and f"]({png})" in md, png


# -- evaluate=fair end to end ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluate_fair_reports_lrs_and_reuses_its_trainings(fast_cfg, caplog):
    cfg = fast_cfg("evaluate=fair", "evaluate.protocol.seeds=[0,1]", "evaluate.real.epochs=1", "evaluate.hard.epochs=2",
                   "train.crop_consistency=false")
    out = pipeline.run(cfg)
    fair = out["fair"]
    assert fair["seeds"] == [0, 1] and len(fair["per_seed"]) == 2
    for row in fair["per_seed"]:
        assert all(0 <= row[k] <= 1 for k in ("real_hard", "syn_hard", "syn_recipe", "random_recipe"))
        assert row["lrs"] == pytest.approx(lrs(row["real_hard"] - row["syn_hard"],
                                               row["syn_recipe"] - row["random_recipe"]))
    seed0 = fair["per_seed"][0]
    assert seed0["syn_recipe"] == pytest.approx(out["top1"] / 100)  # the run's own training at its own seed
    # distill=random at seed 0 *is* the random subset of seed 0: same images, same labels, same student
    assert seed0["random_recipe"] == seed0["syn_recipe"] and seed0["ior"] == 0
    assert fair["mean"]["lrs"] == pytest.approx(np.mean([r["lrs"] for r in fair["per_seed"]]))
    saved = json.loads((pipeline.Path(cfg.paths.output_dir) / "results.json").read_text())
    assert saved["fair"]["mean"]["hlr"] == pytest.approx(fair["mean"]["hlr"])
    caplog.clear()
    with caplog.at_level("INFO", logger="hald"):
        again = pipeline.run(cfg)
    # seed 0: 3 trainings (its recipe entry is the run itself), seed 1: 4
    assert "fair: building" not in caplog.text and caplog.text.count("fair: reused") == 7
    assert again["fair"]["per_seed"][1] == fair["per_seed"][1]


# -- paper-scale experiment configs -------------------------------------------------------------------------------
PAPER = ["hald_tiny_slc50", "hald_tiny_slc100", "hald_in1k_slc50", "hald_in1k_slc100", "hald_in1k_285mb", "cvdd_tiny", "cvdd_in1k"]


@pytest.mark.parametrize("name", PAPER)
def test_paper_config_values(name, tmp_path):
    cfg = compose([f"experiment={name}", "trainer=gpu"], tmp_path)
    assert (cfg.train.epochs, cfg.train.soft_batch_size, cfg.train.hard_batch_size) == (300, 16, 16)
    ipc = 50 if name.endswith("285mb") else 10
    assert (cfg.labels.batch_size, cfg.labels.temperature, cfg.ipc) == (16, 20, ipc)
    assert cfg.trainer.accelerator == "gpu" and cfg.soft_loss.t2 is False
    assert cfg.trainer.precision == "32-true"  # fp32 as the official code, also under trainer=gpu
    assert cfg.dataset.name == ("tiny_imagenet" if "tiny" in name else "imagenet1k")
    assert cfg.model.name == ("resnet18_cifar" if "tiny" in name else "resnet18_tv")  # the official students
    sched = make_schedule(cfg.schedule.preset, cfg.train.epochs, cfg.schedule.soft_fraction)
    if name.startswith("hald"):
        assert cfg.slc == {"50": 50, "00": 100, "mb": 150}[name[-2:]]
        assert sched.timeline() == "soft 0-74 | hard 75-224 | soft 225-299"
        assert student.resolve_lr(cfg, ipc) == ((1e-3, 2.0) if ipc == 10 else (1e-3, 1.0))  # the paper's table
        assert cfg.optimizer.on_phase_switch == "keep" and cfg.hard_loss.temperature == 1  # the paper's hard CE
    else:
        assert sched.timeline() == "soft 0-299" and cfg.slc == 3000 and cfg.labels.teacher_mode == "bssl"
        d = cfg.distill
        assert (d.method, d.iterations, d.lr, d.r_bn, d.committee.size, d.committee.mode) == \
            ("cvdd", 4000, 0.25, 0.01, 2, "pairs")
        assert d.jitter == (4 if "tiny" in name else 32) and d.init == "rded"


def standin(tmp_path, tiny: bool):
    """A 3-class stand-in in the dataset's on-disk layout, 12 train and 2 test images per class."""
    g = np.random.default_rng(0)
    root = tmp_path / ("tiny-imagenet-200" if tiny else "imagenet")
    wnids = ["n01443537", "n01629819", "n01641577"]
    img = lambda c: Image.fromarray((g.random((64, 64, 3)) * 80 + 60 * c).astype("uint8"))  # noqa: E731
    ann = []
    for c, w in enumerate(wnids):
        train = root / "train" / w / ("images" if tiny else "")
        train.mkdir(parents=True)
        for k in range(12):
            img(c).save(train / f"{w}_{k}.JPEG")
        val = root / "val" / ("images" if tiny else w)
        val.mkdir(parents=True, exist_ok=True)
        for k in range(2):
            img(c).save(val / f"val_{c}_{k}.JPEG")
            ann.append(f"val_{c}_{k}.JPEG\t{w}\t0\t0\t63\t63")
    if tiny:
        (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
        (root / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER)
def test_paper_config_trains_one_step_on_standin_data(name, tmp_path):
    """The experiment as composed, with only what needs the real data or days of compute replaced: the data
    root (a 3-class stand-in), the teacher (one squeeze epoch of a small ConvNet instead of a pretrained or
    200-epoch ResNet), recover iterations and pool (CV-DD), SLC (CV-DD's 3000), and one training step."""
    tiny = "tiny" in name
    over = [f"experiment={name}", f"dataset.root={standin(tmp_path, tiny)}", "dataset.num_classes=3", "ipc=2",
            "teacher.models=[convnet_w32]", "teacher.pretrained=null", "teacher.squeeze.epochs=1",
            "teacher.squeeze.batch_size=12", "teacher.squeeze.num_workers=0", "labels.num_workers=0",
            "train.num_workers=0", "train.eval_batch_size=8", "train.crop_consistency=false", "logger=none",
            "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "++trainer.max_steps=1",
            "++trainer.limit_test_batches=1", "++trainer.limit_val_batches=1"]
    if name.startswith("cvdd"):
        over += ["slc=4", "distill.iterations=1", "distill.pool.models=[convnet_w32,convnet_w32]",
                 "distill.pool.pretrained=null", "distill.priors=[60,40]"]
    cfg = compose(over, tmp_path)
    out = pipeline.run(cfg)
    assert out["phase_audit"] == {0: ["soft"]} and 0 <= out["top1"] <= 100
    assert out["sli"] == cfg.slc // 2 and out["ipc"] == 2


def test_loss_landscape_filter_normalised_centre_and_untouched(tmp_path):
    from hald.evaluate.landscape import filter_normalised_direction, loss_landscape
    from hald.evaluate.plots import landscape_plot
    from hald.models.build import build_backbone

    torch.manual_seed(0)
    net = build_backbone("convnet_w32", 10, 1, 28).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    d = filter_normalised_direction(net, torch.Generator().manual_seed(1))
    for name, w in net.named_parameters():
        if w.dim() < 2:
            assert not d[name].any()  # biases and norm affines stay fixed
        else:  # every filter of the direction has the norm of the weights' filter
            torch.testing.assert_close(d[name].flatten(1).norm(dim=1), w.detach().flatten(1).norm(dim=1))
    x, y = torch.randn(40, 1, 28, 28), torch.randint(0, 10, (40,))
    res = loss_landscape(net, x, y, steps=5, span=0.5, seed=3)
    with torch.no_grad():
        z = net(x)
    assert res["loss"][2][2] == pytest.approx(float(torch.nn.functional.cross_entropy(z, y)), rel=1e-5)
    assert res["top1"][2][2] == pytest.approx(100.0 * float((z.argmax(1) == y).float().mean()))
    assert len(res["loss"]) == 5 and res["coords"][0] == -0.5
    assert res["loss"][0][0] != res["loss"][2][2]  # the plane actually moves the weights
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # the network is untouched
    assert res == loss_landscape(net, x, y, steps=5, span=0.5, seed=3)  # seeded
    with pytest.raises(ValueError, match="fix:"):
        loss_landscape(net, x, y, steps=1)
    assert landscape_plot(res, tmp_path / "l.png").stat().st_size > 0


def test_loss_landscape_cli_on_a_run_dir(tmp_path, fast_cfg):
    """`python -m hald.evaluate.landscape RUN_DIR` reads the run's config, results and last.ckpt."""
    from hald.evaluate.landscape import main as landscape_main
    from hald.models.build import build_backbone

    cfg = fast_cfg()
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    OmegaConf.save(OmegaConf.create({"dataset": OmegaConf.to_container(cfg.dataset, resolve=True),
                                     "model": OmegaConf.to_container(cfg.model, resolve=True)}),
                   run / ".hydra" / "config.yaml")
    (run / "results.json").write_text(json.dumps({"schedule": "soft 0-1", "sli": 1, "top1": 10.0}))
    net = build_backbone(cfg.model.name, 10, 1, 28)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, run / "checkpoints" / "last.ckpt")
    landscape_main([str(run), "--steps", "3", "--samples", "20"])
    res = json.loads((run / "landscape.json").read_text())
    assert res["samples"] == 20 and len(res["top1"]) == 3 and (run / "landscape.png").stat().st_size > 0


def test_fair_hard_labels_are_plain_cross_entropy(fast_cfg):
    """DD-Ranking's hard-label training: no smoothing, no CutMix and T = 1, whatever the run's hard phase uses."""
    from hald.pipeline.fair import hard_labels

    cfg = fast_cfg("evaluate=fair")
    assert cfg.hard_loss.temperature == cfg.soft_loss.temperature == 20  # the pipeline's default hard phase
    changes = hard_labels(cfg, 7)
    assert changes["hard_loss.temperature"] == 1.0 and changes["hard_loss.label_smoothing"] == 0.0
    assert changes["hard_loss.cutmix_alpha"] == 0.0 and changes["schedule.preset"] == "hard_only"
