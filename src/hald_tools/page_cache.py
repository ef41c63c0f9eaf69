"""How much of a set of files the OS page cache holds, and dropping them from it (Linux; no root needed).

The memory bench's node view: a memory-mapped image array or label store is read through the page cache, which
holds it once per node however many ranks read it; these two functions measure that and start each case cold.
"""
from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import numpy as np


def evict(paths: list[Path]) -> None:
    """Drop the files' clean pages from the page cache (POSIX_FADV_DONTNEED; no root needed), so a case starts
    cold and what the cache holds afterwards is what that case read."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cached_mb(paths: list[Path]) -> float:
    """MB of the files resident in the page cache (mincore(2) over a fresh mapping: mapping faults nothing in)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    page, resident = mmap.PAGESIZE, 0
    for path in paths:
        size = path.stat().st_size
        if not size:
            continue
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            view = np.frombuffer(m, dtype=np.uint8)  # its address, without touching a page
            vec = np.zeros((size + page - 1) // page, dtype=np.uint8)
            if libc.mincore(view.ctypes.data, size, vec.ctypes.data):
                raise OSError(ctypes.get_errno(), f"mincore failed on {path}")
            resident += int(np.count_nonzero(vec & 1)) * page
            del view
    return resident / 2**20
