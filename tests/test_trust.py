"""Nothing read back is trusted unchecked: stores and teachers passed in, reused cache entries, checkpoints,
and every input that can be known bad before any work starts. One test per check."""
from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict
import torch

from hald import artifacts, pipeline
from hald.artifacts import ArtifactError
from hald.data.distilled import DistilledError
from hald.errors import ConfigError, DivergedError, InputError
from hald.labels.store import LabelStoreError


def one_line(e: BaseException) -> None:
    assert "\n" not in str(e) and "fix:" in str(e), str(e)


@pytest.fixture
def made(fast_cfg):
    """A finished run at labels.temperature=4 whose images and store can be passed in."""
    return pipeline.run(fast_cfg("train.epochs=1", "labels.temperature=4"))


def passed_in(made) -> list[str]:
    return ["distill=folder", f"distill.path={made['images']}", f"labels.store={made['store']}"]


# -- a label store passed in -------------------------------------------------------------------------------------
def test_a_store_passed_in_gives_the_soft_loss_its_temperature(fast_cfg, made):
    from hydra.utils import instantiate

    from hald.pipeline.preflight import adopt_store, preflight

    cfg = fast_cfg("train.epochs=1", *passed_in(made))
    assert cfg.soft_loss.temperature == 20  # the config's default ...
    adopted = adopt_store(cfg, preflight(cfg).store)  # the run's one explicit step (pipeline.run)
    assert adopted.soft_loss.temperature == adopted.labels.temperature == adopted.hard_loss.temperature == 4
    phases = instantiate(adopted.student.phases)  # ... reaches the losses the run trains with
    assert phases["soft"].loss.temperature == phases["hard"].loss.temperature == 4
    assert cfg.soft_loss.temperature == 20  # pre-flight changed nothing
    out = pipeline.run(cfg)
    # what was used is recorded: the store's settings, not the config's defaults
    used = json.loads((Path(out["output_dir"]) / "results.json").read_text())["label_settings"]
    assert used["temperature"] == 4 and used["teacher_mode"] == "eval" and used["batch_size"] == 8
    assert used["codec"] == out["codec"] and used["crop"]["scale"] == [0.08, 1.0] and used["mix"]["type"]
    from hald.evaluate.summary import summary_rows

    row = dict(summary_rows(out))["labels made with"]
    assert row.startswith("T=4, teacher eval") and "crop 28 px scale [0.08, 1.0]" in row, row


@pytest.mark.parametrize("claim, match", [("soft_loss.temperature=20", "T=4"),
                                          ("labels.temperature=20", "labels.temperature=4"),
                                          ("labels.batch_size=16", "labels.batch_size=8"),
                                          ("labels.teacher_mode=bssl", "labels.teacher_mode=eval"),
                                          ("slc=4", "made with slc=8, the command line says 4"),
                                          ("codec=topk", "labels.codec=name=float,dtype=float16"),
                                          ("labels.codec.dtype=float32", "labels.codec=name=float,dtype=float16"),
                                          ("label_budget=5KB", "label_budget=None")])
def test_a_command_line_that_contradicts_the_store_stops_before_any_work(fast_cfg, made, tmp_path, claim, match):
    fresh = tmp_path / "fresh"
    cfg = fast_cfg("train.epochs=1", *passed_in(made), claim, f"paths.cache_dir={fresh}")
    with pytest.raises(ConfigError, match=match) as e:
        pipeline.run(cfg)
    one_line(e.value)
    assert not fresh.exists()


def test_a_store_passed_in_fixes_slc_and_codec_when_the_command_line_leaves_them(fast_cfg, made, tmp_path):
    from hald.pipeline.preflight import adopt_store, preflight

    from conftest import FAST, compose

    cfg = compose([o for o in FAST if not o.startswith("slc=")] + ["train.epochs=1", *passed_in(made)], tmp_path)
    assert cfg.slc == 50  # the config's default, not stated on the command line
    with open_dict(cfg):
        cfg.labels.codec = {"name": "topk", "k": 3, "rest": "renorm"}  # as a preset would compose it
    adopted = adopt_store(cfg, preflight(cfg).store)
    assert adopted.slc == 8 and OmegaConf.to_container(adopted.labels.codec) == {"name": "float", "dtype": "float16"}


def test_a_store_passed_in_needs_no_teacher(fast_cfg, made, tmp_path):
    fresh = tmp_path / "fresh"
    out = pipeline.run(fast_cfg("train.epochs=1", *passed_in(made), f"paths.cache_dir={fresh}"))
    assert out["teachers"] == [] and not (fresh / "squeeze").exists()


def test_a_store_edited_by_hand_is_refused_when_passed_in(fast_cfg, made):
    mf = Path(made["store"]) / "manifest.json"
    m = json.loads(mf.read_text())
    m["passes"] = m["sli"] = 1  # 2 passes claimed as 1: would train on half the labels and report another SLC
    mf.write_text(json.dumps(m))
    with pytest.raises(LabelStoreError, match="does not match its seal") as e:
        pipeline.run(fast_cfg("train.epochs=1", *passed_in(made)))
    one_line(e.value)
    assert "delete" not in str(e.value)  # the user's own files: no advice to delete them


# -- reused cache entries ------------------------------------------------------------------------------------------
def flip_a_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x40  # same size: a check on sizes alone passes
    path.write_bytes(bytes(data))


def test_a_cached_teacher_with_a_flipped_byte_is_rebuilt(fast_cfg, caplog):
    cfg = fast_cfg("train.epochs=1")
    pipeline.run(cfg)
    [teacher] = Path(cfg.paths.cache_dir).glob("squeeze/*/teacher.safetensors")
    flip_a_byte(teacher)
    with caplog.at_level(logging.WARNING, logger="hald"):
        pipeline.run(fast_cfg("train.epochs=1"))
    assert any("failed its check, rebuilding" in r.getMessage() and "sha256" in r.getMessage() for r in caplog.records)
    artifacts.verify(teacher.parent, deep=True)  # the rebuilt one is intact


def test_a_changed_distilled_image_of_the_same_size_is_noticed(fast_cfg, caplog):
    cfg = fast_cfg("train.epochs=1")
    first = pipeline.run(cfg)
    png = sorted(Path(first["images"]).rglob("*.png"))[3]
    flip_a_byte(png, offset=png.stat().st_size - 20)  # inside the last chunk
    with caplog.at_level(logging.WARNING, logger="hald"):
        again = pipeline.run(fast_cfg("train.epochs=1"))
    assert any("distill: cached" in r.getMessage() for r in caplog.records)
    assert again["images"] == first["images"] and again["top1"] == pytest.approx(first["top1"])


def test_a_cached_manifest_edited_by_hand_is_rebuilt(fast_cfg, caplog):
    cfg = fast_cfg("train.epochs=1", "slc=12")
    first = pipeline.run(cfg)
    mf = Path(first["store"]) / "manifest.json"
    m = json.loads(mf.read_text())
    m["passes"] = m["sli"] = 1
    mf.write_text(json.dumps(m, indent=2))
    with caplog.at_level(logging.WARNING, logger="hald"):
        again = pipeline.run(fast_cfg("train.epochs=1", "slc=12"))
    assert any("relabel: cached" in r.getMessage() and "seal" in r.getMessage() for r in caplog.records)
    assert again["sli"] == 3 and again["slc"] == 12
    assert artifacts.read_manifest(Path(again["store"]))["passes"] == 3


def test_a_manifest_without_a_valid_seal_is_an_artifact_error(tmp_path):
    artifacts.finish(tmp_path, "squeeze", "k", {})
    artifacts.read_manifest(tmp_path)
    m = json.loads((tmp_path / "manifest.json").read_text())
    m.pop(artifacts.SEAL)
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="no seal"):
        artifacts.read_manifest(tmp_path)


# -- non-finite values are refused where they are written or loaded -----------------------------------------------
def test_a_teacher_checkpoint_with_nan_weights_is_refused(fast_cfg, tmp_path):
    from hald.models import build_backbone, save_weights

    net = build_backbone("convnet_w32", 10, 1, 28)
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] = float("nan")
    ck = tmp_path / "nan.safetensors"
    save_weights(net, ck)
    with pytest.raises(ConfigError, match="non-finite") as e:
        pipeline.run(fast_cfg("train.epochs=1", f"teacher.checkpoints=[{ck}]"))
    one_line(e.value)
    assert not [p for p in (Path(fast_cfg().paths.cache_dir) / "relabel").glob("[!.]*")]


def test_nan_soft_labels_are_never_written(fast_cfg, monkeypatch):
    from hald.labels import relabel as relabel_mod

    real = relabel_mod.label_groups
    monkeypatch.setattr(relabel_mod, "label_groups", lambda *a: [torch.full_like(p, float("nan")) for p in real(*a)])
    cfg = fast_cfg("train.epochs=1")
    with pytest.raises(DivergedError, match="not finite"):
        pipeline.run(cfg)
    cache = Path(cfg.paths.cache_dir) / "relabel"
    assert not [p for p in cache.glob("[!.]*")]  # no store marked complete
    assert not list(cache.rglob("*.safetensors"))  # and no finished pass to resume from


# -- checkpoints -----------------------------------------------------------------------------------------------------
def test_a_truncated_checkpoint_is_set_aside_and_the_run_starts_over(fast_cfg, caplog):
    cfg = fast_cfg("train.epochs=2")
    pipeline.run(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        out = pipeline.run(fast_cfg("train.epochs=2", "train.resume=true"))
    assert any("is unreadable" in r.getMessage() for r in caplog.records)
    assert (ckpt.parent / "last.ckpt.unreadable").is_file() and out["top1"] > 0
    torch.load(ckpt, map_location="cpu", weights_only=False)  # a good one again


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(fast_cfg, monkeypatch):
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    real, calls = TorchCheckpointIO.save_checkpoint, {"n": 0, "saved": None}

    def full_disk(self, checkpoint, path, storage_options=None):
        calls["n"] += 1
        if calls["n"] == 3:  # the third save: half a file, then the disk is full
            Path(path).write_bytes(b"\x00" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        calls["saved"] = checkpoint["epoch"]
        return real(self, checkpoint, path, storage_options)

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", full_disk)
    cfg = fast_cfg("train.epochs=4")
    with pytest.raises(OSError, match="No space left on device") as e:
        pipeline.run(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert str(ckpt) in str(e.value)  # the error names the file
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"] == calls["saved"]  # the last good one
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.ckpt"]  # no temp file left
    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", real)
    assert pipeline.run(fast_cfg("train.epochs=4", "train.resume=true"))["top1"] > 0


# -- inputs known bad before any work ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, key", [("ipc=0", "ipc=0"), ("teacher.squeeze.epochs=-1", "teacher.squeeze.epochs"),
                                      ("train.epochs=-5", "train.epochs"), ("labels.batch_size=0", "labels.batch_size")])
def test_counts_that_cannot_work_name_their_key(fast_cfg, bad, key):
    cfg = fast_cfg(bad)
    with pytest.raises(InputError, match=key) as e:
        pipeline.run(cfg)
    one_line(e.value)
    assert not Path(cfg.paths.cache_dir).exists()


@pytest.mark.parametrize("method", ["random", "rded"])
def test_a_method_short_of_real_images_stops_before_the_squeeze(fast_cfg, method):
    cfg = fast_cfg(f"distill={method}", "ipc=60", "slc=60")  # 50 train images per digit
    with pytest.raises(ConfigError, match="has 50") as e:
        pipeline.run(cfg)
    one_line(e.value)
    assert not Path(cfg.paths.cache_dir).exists()


@pytest.mark.parametrize("method, extra", [("random", []), ("rded", []), ("rded", ["distill.factor=4"]),
                                           ("sre2lpp", ["distill.rded.factor=4"]),
                                           ("rded", ["distill.factor=14", "ipc=1"]),
                                           ("sre2lpp", ["distill.rded.factor=14", "ipc=1"])])
def test_the_fix_for_too_few_real_images_is_a_setting_that_works(fast_cfg, method, extra):
    """The fix names a value the user can type (never ipc<=0), and that value passes the same check."""
    import re

    from hald.pipeline.preflight import preflight

    cfg = fast_cfg(f"distill={method}", "ipc=60", "slc=60", *extra)
    with pytest.raises(ConfigError, match="has 50") as e:
        preflight(cfg)
    fix = re.search(r"fix: (\S+)=(\S+)", str(e.value))
    assert fix and fix.group(2) not in ("0", "<=0"), str(e.value)
    key, value = fix.group(1), fix.group(2)
    assert int(value) >= 1
    slc = [f"slc={value}"] if key == "ipc" else []  # slc stays a multiple of ipc
    preflight(fast_cfg(f"distill={method}", "ipc=60", "slc=60", *extra, f"{key}={value}", *slc))  # passes


def test_an_added_unknown_nested_key_is_refused(fast_cfg):
    with pytest.raises(ConfigError, match="train.fooo") as e:
        pipeline.run(fast_cfg("+train.fooo=1"))
    one_line(e.value)


def test_a_distilled_folder_with_uneven_classes_is_refused(fast_cfg, made, tmp_path):
    import shutil

    folder = tmp_path / "uneven"
    shutil.copytree(made["images"], folder)
    next((folder / "00003").iterdir()).unlink()  # 3 images in class 3, 4 in the others
    with pytest.raises(DistilledError, match="uneven classes") as e:
        pipeline.run(fast_cfg("train.epochs=1", "distill=folder", f"distill.path={folder}"))
    one_line(e.value)


def test_a_full_disk_while_writing_a_shard_names_the_shard(fast_cfg, monkeypatch):
    from hald.labels import store as store_mod

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod, "save_file", full)
    with pytest.raises(OSError, match=r"pass_0000\.safetensors"):
        pipeline.run(fast_cfg("train.epochs=1"))


def test_a_bad_input_is_printed_once_as_one_line(tmp_path):
    import subprocess
    import sys

    from conftest import FAST, ROOT

    r = subprocess.run([sys.executable, "src/run.py", *FAST, "ipc=0", f"paths.cache_dir={tmp_path / 'c'}",
                        f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    hits = [ln for ln in (r.stdout + r.stderr).splitlines() if "ipc=0 must be a positive integer" in ln]
    assert hits == ["error: ipc=0 must be a positive integer; fix: ipc=1 or more"], r.stdout + r.stderr
    assert "ipc=0 must be" in (tmp_path / "run" / "run.log").read_text()  # and it is in the job's log file


def test_loader_workers_are_capped_at_the_cpus_and_said_once(monkeypatch, caplog):
    """A paper's 8 workers on a 2-CPU machine: 2, one line (PyTorch would warn twice per loader); on a big
    node the paper's number stays."""
    from hald import dist

    monkeypatch.setattr(dist.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(dist, "_workers_said", set())
    with caplog.at_level(logging.INFO, logger="hald"):
        assert dist.loader_workers(8, "squeeze resnet18") == 2
        assert dist.loader_workers(8, "squeeze resnet18") == 2
        assert dist.loader_workers(1, "relabel") == 1
    said = [r.getMessage() for r in caplog.records if "loader workers asked" in r.getMessage()]
    assert said == ["squeeze resnet18: 8 loader workers asked, this process has 2 CPUs: using 2 (the count does "
                    "not change results)"]
    monkeypatch.setattr(dist.os, "sched_getaffinity", lambda pid: set(range(16)))
    assert dist.loader_workers(8, "squeeze resnet18") == 8
