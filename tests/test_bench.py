"""`make bench`: the goals table follows the measurements, and every data-path benchmark runs (tiny sizes)."""
import pytest
import torch

from hald_tools import bench


def test_goals_table_follows_the_measurements():
    replay = [{"px": 224, "ratio (vs torchvision uint8)": 1.6}, {"px": 64, "ratio (vs torchvision uint8)": 1.4},
              {"px": 32, "ratio (vs torchvision uint8)": 1.0}]
    relabel = [{"ratio": 3.2}, {"ratio": 2.0}]
    epochs = [{"rendering": "host (loader)", "soft/hard": 0.98}, {"rendering": "device", "soft/hard": 1.02}]
    text = bench.goals({"replay": replay, "relabel": relabel, "epochs": epochs})
    rows = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in text.splitlines()
            if line.startswith("| ") and "benchmark" not in line}
    assert list(rows.values()) == ["yes", "no", "yes", "yes", "yes", "no"]  # 64 px below 1.5x; device epoch > 1
    assert ">= 1.5x" in text and ">= 1.0x" in text and "1.60x" in text and "0.98" in text
    assert "rendering on host" in text and "rendering on device" in text
    replay[1]["ratio (vs torchvision uint8)"], epochs[1]["soft/hard"] = 1.5, 1.0
    assert "| no |" not in bench.goals({"replay": replay, "relabel": relabel, "epochs": epochs})


def test_replay_benchmark_runs_and_its_anchor_is_the_uint8_torchvision_path():
    row = bench.bench_replay(n_images=6, size=24, out=16, batch=4, repeat=1)
    assert row["px"] == 16 and row["render img/s"] > 0 and row["torchvision uint8 img/s"] > 0
    assert row["ratio (vs torchvision uint8)"] == pytest.approx(row["render img/s"] / row["torchvision uint8 img/s"])
    from hald.data.replay import render, sample_pass

    images = (torch.rand(6, 3, 24, 24) * 255).to(torch.uint8)
    mean, std = torch.tensor([0.5] * 3), torch.tensor([0.25] * 3)
    for g in sample_pass(6, (24, 24), 4, 16, seed=0):  # the anchor makes the same pixels: a fair comparison
        assert torch.allclose(bench.render_torchvision(images, g, 16, mean, std), render(images, g, 16, mean, std),
                              atol=1e-5)


def test_relabel_and_epoch_benchmarks_run():
    row = bench.bench_relabel(groups=2, batch=4, size=16)
    assert row["ratio"] > 0 and row["grouped labels/s"] > 0
    rows = bench.bench_epochs(n_images=4, batch=2, size=16, source=20, model="convnet_w32", repeat=1)
    assert [r["rendering"] for r in rows] == ["host (loader)", "device"]
    assert all(r["soft ms/epoch"] > 0 and r["hard ms/epoch"] > 0 and r["soft/hard"] > 0 for r in rows)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_replay_and_epoch_benchmarks_run_on_cuda():
    assert bench.bench_replay(n_images=6, size=24, out=16, batch=4, repeat=1, device="cuda")["render img/s"] > 0
    rows = bench.bench_epochs(n_images=4, batch=2, size=16, source=20, model="convnet_w32", repeat=1, device="cuda")
    assert len(rows) == 2
