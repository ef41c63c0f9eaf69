"""conf/compute: precision per stage, channels-last, compile. What a user relies on: a named choice resolves to
what the device can run (or stops with the cause and the fix before any work), fp32 keys stay the keys from
before the choice existed, the papers' presets stay fp32, the layout does not change the numbers beyond float
rounding, and every run says how its arithmetic ran."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import FAST, ROOT, compose
from hald import artifacts, compute
from hald.errors import ConfigError
from hald.models import build_backbone
from hald.pipeline.cache import compute_settings, dataset_identity, training_identity
from hald.pipeline.stages import relabel_config


@pytest.mark.parametrize("native, device, want", [(True, "cpu", "bf16-mixed"), (False, "cpu", "32-true"),
                                                  (True, "cuda", "bf16-mixed"), (False, "cuda", "16-mixed")])
def test_fast_resolves_to_what_the_device_runs(monkeypatch, native, device, want):
    monkeypatch.setattr(compute, "native_bf16", lambda d: native)
    assert compute.resolve("fast", "gpu" if device == "cuda" else "cpu", "compute.student") == want
    # recover has no gradient scaler: never float16, fp32 where bf16 is not native
    assert compute.resolve("fast", "gpu" if device == "cuda" else "cpu", "compute.recover") == (
        "bf16-mixed" if native else "32-true")


@pytest.mark.parametrize("key, value, accel, match", [
    ("compute.student", "16-mixed", "cpu", r"16-mixed needs a CUDA GPU.*fix: compute.student=bf16-mixed"),
    ("compute.recover", "16-mixed", "gpu", r"without a gradient scaler.*fix: compute.recover=bf16-mixed"),
    ("compute.relabel", "half", "cpu", r"compute.relabel=half is not a precision; fix: one of 32-true"),
])
def test_a_choice_the_device_cannot_run_is_one_line_with_the_fix(key, value, accel, match):
    with pytest.raises(ConfigError, match=match):
        compute.resolve(value, accel, key)


def test_a_bad_precision_stops_before_any_stage(tmp_path):
    r = subprocess.run([sys.executable, "src/run.py", *FAST, "compute.student=16-mixed",
                        f"paths.cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/out"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "compute.student=16-mixed needs a CUDA GPU" in r.stderr + r.stdout
    assert not (tmp_path / "cache" / "squeeze").exists()  # nothing built


def test_fp32_keys_are_the_keys_from_before_the_choice(tmp_path):
    """A cache made before conf/compute existed (fp32) is still found by compute=fp32; a mixed-precision
    stage gets a key of its own."""
    fp32, fast = compose(["compute=fp32"], tmp_path), compose(["compute=fast", "compute.relabel=bf16-mixed",
                                                               "compute.student=bf16-mixed"], tmp_path)
    old_labels = {k: v for k, v in relabel_config(fp32).items()}
    assert "precision" not in old_labels
    assert relabel_config(fast) == {**old_labels, "precision": "bf16-mixed"}
    assert "precision" not in training_identity(fp32)
    assert training_identity(fast)["precision"] == "bf16-mixed"
    ds = dataset_identity(fp32.dataset)
    from hald.pipeline.stages import with_precision
    sq = fp32.teacher.squeeze
    assert artifacts.key_of(ds, "convnet_w64", sq, 0, *with_precision("32-true")) == artifacts.key_of(ds, "convnet_w64", sq, 0)
    assert artifacts.key_of(ds, "convnet_w64", sq, 0, *with_precision("bf16-mixed")) != artifacts.key_of(ds, "convnet_w64", sq, 0)


def test_paper_presets_are_fp32_and_the_projects_defaults_fast(tmp_path):
    own = {"imagenet1k_ipc10", "tiny_imagenet_ipc10"}  # the project's training defaults on a paper dataset
    for p in sorted((ROOT / "conf" / "experiment").glob("*.yaml")):
        cfg = compose([f"experiment={p.stem}"], tmp_path)
        stages = {cfg.compute[s] for s in ("squeeze", "relabel", "recover", "student")}
        if p.stem in own:
            assert cfg.compute.name == "fast", p.stem
        else:
            assert stages == {"32-true"} and cfg.trainer.precision == "32-true", p.stem
    cfg = compose([], tmp_path)
    assert (cfg.compute.name, cfg.trainer.precision, cfg.compute.channels_last) == ("fast", "fast", True)


def test_channels_last_changes_the_layout_not_the_numbers():
    torch.manual_seed(0)
    net = build_backbone("resnet18_small", 10, 3, 32).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = net(compute.as_input(x, False))
        compute.channels_last(net)
        y = net(compute.as_input(x, True))
    assert compute.as_input(x, True).is_contiguous(memory_format=torch.channels_last)
    assert net.conv1.weight.is_contiguous(memory_format=torch.channels_last) if hasattr(net, "conv1") else True
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)  # float rounding of another kernel order only


def test_bf16_autocast_runs_the_convolutions_in_bf16_and_keeps_fp32_weights():
    net = build_backbone("resnet18_small", 10, 3, 32)
    with compute.autocast("bf16-mixed", "cpu"):
        y = net(torch.randn(2, 3, 32, 32))
    assert y.dtype == torch.bfloat16 and next(net.parameters()).dtype == torch.float32
    with compute.autocast("32-true", "cpu"):
        assert net(torch.randn(2, 3, 32, 32)).dtype == torch.float32


def test_a_run_records_how_its_arithmetic_ran(tmp_path):
    """results.json `compute` (each stage's resolved precision) and the label store made in bf16 stays close to
    the fp32 one of the same teacher and images."""
    outs = {}
    for name, extra in (("fp32", ["compute=fp32"]), ("bf16", ["compute=fp32", "compute.relabel=bf16-mixed",
                                                               "compute.student=bf16-mixed"])):
        r = subprocess.run([sys.executable, "src/run.py", *FAST, *extra, f"paths.cache_dir={tmp_path}/cache",
                            f"hydra.run.dir={tmp_path}/{name}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        outs[name] = json.loads((tmp_path / name / "results.json").read_text())
        assert f"relabel {outs[name]['compute']['relabel']}" in r.stderr + r.stdout  # the one line it prints
    assert outs["fp32"]["compute"]["relabel"] == "32-true" and outs["fp32"]["compute"]["channels_last"] is True
    assert outs["bf16"]["compute"] == {**outs["fp32"]["compute"], "relabel": "bf16-mixed", "student": "bf16-mixed"}
    assert outs["bf16"]["teachers"][0]["reused"]  # the same fp32 teacher and images ...
    assert outs["bf16"]["store"] != outs["fp32"]["store"]  # ... and a store of its own
    from hald.labels.store import LabelStore
    a, b = (LabelStore.open(outs[k]["store"]) for k in ("fp32", "bf16"))
    p = torch.cat([a[r].labels for r in range(len(a))]).double()
    q = torch.cat([b[r].labels for r in range(len(b))]).double()
    kl = (p * (p.clamp_min(1e-12).log() - q.clamp_min(1e-12).log())).sum(1)
    assert float(kl.mean()) < 1e-3 and float((p.argmax(1) == q.argmax(1)).double().mean()) >= 0.95


def test_compute_settings_lists_every_stage(tmp_path):
    s = compute_settings(compose(["compute=fp32", "trainer.accelerator=cpu"], tmp_path))
    assert s == {"squeeze": "32-true", "recover": "32-true", "relabel": "32-true", "student": "32-true",
                 "channels_last": True, "compile": False}


@pytest.mark.slow
def test_compiled_student_trains_under_ddp_and_resumes(tmp_path):
    """compute.compile=true: two gloo ranks train a compiled teacher and student; a resume of the finished run with more
    epochs continues from its checkpoint (parameter names unchanged by nn.Module.compile)."""
    args = [*FAST, "compute.compile=true", "train.epochs=2", "train.checkpoint_every=1", "trainer=ddp_cpu",
            "trainer.devices=2", f"paths.cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/run"]
    r = subprocess.run([sys.executable, "src/run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    first = json.loads((tmp_path / "run" / "results.json").read_text())
    assert first["compute"]["compile"] is True and "student: torch.compile on" in r.stdout + r.stderr
    assert "squeeze: torch.compile on" in r.stdout + r.stderr  # the teacher's steps too
    r = subprocess.run([sys.executable, "src/run.py", *args[:-1], "train.epochs=3", "train.resume=true",
                        "train.resume_across=[train.epochs]", f"hydra.run.dir={tmp_path}/run"], cwd=ROOT,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    again = json.loads((tmp_path / "run" / "results.json").read_text())
    assert again["resumed"]["from_epoch"] == 1 and [e["epoch"] for e in again["eval_log"]][-1] == 2
