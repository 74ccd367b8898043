"""The soak's fault draw: replayable, covering, and within what startup.sh retries."""

from __future__ import annotations

import random

import pytest

from tests.chaos.helpers import CRASHES_IN_BOOT, CRASHES_PER_BOOT, FAULTS, REBOOTS, draw_faults


def _crashes_per_boot(plan: list[str]) -> int:
    most = crashes = 0
    for fault in plan:
        crashes = 0 if fault in REBOOTS else crashes + (fault in CRASHES_IN_BOOT)
        most = max(most, crashes)
    return most


@pytest.mark.parametrize("count", [len(FAULTS), 10, 30])
def test_a_soak_long_enough_meets_every_fault(count):
    for seed in range(200):
        plan = draw_faults(count, random.Random(seed))
        assert len(plan) == count
        assert set(plan) == set(FAULTS), (seed, plan)
        assert _crashes_per_boot(plan) <= CRASHES_PER_BOOT, (seed, plan)


def test_a_short_soak_draws_within_the_crash_retries_and_replays():
    for seed in range(200):
        plan = draw_faults(4, random.Random(seed))
        assert len(plan) == 4 and set(plan) <= set(FAULTS)
        assert _crashes_per_boot(plan) <= CRASHES_PER_BOOT, (seed, plan)
        assert draw_faults(4, random.Random(seed)) == plan
