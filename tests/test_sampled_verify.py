"""Reuse checks of large files (artifacts.content_differs): size + sampled blocks by default, the whole sha256
with HALD_VERIFY=full and for manifests without sample digests; small files are always hashed whole."""
import json

import pytest

from hald import artifacts
from hald.artifacts import ArtifactError, verify


@pytest.fixture
def big(tmp_path, monkeypatch):
    """An artifact with one 'large' file (thresholds scaled down: 64 KiB files, 1 KiB blocks)."""
    monkeypatch.setattr(artifacts, "SAMPLE_MIN", 1 << 16)
    monkeypatch.setattr(artifacts, "SAMPLE_BLOCK", 1 << 10)
    monkeypatch.delenv("HALD_VERIFY", raising=False)
    art = tmp_path / "art"
    art.mkdir()
    (art / "big.bin").write_bytes(bytes(range(256)) * 1024)  # 256 KiB
    (art / "small.bin").write_bytes(b"x" * 1000)
    manifest = artifacts.finish(art, "relabel", "k", {}, {})
    assert "sample_sha256" in manifest["files"]["big.bin"] and "sample_sha256" not in manifest["files"]["small.bin"]
    return art


def flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("offset", [0, 5, (1 << 18) - 1])  # first block, inside it, the last byte
def test_a_flip_in_a_sampled_block_is_caught(big, offset):
    verify(big, deep=True)
    flip(big / "big.bin", offset)
    with pytest.raises(ArtifactError, match="sampled blocks' sha256 differs"):
        verify(big, deep=True)
    assert artifacts.problem(big) is not None


def test_truncation_is_caught(big):
    data = (big / "big.bin").read_bytes()
    (big / "big.bin").write_bytes(data[:-1])
    with pytest.raises(ArtifactError, match="truncated"):
        verify(big, deep=True)


def test_full_mode_catches_a_flip_anywhere(big, monkeypatch):
    off = 3 * (1 << 10) + 17  # between the sampled blocks (offsets 0, ~17 KiB, ...)
    flip(big / "big.bin", off)
    verify(big, deep=True)  # sampled: a flip outside the blocks is the price of not reading the file
    monkeypatch.setenv("HALD_VERIFY", "full")
    with pytest.raises(ArtifactError, match="big.bin: sha256 differs"):
        verify(big, deep=True)
    monkeypatch.setenv("HALD_VERIFY", "fast")
    with pytest.raises(artifacts.InputError, match="HALD_VERIFY='fast'; fix"):
        verify(big, deep=True)


def test_small_files_and_old_manifests_are_hashed_whole(big):
    flip(big / "small.bin", 500)
    with pytest.raises(ArtifactError, match="small.bin: sha256 differs"):
        verify(big, deep=True)
    flip(big / "small.bin", 500)
    mf = big / artifacts.MANIFEST
    old = json.loads(mf.read_text())
    del old["files"]["big.bin"]["sample_sha256"]  # a manifest written before sampled checks
    old[artifacts.SEAL] = artifacts.seal_of(old)
    mf.write_text(json.dumps(old))
    flip(big / "big.bin", 3 * (1 << 10) + 17)
    with pytest.raises(ArtifactError, match="big.bin: sha256 differs"):
        verify(big, deep=True)
