"""`python src/run.py` in a subprocess, as a user runs it: single run, multirun over slc, DDP on 2 CPUs."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT

SMALL = ["++dataset.train_per_class=100", "teacher.models=[convnet_w32]", "teacher.squeeze.epochs=3",
         "ipc=10", "labels.batch_size=16", "train.epochs=24", "trainer.enable_progress_bar=false"]


def run(args, tmp_path, timeout=600):
    r = subprocess.run([sys.executable, "src/run.py", *args, f"paths.cache_dir={tmp_path}/cache"], cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_run_trains_a_student_far_above_chance(tmp_path):
    r = run([*SMALL, "slc=20", f"hydra.run.dir={tmp_path}/run"], tmp_path)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["top1"] > 50.0, res  # chance is 10%
    assert res["teachers"][0]["top1"] > 70.0
    assert (res["slc"], res["sli"], res["ipc"]) == (20, 2, 10)
    assert "student top-1 / top-5" in r.stdout and "phase timeline" in r.stdout
    metrics = (tmp_path / "run" / "csv").rglob("metrics.csv")
    assert any("val/top1" in m.read_text() for m in metrics)


@pytest.mark.slow
def test_multirun_over_slc_reuses_teacher_and_images(tmp_path):
    r = run(["-m", *SMALL, "train.epochs=2", "slc=10,20", f"hydra.sweep.dir={tmp_path}/sweep", "logger=none"],
            tmp_path)
    log = r.stdout + r.stderr
    assert log.count("squeeze: building") == 1 and log.count("squeeze: reused") == 1
    assert log.count("distill: building") == 1 and log.count("distill: reused") == 1
    assert log.count("relabel: building") == 2
    res = [json.loads((tmp_path / "sweep" / str(i) / "results.json").read_text()) for i in (0, 1)]
    assert [x["sli"] for x in res] == [1, 2]
    assert res[1]["label_bytes"] > res[0]["label_bytes"]  # exact proportionality: test_labels.py


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    r = run([*SMALL, "train.epochs=3", "slc=10", "trainer=ddp_cpu", "logger=none", f"hydra.run.dir={tmp_path}/run"],
            tmp_path)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["phase_audit"] and 0 <= res["top1"] <= 100
    assert "student top-1 / top-5" in r.stdout
