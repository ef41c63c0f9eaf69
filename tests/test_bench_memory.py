"""hald_tools.bench_memory at a tiny size: it generates the set, launches a training process and writes its row;
hald_tools.page_cache, its node view."""
import os

import pytest

from conftest import cold, page_accounting


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


@page_accounting
def test_page_cache_counts_what_was_read_and_evict_drops_it(tmp_path):
    from hald_tools.page_cache import cached_mb

    f = tmp_path / "data.bin"
    f.write_bytes(os.urandom(8 << 20))
    with open(f, "rb+") as h:
        os.fsync(h.fileno())  # dirty pages cannot be dropped
    f.read_bytes()
    assert cached_mb([f]) == pytest.approx(8.0, abs=0.01)
    (tmp_path / "empty").write_bytes(b"")
    assert cached_mb([tmp_path / "empty"]) == 0
    cold([f])  # page_cache.evict (skips where the file system keeps its pages)
    with open(f, "rb") as h:  # a quarter read back: a quarter cached (readahead aside)
        h.read(2 << 20)
    assert 1.9 < cached_mb([f]) < 4.5


@page_accounting
def test_store_pass_and_node_view(tmp_path):
    """--store-pass reads every stored record in each rank; the row then has that RSS, and every row the page
    cache its case's reads filled and the node total (PSS + that cache)."""
    from hald_tools import bench_memory

    out = tmp_path / "memory.md"
    rows = bench_memory.main(["--images", "24", "--size", "16", "--classes", "3", "--ranks", "1", "--cases",
                              "after,peers", "--steps", "1", "--batch", "4", "--store-gb", "0.00001", "--store-pass",
                              "--work", str(tmp_path / "w"), "--out", str(out)])
    after, peers = rows
    assert after["store_rss_mb"] > 0 and after["store_file_mb"] > 0 and "store_rss_mb" not in peers
    files = [tmp_path / "w" / "set" / "images.npy", *(tmp_path / "w" / "store").glob("*.safetensors")]
    assert len(files) > 5
    read = sum(-(-f.stat().st_size // 4096) * 4096 for f in files) / 2**20  # whole pages
    for row in rows:
        assert row["node_mb"] == pytest.approx(row["cache_mb"] + row["total_pss_mb"], rel=0.2)
    assert 0.5 * read <= after["cache_mb"] <= read
    text = out.read_text()
    assert "after every stored record" in text and "node vs 1 rank" in text


@page_accounting
def test_cold_read_bench_compares_both_ways(tmp_path):
    """bench_cold reads the same random stored batches from a cold cache with faults alone and asked-for reads,
    and writes the table; asking never reads more into the cache."""
    from hald_tools import bench_cold

    out = tmp_path / "cold.md"
    text = bench_cold.main(["--images", "40", "--classes", "10", "--store-gb", "0.02", "--records", "4",
                            "--repeat", "1", "--work", str(tmp_path / "w"), "--out", str(out)])
    assert out.read_text() == text and "load average" in text and "read-ahead" in text
    rows = {line.split(" | ")[0]: line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    around, asked = rows["| page faults alone"], rows["| asked for first (hald)"]
    assert float(asked[2]) <= float(around[2]) and float(asked[2]) <= 4 * 64 * 224 * 224 * 3 / 2**20 + 1
