"""--chaos N: preempt the job's instance N times at random steps, to rehearse survival.

The targets are drawn once (injected ``random.Random``) as N distinct steps spread over the run,
and each fires at most once per attempt: when the running attempt's LEASE reports a step at or
past the next target, the supervisor preempts the instance (localgce's preempt endpoint; on GCE
simulateMaintenanceEvent, after a warning).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from survival.errors import ChaosError

# Targets fall in this fraction of the run: late enough that a checkpoint exists to lose work
# from, early enough that the attempt is still running when the supervisor looks.
FIRST_TARGET_FRACTION = 0.15
LAST_TARGET_FRACTION = 0.75


@dataclass
class Chaos:
    targets: list[int]
    fired_attempts: set[Any] = field(default_factory=set)

    @classmethod
    def plan(cls, count: int, train_steps: int, rng: random.Random) -> Chaos:
        if count <= 0:
            return cls([])
        low = max(1, int(train_steps * FIRST_TARGET_FRACTION))
        high = max(low + count, int(train_steps * LAST_TARGET_FRACTION))
        span = range(low, min(high, train_steps - 1) + 1)
        if len(span) < count:
            raise ChaosError(
                f"--chaos {count} needs more --train-steps than {train_steps}: raise --train-steps "
                "or lower --chaos"
            )
        # One target per slice of the span, so preemptions spread over the run.
        slices = [span[i * len(span) // count : (i + 1) * len(span) // count] for i in range(count)]
        return cls(sorted(rng.choice(s) for s in slices))

    @property
    def remaining(self) -> int:
        return len(self.targets)

    def due(self, lease: dict[str, Any] | None) -> bool:
        """True when the live attempt has reached the next target and was not preempted yet."""
        if not self.targets or not lease:
            return False
        attempt = lease.get("attempt", lease.get("started_unix"))
        if attempt in self.fired_attempts:
            return False
        step = int(lease.get("step") or 0)
        resumed = int(lease.get("resumed_from_step") or 0)
        return step >= self.targets[0] and step > resumed

    def fired(self, lease: dict[str, Any]) -> int:
        self.fired_attempts.add(lease.get("attempt", lease.get("started_unix")))
        return self.targets.pop(0)
