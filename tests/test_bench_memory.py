"""hald_tools.bench_memory at a tiny size: it generates the set, launches a training process and writes its row."""



def test_bench_memory_runs_small(tmp_path):
    from hald_tools import bench_memory

    out = tmp_path / "memory.md"
    rows = bench_memory.main(["--images", "24", "--size", "16", "--classes", "3", "--ranks", "1", "--cases", "after,peers",
                              "--steps", "1", "--batch", "4", "--full-pass", "--out", str(out)])
    assert [(r["case"], r["ranks"]) for r in rows] == [("after", 1), ("peers", 1)]
    for row in rows:
        assert row["peak_mb"] > 0 and row["first_step_s"] > 0 and row["pass_rss_mb"] > 0
        assert 0 < row["anon_mb"] < row["peak_mb"] and row["pass_total_pss_mb"] > 0
    text = out.read_text()
    assert "load average" in text and "| after | 1 |" in text and "| peers | 1 |" in text
    assert "python -m hald_tools.bench_memory" in text and "after a pass over every image" in text


def test_repeated_runs_are_summarised_by_their_medians():
    from hald_tools.bench_memory import median_row

    runs = [{"case": "after", "ranks": 2, "peak_mb": p, "anon_mb": a} for p, a in ((300.0, 9.0), (100.0, 7.0), (200.0, 8.0))]
    row = median_row(runs)
    assert row == {"case": "after", "ranks": 2, "peak_mb": 200.0, "anon_mb": 8.0, "peak_min_mb": 100.0,
                   "peak_max_mb": 300.0, "runs": 3}
