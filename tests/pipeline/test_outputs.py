"""What a run prints and leaves for the next tool: a quiet console, progress in log files, files others can
read, a student usable outside hald, and W&B runs worth opening (read back from the offline run files)."""
from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FAST, ROOT
from hald import pipeline

CLI = [a for a in FAST if a not in ("logger=none",)]


def cli(args, env=None, timeout=600):
    r = subprocess.run([sys.executable, "src/run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def where(tmp: Path, run: str = "run") -> list[str]:
    return [f"paths.cache_dir={tmp / 'cache'}", f"hydra.run.dir={tmp / run}"]


@pytest.mark.slow
def test_a_run_prints_stages_phase_switches_and_results_without_library_chatter(tmp_path):
    # 30 epochs: 30 checkpoint saves, each of which used to print two lines
    r = cli([*CLI, "logger=none", "train.epochs=30", *where(tmp_path)])
    out = r.stdout + r.stderr
    lines = out.splitlines()
    assert len(lines) <= 80, f"{len(lines)} lines:\n" + out[-4000:]
    for chatter in ("weights_only", "checkpoint after epoch", "GPU available", "Tip:", "INFO: "):
        assert chatter not in out, chatter
    assert "squeeze: building" in out and "relabel: building" in out
    switches = [ln for ln in lines if "phase switch" in ln]
    assert len(switches) == 2 and all("test top-1" in ln for ln in switches), switches
    assert "student top-1 / top-5" in out


@pytest.mark.slow
def test_progress_is_logged_as_lines_when_stdout_is_not_a_terminal(tmp_path):
    r = cli([*CLI, "logger=none", "trainer.enable_progress_bar=true", *where(tmp_path)],
            env={"HALD_PROGRESS_EVERY": "0"})  # every batch: the cadence itself is a parameter
    lines = r.stdout.splitlines()
    student = [ln for ln in lines if "student epoch" in ln]
    assert student and all("it/s" in ln and "ETA" in ln for ln in student), student[:3]
    assert any("squeeze convnet_w32 epoch 1/1" in ln for ln in lines)
    assert any("relabel predict" in ln for ln in lines)
    assert not [ln for ln in lines if ln.startswith(("Epoch ", "Testing", "Predicting"))]  # no live bars in a file


def test_written_files_get_the_permissions_of_a_plain_open(fast_cfg):
    """A lab shares its cache and run dirs: nothing may be left at mkstemp's / mkdtemp's 0600 / 0700."""
    old = os.umask(0o022)
    try:
        cfg = fast_cfg("train.epochs=1")
        pipeline.run(cfg)
    finally:
        os.umask(old)
    roots = [Path(cfg.paths.cache_dir), Path(cfg.paths.output_dir)]
    seen = 0
    for root in roots:
        for p in root.rglob("*"):
            mode = stat.S_IMODE(p.stat().st_mode)
            want = 0o755 if p.is_dir() else 0o644
            assert mode == want, f"{p}: {oct(mode)} (want {oct(want)})"
            seen += 1
    assert seen > 20


def test_the_exported_student_loads_with_timm_alone(fast_cfg):
    import timm
    from safetensors.torch import load_file

    import hald.models  # noqa: F401  (registers hald's small-resolution backbones with timm)

    cfg = fast_cfg("train.epochs=2")
    out = pipeline.run(cfg)
    run = Path(out["output_dir"])
    meta = json.loads((run / "student.json").read_text())
    # the three lines of the README
    net = timm.create_model(meta["backbone"], **meta["timm_kwargs"])
    net.load_state_dict(load_file(str(run / meta["weights"])))
    net.eval()
    assert meta["classes"] == [str(i) for i in range(10)] and meta["input_size"] == 28
    assert meta["mean"] == list(cfg.dataset.mean) and meta["top1"] == pytest.approx(out["top1"])
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    ref = hald.models.build_backbone(cfg.model.name, 10, 1, 28)
    ref.load_state_dict({k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")})
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(net(x), ref.eval()(x))


# -- W&B, read back from the offline run files ---------------------------------------------------------------
def wandb_records(run_dir: Path) -> list:
    """Records of an offline `.wandb` file (a LevelDB-style log of protobuf records: 32 KiB blocks, each record
    a 7-byte header crc/length/type, types full=1, first=2, middle=3, last=4)."""
    from wandb.proto import wandb_internal_pb2 as pb

    [f] = run_dir.glob("run-*.wandb")
    data, pos, block, out, buf = f.read_bytes(), 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind == 0:
            break
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
    return out


def wandb_run(run_dir: Path) -> dict:
    run, config, summary, files = None, {}, {}, set()
    for r in wandb_records(run_dir):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run = r.run
            config.update({u.key: json.loads(u.value_json) for u in r.run.config.update})
        elif kind == "config":
            config.update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "summary":
            summary.update({(u.key or ".".join(u.nested_key)): json.loads(u.value_json) for u in r.summary.update})
        elif kind == "files":
            files.update(f.path for f in r.files.files)
    return {"id": run.run_id, "name": run.display_name, "group": run.run_group, "config": config,
            "summary": summary, "files": files}


@pytest.mark.slow
def test_a_wandb_run_has_its_name_config_summary_and_lineage_and_resume_continues_it(tmp_path):
    args = [*CLI, "logger=many", "train.epochs=4", "label_budget=5KB", *where(tmp_path)]
    cli(args, env={"WANDB_MODE": "offline"})
    cli([*args[:-1], "train.epochs=6", "train.resume=true", "train.resume_across=[train.epochs]", args[-1]],
        env={"WANDB_MODE": "offline"})
    first, second = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    a, b = wandb_run(first), wandb_run(second)
    assert a["id"] == b["id"] and a["name"] == b["name"]  # one W&B run, continued
    assert a["name"] == "hald-mnist5k-random-ipc4-budget5KB-fp16-eval-S6-convnet_w32-seed0"
    assert a["group"] == "mnist5k"
    for key in ("dataset", "model", "teacher", "distill", "labels", "seed", "train", "optimizer", "lineage"):
        assert key in a["config"], key
    assert a["config"]["train"]["epochs"] == 4 and a["config"]["labels"]["codec"]["name"] == "float"
    assert set(a["config"]["lineage"]) == {"teachers", "images", "labels"}
    assert ".hydra/config.yaml" in a["files"]
    s = b["summary"]
    assert s["top1"] > 0 and "convnet_w32" in str(s.get("teachers", s.get("teachers.convnet_w32")))
    assert any(k.startswith("timings_s") for k in s) and "phase/switch_epoch" in s
    # one CSV history across the resume
    [version] = (tmp_path / "run" / "csv").iterdir()
    rows = (version / "metrics.csv").read_text().splitlines()
    epochs = {line.split(",")[0] for line in rows[1:]}
    assert version.name == "version_0" and len(rows) > 6 and epochs


@pytest.mark.slow
def test_the_runs_of_a_sweep_have_distinct_names_and_one_group(tmp_path):
    cli(["-m", *CLI, "logger=wandb", "train.epochs=2", "label_budget=5KB,6KB", f"paths.cache_dir={tmp_path / 'c'}",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"], env={"WANDB_MODE": "offline"})
    runs = [wandb_run(d) for d in sorted((tmp_path / "sweep").glob("*/wandb/offline-run-*"))]
    assert len(runs) == 2 and runs[0]["name"] != runs[1]["name"]
    assert runs[0]["group"] == runs[1]["group"] == "sweep-sweep"
