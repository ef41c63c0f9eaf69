"""Two runs on one cache: builders of one artifact key exclude each other (pipeline/cache.py `cached`,
artifacts.exclusive), with real processes."""
import os
import signal
import subprocess
import sys
import textwrap
import time

from conftest import ROOT

BUILDER = textwrap.dedent("""
    import logging, sys, time
    from pathlib import Path
    from omegaconf import OmegaConf
    from hald.pipeline.cache import Context, cached
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    cache, seconds = Path(sys.argv[1]), float(sys.argv[2])
    def build(tmp):
        with open(cache / "builds.txt", "a") as f:
            f.write("built\\n")
        print("building now", flush=True)
        t0 = time.time()  # until the test releases it (or `seconds` pass)
        while not (cache / "release").exists() and time.time() - t0 < seconds:
            time.sleep(0.05)
        (tmp / "labels.bin").write_bytes(b"x" * 100)
        return {}
    art = cached(Context(OmegaConf.create({}), cache), "relabel", "k1", {"a": 1}, {}, build)
    print("result", art.reused, art.path, flush=True)
""")


def start(cache, seconds, name):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = open(cache / f"{name}.log", "w")
    return subprocess.Popen([sys.executable, "-c", BUILDER, str(cache), str(seconds)], stdout=out,
                            stderr=subprocess.STDOUT, text=True, env=env)


def wait_for(proc_file, text, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc_file.exists() and text in proc_file.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {proc_file}")


def test_two_runs_on_an_empty_cache_build_once_and_the_second_waits_and_reuses(tmp_path):
    a = start(tmp_path, 120, "a")
    wait_for(tmp_path / "builds.txt", "built")  # a holds the lock and builds
    b = start(tmp_path, 120, "b")
    wait_for(tmp_path / "b.log", "waiting for it")  # b found the key being built
    (tmp_path / "release").touch()
    a.wait(timeout=120), b.wait(timeout=120)
    out_a, out_b = (tmp_path / "a.log").read_text(), (tmp_path / "b.log").read_text()
    assert a.returncode == 0 and b.returncode == 0, (out_a, out_b)
    assert (tmp_path / "builds.txt").read_text() == "built\n"  # built once
    assert "result False" in out_a and "result True" in out_b
    assert out_b.count("waiting for it") == 1 and "is building" in out_b, out_b  # said once, with the holder
    assert "built by another run meanwhile" in out_b
    assert (tmp_path / "relabel" / "k1" / "labels.bin").read_bytes() == b"x" * 100


def test_a_builder_killed_with_sigkill_releases_the_lock(tmp_path):
    a = start(tmp_path, 600, "a")
    wait_for(tmp_path / "builds.txt", "built")
    os.kill(a.pid, signal.SIGKILL)
    a.wait(timeout=30)
    b = start(tmp_path, 0, "b")
    b.wait(timeout=120)
    out_b = (tmp_path / "b.log").read_text()
    assert b.returncode == 0 and "result False" in out_b, out_b  # b builds at once: the dead holder's lock is gone
    assert (tmp_path / "builds.txt").read_text() == "built\nbuilt\n"
    assert (tmp_path / "relabel" / "k1" / "labels.bin").is_file()
    assert not [p for p in (tmp_path / "relabel").iterdir() if ".building." in p.name]  # a's temp dir removed
