"""Reliability: kill -9 and resume (squeeze, relabel, student training), DDP in every stage, sweeps whose
failed jobs do not stop the others, and faults that end with one line and nothing corrupt left behind.
`make chaos` runs this file."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf
import torch

from conftest import FAST, ROOT
from hald import artifacts, compute, pipeline
from hald.data.distilled import DistilledError, load_distilled, write_imagefolder
from hald.errors import ConfigError, DivergedError

CLI = [a for a in FAST if not a.startswith("teacher.squeeze.epochs")]


def sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def cli(args, timeout=600, env=None, check=True):
    r = subprocess.run([sys.executable, "src/run.py", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def kill_when(args, ready, timeout=300):
    """Start `python src/run.py ARGS`, SIGKILL it as soon as ready() is true; returns what ready() returned."""
    with tempfile.TemporaryFile() as out:
        p = subprocess.Popen([sys.executable, "src/run.py", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        t0 = time.time()
        try:
            while time.time() - t0 < timeout:
                hit = ready()
                if hit:
                    p.send_signal(signal.SIGKILL)
                    p.wait()
                    return hit
                if p.poll() is not None:
                    out.seek(0)
                    raise AssertionError("the run ended before the kill point:\n" + out.read().decode()[-3000:])
                time.sleep(0.02)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    raise AssertionError("kill point not reached")


def leftovers(cache: Path) -> list[str]:
    """Temp files, temp dirs and work dirs anywhere in the cache (none may survive a finished run)."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")
                  if p.name.endswith(".tmp") or ".building." in p.name or p.name.startswith(".partial-"))


# -- kill -9 and resume ------------------------------------------------------------------------------------------
RESUME = [*CLI, "++dataset.train_per_class=100", "teacher.squeeze.epochs=3", "ipc=4", "slc=96",
          "train.epochs=12", "train.resume=true", "logger=csv"]  # relabel: 24 passes; S6: soft 0-2 | hard 3-8 | soft 9-11


@pytest.mark.slow
def test_kill_9_in_squeeze_relabel_and_training_resumes_to_the_uninterrupted_result(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    cli([*RESUME, f"paths.cache_dir={a}/cache", f"hydra.run.dir={a}/run"])
    args = [*RESUME, f"paths.cache_dir={b}/cache", f"hydra.run.dir={b}/run"]
    cache = b / "cache"
    # 1. squeeze, killed once its first epoch is checkpointed
    kill_when(args, lambda: list(cache.glob("squeeze/.partial-*/last.ckpt")))
    assert not list(cache.glob("squeeze/[!.]*"))  # no teacher artifact, only the work dir
    # 2. relabel, killed after 3 of 24 passes
    kill_when(args, lambda: len(list(cache.glob("relabel/.partial-*/units/*.json"))) >= 3)
    assert list(cache.glob("squeeze/*/manifest.json")) and not list(cache.glob("relabel/[!.]*"))
    done_before = {p.name: p.stat().st_ino for p in cache.glob("relabel/.partial-*/pass_*.safetensors")}
    # 3. training, killed mid hard phase (checkpoint of epoch 4 written; hard runs 3-8)
    from hald.train.resume import checkpoint_epoch

    last = b / "run" / "checkpoints" / "last.ckpt"  # renamed into place whole: safe to read while training
    kill_when(args, lambda: last.is_file() and checkpoint_epoch(last) >= 4)
    ck = torch.load(b / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    killed_at = ck["epoch"]  # 4, or 3 when the kill fell between dumping epoch 4 and its atomic rename
    assert 3 <= killed_at < 8, killed_at  # resume starts at killed_at + 1, inside the hard phase (3-8)
    r = cli(args)
    assert "squeeze: reused" in r.stdout + r.stderr and f"resuming from {b / 'run' / 'checkpoints' / 'last.ckpt'}" in (
        r.stdout + r.stderr)
    # every artifact equals the uninterrupted run's byte for byte
    for stage, pattern in (("squeeze", "*/teacher.safetensors"), ("distill", "*/images/*/*.png"),
                           ("relabel", "*/pass_*.safetensors")):
        fa = {p.relative_to(a / "cache" / stage).as_posix(): sha(p) for p in (a / "cache" / stage).glob(pattern)}
        fb = {p.relative_to(cache / stage).as_posix(): sha(p) for p in (cache / stage).glob(pattern)}
        assert fa == fb and fa, stage
    store = next(p for p in cache.glob("relabel/*") if not p.name.startswith("."))
    assert all((store / n).stat().st_ino == ino for n, ino in done_before.items())  # finished passes kept, not redone
    manifest = artifacts.verify(store, deep=True)
    teacher = next(p for p in cache.glob("squeeze/*") if not p.name.startswith("."))  # not the .KEY.lock files
    assert manifest["passes"] == 24 and artifacts.read_manifest(teacher)["resumed"]
    assert leftovers(cache) == []
    # the student: same final metrics, accuracy log and phase audit, and the same final weights
    ra, rb = (json.loads((d / "run" / "results.json").read_text()) for d in (a, b))
    for k in ("top1", "top5", "eval_log", "phase_audit", "schedule"):
        assert ra[k] == rb[k], k
    wa, wb = (torch.load(d / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
              for d in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# -- DDP: two CPU processes over gloo in every stage --------------------------------------------------------------
@pytest.mark.slow
def test_ddp_two_processes_in_every_stage_equal_one_process(tmp_path):
    common = [*CLI, "teacher.squeeze.epochs=1", "distill=sre2l", "distill.iterations=3", "distill.class_chunk=5",
              "ipc=2", "slc=8", "train.epochs=3"]
    d = cli([*common, "trainer=ddp_cpu", f"paths.cache_dir={tmp_path}/ddp", f"hydra.run.dir={tmp_path}/ddp_run"])
    log = d.stdout + d.stderr
    assert "squeeze: building" in log and "distill: building" in log and "relabel: building" in log
    cache = tmp_path / "ddp"
    recover = artifacts.read_manifest(next(p for p in cache.glob("distill/*") if not p.name.startswith(".")))
    assert sorted((u["ipc_index"], u["rank"]) for u in recover["units"]) == [(i, i) for i in (0, 1) for _ in "ab"]
    store = next(p for p in cache.glob("relabel/*") if not p.name.startswith("."))
    ranks = {p.name: json.loads(p.read_text()) for p in store.parent.glob(".partial-*/units/*.json")}
    assert ranks == {}  # work dir removed after the artifact was complete
    squeezed = artifacts.read_manifest(next(p for p in cache.glob("squeeze/*") if not p.name.startswith(".")))
    assert squeezed["world_size"] == 2 and leftovers(cache) == []
    # one process with the DDP teacher: the same recovered images and the same label shards, byte for byte
    teacher = next(cache.glob("squeeze/*/teacher.safetensors"))
    cli([*common, f"teacher.checkpoints=[{teacher}]", "train.epochs=1", f"paths.cache_dir={tmp_path}/one",
         f"hydra.run.dir={tmp_path}/one_run"])
    for stage, pattern in (("distill", "*/images/*/*.png"), ("relabel", "*/pass_*.safetensors")):
        fd = sorted(sha(p) for p in cache.glob(f"{stage}/{pattern}"))
        fo = sorted(sha(p) for p in (tmp_path / "one").glob(f"{stage}/{pattern}"))
        assert fd == fo and fd, stage
    # the student's test accuracy is reduced over both ranks: it equals one process evaluating the whole split
    res = json.loads((tmp_path / "ddp_run" / "results.json").read_text())
    from hald.data.sources import build_source
    from hald.data.transforms import Transformed, eval_transform
    from hald.models import build_backbone
    from conftest import compose

    cfg = compose(FAST)
    net = build_backbone(cfg.model.name, 10, 1, 28)
    state = torch.load(tmp_path / "ddp_run" / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    test = Transformed(build_source(cfg.dataset, "test"), eval_transform(cfg.dataset))
    x = torch.stack([test[i][0] for i in range(len(test))])
    y = torch.tensor([test[i][1] for i in range(len(test))])
    assert res["compute"]["channels_last"]  # evaluated in fp32 (module._update), in the run's layout
    net, x = compute.channels_last(net), compute.as_input(x)
    with torch.no_grad():
        top1 = (net.eval()(x).argmax(1) == y).float().mean().item() * 100
    assert res["top1"] == pytest.approx(top1, abs=1e-4)


# -- sweeps ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_failed_sweep_job_does_not_stop_the_others_and_each_closes_its_wandb_run(tmp_path):
    r = cli(["-m", *CLI, "teacher.squeeze.epochs=1", "train.epochs=1", "slc=10,8", "logger=wandb",
             f"paths.cache_dir={tmp_path}/cache", f"hydra.sweep.dir={tmp_path}/sweep"],
            env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"}, check=False)
    assert r.returncode == 2, r.stderr[-3000:]  # every failure was bad input
    err = json.loads((tmp_path / "sweep" / "0" / "error.json").read_text())
    assert "slc=8 or slc=12" in err["message"] and err["exit_code"] == 2
    assert (tmp_path / "sweep" / "1" / "results.json").is_file()  # the job after the failed one ran
    assert "1 sweep job(s) failed: 0" in r.stderr
    runs = list((tmp_path / "sweep" / "1" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and not (tmp_path / "sweep" / "0" / "wandb").exists()


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        ours = compose("config", ["hydra/launcher=slurm", "trainer=ddp_cpu"], return_hydra_config=True)
        plugin = compose("config", ["hydra/launcher=submitit_slurm"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert ours.hydra.launcher._target_.endswith("SlurmLauncher") and plugin.hydra.launcher._target_ == ours.hydra.launcher._target_
    assert ours.hydra.launcher.tasks_per_node == 2 and ours.hydra.launcher.nodes == 1  # one SLURM task per DDP rank
    assert ours.hydra.launcher.timeout_min == 240
    assert ours.hydra.callbacks.sweep_report._target_ == "hald.sweep.SweepReport"


# -- faults ---------------------------------------------------------------------------------------------------
def one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg and "fix:" in msg, msg
    return msg


def _rgb_folder(root: Path, mode: str = "RGB", n_classes: int = 10, per_class: int = 2) -> Path:
    from PIL import Image

    imgs = (torch.rand(n_classes * per_class, 1, 28, 28) * 255).to(torch.uint8)
    write_imagefolder(root, imgs, torch.arange(n_classes).repeat_interleave(per_class))
    if mode != "L":
        p = next(root.glob("00003/*.png"))
        Image.open(p).convert(mode).save(p)
    return root


@pytest.mark.parametrize("mode, words", [("RGBA", "alpha channel (RGBA)"), ("RGB", "is RGB"), ("LA", "alpha")])
def test_distilled_images_of_the_wrong_kind_are_refused(tmp_path, mode, words):
    root = _rgb_folder(tmp_path / "set", mode)
    with pytest.raises(DistilledError, match=words.replace("(", r"\(").replace(")", r"\)")) as e:
        load_distilled(root, [str(i) for i in range(10)], 1)
    assert "convert" in one_line(e.value)


def test_grayscale_file_in_an_rgb_set_is_refused_and_non_images_are_ignored_with_a_warning(tmp_path, caplog):
    from PIL import Image

    imgs = (torch.rand(6, 3, 8, 8) * 255).to(torch.uint8)
    write_imagefolder(tmp_path / "s", imgs, torch.arange(3).repeat_interleave(2))
    (tmp_path / "s" / "00001" / "notes.txt").write_text("hello")
    (tmp_path / "s" / "00001" / ".DS_Store").write_bytes(b"\0")
    assert len(load_distilled(tmp_path / "s", ["a", "b", "c"], 3)) == 6
    assert "ignored 1 file(s)" in caplog.text and "notes.txt" in caplog.text
    Image.new("L", (8, 8)).save(tmp_path / "s" / "00002" / "gray.png")
    with pytest.raises(DistilledError, match="is L, the dataset has 3"):
        load_distilled(tmp_path / "s", ["a", "b", "c"], 3)


def test_unicode_paths_run_end_to_end(fast_cfg, tmp_path):
    root = _rgb_folder(tmp_path / "données" / "蒸留セット", "L", per_class=4)
    from conftest import compose

    cfg = compose(FAST + ["train.epochs=1", "distill=folder", f"distill.path='{root}'"], tmp_path / "caché ü")
    out = pipeline.run(cfg)
    assert out["ipc"] == 4 and "caché ü" in out["store"]
    artifacts.verify(Path(out["store"]), deep=True)


def test_read_only_cache_is_refused_in_one_line_and_still_reused(fast_cfg, monkeypatch):
    cfg = fast_cfg("train.epochs=1")
    cache = Path(cfg.paths.cache_dir)
    cache.mkdir(parents=True)
    cache.chmod(0o555)
    real = tempfile.mkstemp
    if os.geteuid() == 0:  # root writes anyway: the OS's refusal is injected for paths in the cache

        def refuse(*a, dir=None, **k):
            if dir is not None and Path(dir).is_relative_to(cache):
                raise PermissionError(errno.EACCES, "Permission denied")
            return real(*a, dir=dir, **k)

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    try:
        with pytest.raises(artifacts.ArtifactError, match="cannot write to the cache") as e:
            pipeline.run(cfg)
        assert "paths.cache_dir" in one_line(e.value)
        assert not [p for p in cache.rglob("*") if p.is_file()]  # nothing written
    finally:
        cache.chmod(0o755)
        monkeypatch.undo()
    pipeline.run(cfg)  # once built, a read-only cache is only read
    cache.chmod(0o555)
    try:
        if os.geteuid() == 0:
            monkeypatch.setattr(tempfile, "mkstemp", refuse)
        assert pipeline.run(cfg)["labels_reused"]
    finally:
        cache.chmod(0o755)


def test_cli_unwritable_cache_exits_2_with_one_line(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    r = cli([*CLI, f"paths.cache_dir={tmp_path}/file/cache", f"hydra.run.dir={tmp_path}/run"], timeout=120,
            check=False)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "cannot write to the cache" in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_a_write_that_fails_half_way_leaves_no_file_behind(fast_cfg, monkeypatch):
    from hald.labels import store as store_mod

    real = store_mod.save_file
    calls = []

    def half(tensors, path, metadata=None):  # writes half the bytes, then the disk is full
        calls.append(path)
        if len(calls) == 2:
            real(tensors, path, metadata=metadata)
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[:len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(store_mod, "save_file", half)
    cfg = fast_cfg("train.epochs=1", "slc=12")
    with pytest.raises(OSError, match="No space left"):
        pipeline.run(cfg)
    cache = Path(cfg.paths.cache_dir)
    assert not [p for p in cache.rglob("*.tmp")] and not list(cache.glob("relabel/[!.]*"))
    [partial] = cache.glob("relabel/.partial-*")
    assert sorted(p.name for p in partial.glob("pass_*")) == ["pass_0000.safetensors"]  # the finished pass only
    monkeypatch.undo()
    assert pipeline.run(cfg)["sli"] == 3 and leftovers(cache) == []


def test_a_changed_unit_file_is_computed_again(fast_cfg, monkeypatch):
    from hald.labels import relabel as relabel_mod
    from hald.units import UnitStore

    real = relabel_mod.write_shard
    calls = []

    def dies(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(relabel_mod, "write_shard", dies)
    cfg = fast_cfg("train.epochs=1", "slc=12")
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(cfg)
    [partial] = Path(cfg.paths.cache_dir).glob("relabel/.partial-*")
    shard = partial / "pass_0001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # same size, other content: only the sha256 tells
    shard.write_bytes(bytes(data))
    store = UnitStore(partial)
    assert store.is_done("pass_0000.safetensors", deep=True) and not store.is_done("pass_0001.safetensors", deep=True)
    monkeypatch.undo()
    out = pipeline.run(cfg)
    artifacts.verify(Path(out["store"]), deep=True)


def test_nan_loss_stops_with_one_line_and_a_valid_checkpoint(fast_cfg, monkeypatch):
    from hald.train import losses as losses_mod
    from hald.train import module as module_mod

    real = losses_mod.soft_kl

    def nan_in_epoch_1(logits, *a, **k):
        loss = real(logits, *a, **k)
        return loss * float("nan") if module_mod.StudentModule.current_epoch.fget(nan_in_epoch_1.m) >= 1 else loss

    orig_step = module_mod.StudentModule.training_step

    def step(self, batch, batch_idx):
        nan_in_epoch_1.m = self
        return orig_step(self, batch, batch_idx)

    monkeypatch.setattr(losses_mod, "soft_kl", nan_in_epoch_1)  # what the soft phase's SoftKL calls
    monkeypatch.setattr(module_mod.StudentModule, "training_step", step)
    cfg = fast_cfg("train.epochs=4", "schedule.preset=soft_only")
    with pytest.raises(DivergedError, match="not finite at epoch 1") as e:
        pipeline.run(cfg)
    assert "optimizer.lr" in one_line(e.value)
    ck = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["epoch"] == 0 and all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())
    assert not (Path(cfg.paths.output_dir) / "results.json").exists()


def test_teacher_with_another_class_count_is_refused_before_any_work(fast_cfg, tmp_path):
    from hald.models import build_backbone, save_weights

    ck = tmp_path / "t100.safetensors"
    save_weights(build_backbone("convnet_w32", 100, 1, 28), ck)
    cfg = fast_cfg(f"teacher.checkpoints=[{ck}]")
    with pytest.raises(ConfigError, match="has 100 output classes, dataset mnist5k has 10") as e:
        pipeline.run(cfg)
    one_line(e.value)
    assert not Path(cfg.paths.cache_dir).exists()


def test_images_labels_and_teachers_from_another_dataset_or_class_order_are_detected(fast_cfg, tmp_path):
    from hald.labels.store import open_store_for
    from hald.labels.store import LabelStoreError
    from hald.models.build import check_checkpoint

    out = pipeline.run(fast_cfg("train.epochs=1"))
    digits = [str(i) for i in range(10)]
    with pytest.raises(DistilledError, match="another dataset or class order") as e:
        load_distilled(out["images"], digits[::-1], 1)  # same folder count, other class order
    one_line(e.value)
    images = load_distilled(out["images"], digits, 1)
    cfg = fast_cfg()
    other = dict(OmegaConf.to_container(cfg.dataset, resolve=True), name="fashion")
    with pytest.raises(LabelStoreError, match="dataset='mnist5k'"):
        open_store_for(Path(out["store"]), images, other)
    images.classes = digits[::-1]
    with pytest.raises(LabelStoreError, match="num_classes|classes"):
        open_store_for(Path(out["store"]), images, cfg.dataset)
    teacher = next(Path(cfg.paths.cache_dir).glob("squeeze/*/teacher.safetensors"))
    with pytest.raises(ConfigError, match="trained on mnist5k"):
        check_checkpoint("convnet_w32", teacher, other)
