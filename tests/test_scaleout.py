"""The documented scale-out paths, run for real on two CPU ranks (gloo): torchrun, and SLURM's srun (its
environment simulated: two processes started with the variables srun gives its tasks). Each run has a
timeout, so a hang fails the test, and its artifacts are compared with a one-process run's."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAST, ROOT

pytestmark = pytest.mark.slow
ARGS = [a for a in FAST if not a.startswith("teacher.squeeze.epochs")] + ["teacher.squeeze.epochs=1",
                                                                            "train.epochs=3"]
TIMEOUT = 420


def env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "LOCAL_RANK", "WORLD_SIZE",
                                                                         "MASTER_"))}
    return {**clean, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", **extra}


def where(tmp: Path, run: str) -> list[str]:
    return [f"paths.cache_dir={tmp / 'cache'}", f"hydra.run.dir={tmp / run}"]


def artifacts_of(cache: Path) -> dict[str, list[str]]:
    return {stage: sorted(p.name for p in (cache / stage).iterdir() if not p.name.startswith("."))
            for stage in ("squeeze", "distill", "relabel") if (cache / stage).is_dir()}


def one_process_reuses_everything(tmp: Path) -> str:
    r = subprocess.run([sys.executable, "src/run.py", *ARGS, *where(tmp, "single")], cwd=ROOT, capture_output=True,
                       text=True, timeout=TIMEOUT, env=env())
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout + r.stderr


def test_torchrun_on_two_ranks_runs_every_stage_without_hanging(tmp_path):
    before = artifacts_of(tmp_path / "cache")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29561",
                        "src/run.py", *ARGS, "trainer=ddp_cpu", *where(tmp_path, "ddp")], cwd=ROOT,
                       capture_output=True, text=True, timeout=TIMEOUT, env=env())
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert (tmp_path / "ddp" / "results.json").is_file() and before == {}
    assert out.count("phase switch") == 2  # S6 over 3 epochs switches twice: logged by rank 0 only
    made = artifacts_of(tmp_path / "cache")
    assert all(made[s] for s in ("squeeze", "distill", "relabel"))
    # A one-process run of the same config finds the same artifacts: teacher, images and labels are the same
    # keys, and the label store (pass p is seeded by p alone) the same bytes.
    log = one_process_reuses_everything(tmp_path)
    assert "distill: reused" in log and "relabel: reused" in log and artifacts_of(tmp_path / "cache") == made


def test_slurm_srun_tasks_form_one_world(tmp_path):
    """Two processes with the variables srun sets for a 2-task job step on one node."""
    base = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
            "SLURM_NODELIST": "localhost", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "hald", "SLURM_STEP_ID": "0"}
    procs = [subprocess.Popen([sys.executable, "src/run.py", *ARGS, "trainer=ddp_cpu", *where(tmp_path, "slurm")],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env(**base, SLURM_PROCID=str(i), SLURM_LOCALID=str(i)))
             for i in range(2)]
    try:
        outs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
    assert (tmp_path / "slurm" / "results.json").is_file()
    assert "relabel: building" in outs[0] and "relabel: building" not in outs[1]  # rank 1 stays quiet


def test_a_sweep_through_hydras_submitit_local_launcher(tmp_path):
    """The launcher plugin SLURM sweeps go through (submitit), run locally: two jobs, two results."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    r = subprocess.run([sys.executable, "src/run.py", "-m", "hydra/launcher=submitit_local", *ARGS, "slc=8,12",
                        "hydra.launcher.timeout_min=10", f"paths.cache_dir={tmp_path / 'cache'}",
                        f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=TIMEOUT, env=env())
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    import json

    results = [json.loads((tmp_path / "sweep" / str(i) / "results.json").read_text()) for i in (0, 1)]
    assert [res["slc"] for res in results] == [8, 12]
    assert len(list((tmp_path / "cache" / "squeeze").glob("[!.]*"))) == 1  # the teacher made once, then reused
