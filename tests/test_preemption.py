"""SIGTERM (SLURM preemption, scancel): the run exits 143 with how to resume, leaves no temp file, and resumes."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import FAST, ROOT


def test_sigterm_during_export_leaves_no_temp_file(tmp_path, monkeypatch):
    """The run's handler (hald/app.py) raises Terminated in the main thread, so atomic_write removes its temp file
    (the default handler killed the process with a 0-byte .student.safetensors.*.tmp left behind)."""
    from hald import app
    from hald.errors import Terminated
    from hald.models import build, build_backbone
    from hald.train.export import export_student

    real = build.save_file

    def killed_mid_write(state, path):
        real(state, path)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the temp file exists
        time.sleep(5)

    monkeypatch.setattr(build, "save_file", killed_mid_write)
    previous = signal.signal(signal.SIGTERM, app._terminate)
    try:
        with pytest.raises(Terminated):
            export_student(build_backbone("convnet_w32", 10, 1, 28), tmp_path, "convnet_w32",
                           {"channels": 1, "input_size": 28, "mean": [0.1], "std": [0.3]}, [str(c) for c in range(10)])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the weights nor a temp file


@pytest.mark.slow
def test_sigterm_mid_training_exits_143_says_how_to_resume_and_the_resume_finishes(tmp_path):
    args = [*FAST, "train.epochs=40", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    log = tmp_path / "out.log"
    with open(log, "w") as out:
        p = subprocess.Popen([sys.executable, "src/run.py", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                             env=env)
        ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
        t0 = time.time()
        while not ckpt.exists() and p.poll() is None and time.time() - t0 < 300:
            time.sleep(0.2)
        time.sleep(1.0)
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=120)
    text = log.read_text()
    assert rc == 143, text[-3000:]
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "SIGTERM" in errors[0] and "train.resume=true" in errors[0], text[-2000:]
    assert f"hydra.run.dir={tmp_path / 'run'}" in errors[0] and "Traceback" not in text
    assert not (tmp_path / "run" / "results.json").exists()
    assert not [p for p in (tmp_path / "run").rglob("*.tmp")]
    r = subprocess.run([sys.executable, "src/run.py", *args, "train.resume=true"], cwd=ROOT, capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming from" in r.stdout + r.stderr and (tmp_path / "run" / "results.json").is_file()
