"""hald_tools.bench_memory at a tiny size: it generates the set, launches a training process and writes its row."""



def test_bench_memory_runs_small(tmp_path):
    from hald_tools import bench_memory

    out = tmp_path / "memory.md"
    rows = bench_memory.main(["--images", "24", "--size", "16", "--classes", "3", "--ranks", "1", "--cases", "after",
                              "--steps", "1", "--batch", "4", "--out", str(out)])
    [row] = rows
    assert row["case"] == "after" and row["ranks"] == 1 and row["peak_mb"] > 0 and row["first_step_s"] > 0
    text = out.read_text()
    assert "load average" in text and "| after | 1 |" in text and "python -m hald_tools.bench_memory" in text
