"""The soak's knobs: how many faults (`--soak N`) and the seed that draws them (`--soak-seed`).
The options themselves are added by tests/conftest.py (only a root conftest may add options)."""

from __future__ import annotations

import random

import pytest


@pytest.fixture
def soak_faults(request) -> int:
    count = request.config.getoption("--soak")
    if count < 1:
        raise pytest.UsageError("--soak N needs N >= 1")
    return count


@pytest.fixture
def soak_seed(request, soak_faults) -> int:
    """The seed of this soak, printed so that a failure can be replayed exactly."""
    seed = request.config.getoption("--soak-seed")
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    print(f"chaos soak: seed {seed}, {soak_faults} faults (replay: --soak {soak_faults} "
          f"--soak-seed {seed})")  # fmt: skip
    return seed
