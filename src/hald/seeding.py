"""Seeds that are pure functions of what they seed (base seed, epoch, item, unit, rank), never of order."""
from __future__ import annotations

import numpy as np


def seed_of(*parts: int) -> int:
    """A well-mixed 32-bit seed from integers (base seed, IPC index, chunk, epoch, ...): units are independent."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])
