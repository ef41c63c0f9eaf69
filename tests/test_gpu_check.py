"""`make gpu-check` on a machine without a GPU: it runs the CPU rows, writes the table and names what it skipped."""
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_gpu_check_runs_on_cpu_and_says_what_it_skipped(tmp_path):
    out = tmp_path / "gpu-check.md"
    r = subprocess.run([sys.executable, "-m", "hald_tools.gpu_check", "--quick", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    assert "replay on cpu vs host pixels" in text and "max 0.00 levels" in text  # the same code path on a CPU
    for row in ("student step resnet18", "relabel forward resnet18", "32-true, NCHW", "32-true, channels-last",
                "bench 1:", "bench 2:", "bench 3:"):
        assert row in text, row
    assert "Skipped: every row on a GPU" in text and "16-mixed steps (float16 autocast needs a CUDA GPU)" in text
