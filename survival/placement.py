"""Where an instance goes: the zone order, and creating it in the first zone that can host it.

Used by the launch (first create) and the supervisor (re-create after a capacity error, or when
the instance is gone), so both move through ``survival.zones`` the same way and give up the same
way: NoCapacityError, which a launch reports and the supervisor retries after a backoff.

What each error does here (docs/gce-behaviour.md, "Errors the orchestrator meets"):
- a capacity error (ZONE_RESOURCE_POOL_EXHAUSTED*): the next zone;
- UNSUPPORTED_OPERATION (a Spot VM preempted while it was being created): the same zone again,
  up to ``same_zone_attempts`` times, then the next zone;
- the zone does not offer the GPU type: skip the zone, one line;
- a transient error (a rate limit, RESOURCE_NOT_READY, a 5xx, no connection): the same zone
  again after a growing pause, up to ``transient_attempts`` tries in all, then it propagates;
- a regional quota used up: every zone of that region is skipped; when a configured zone in
  another region remains it is tried (that region's quota may allow it), else the QuotaError
  stops the launch. A global quota (GPUS_ALL_REGIONS) stops it at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from survival.compute import Compute
from survival.errors import (
    AcceleratorUnavailable,
    CapacityError,
    NoCapacityError,
    PreemptedWhileCreating,
    QuotaError,
    TransientError,
    region_of,
)

# UNSUPPORTED_OPERATION in one zone: tries there in all, and the pause between them.
SAME_ZONE_ATTEMPTS = 3
SAME_ZONE_PAUSE_SECONDS = 5.0
# Transient errors while creating: tries in all (the pause doubles from SAME_ZONE_PAUSE_SECONDS).
TRANSIENT_ATTEMPTS = 5
STOPPED_STATES = frozenset({"TERMINATED", "STOPPED", "SUSPENDED"})


def zones_from(first: str | None, zones: Iterable[str]) -> tuple[str, ...]:
    """``first`` (when given), then the other ``zones`` in their order."""
    rest = tuple(zone for zone in zones if zone != first)
    return (first, *rest) if first else rest


def _create(compute: Compute, zone: str, body: dict[str, Any], again: bool) -> None:
    """Insert; when trying ``again`` after a preemption during creation, the instance may exist
    already (TERMINATED): start it instead."""
    if again:
        info = compute.get_instance(zone, body["name"])
        if info is not None:
            if info.status in STOPPED_STATES:
                compute.start_instance(zone, body["name"])
            return
    compute.insert_instance(zone, body)


def _gpu_type(body: dict[str, Any]) -> str:
    accelerators = body.get("guestAccelerators") or [{}]
    return str(accelerators[0].get("acceleratorType") or "the GPU type").rsplit("/", 1)[-1]


def place(
    compute: Compute,
    zones: tuple[str, ...],
    make_body: Callable[[str], dict[str, Any]],
    out: Callable[[str], None],
    *,
    same_zone_attempts: int = SAME_ZONE_ATTEMPTS,
    same_zone_pause_seconds: float = SAME_ZONE_PAUSE_SECONDS,
    transient_attempts: int = TRANSIENT_ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Create the instance in the first of ``zones`` that can host it and return that zone.

    NoCapacityError when none of them can; QuotaError when a quota rules out every remaining
    zone. Other errors propagate at once."""
    last: CapacityError | None = None
    over_quota: set[str] = set()
    for index, zone in enumerate(zones):
        if region_of(zone) in over_quota:
            continue
        attempt, transient_tries, pause = 1, 0, same_zone_pause_seconds
        while True:
            body = make_body(zone)
            try:
                _create(compute, zone, body, again=attempt > 1 or transient_tries > 0)
            except TransientError as err:
                transient_tries += 1
                if transient_tries >= transient_attempts:
                    raise
                out(f"{zone}: {err}; trying again in {pause:g} s")
                sleep(pause)
                pause *= 2
                continue
            except PreemptedWhileCreating as err:
                last = err
                if attempt < same_zone_attempts:
                    out(
                        f"{zone}: {err.code} (the Spot VM was preempted while it was being "
                        f"created); trying {zone} again ({attempt + 1}/{same_zone_attempts})"
                    )
                    sleep(same_zone_pause_seconds)
                    attempt += 1
                    continue
                out(f"{zone}: {err.code} {same_zone_attempts} times; trying the next zone")
                compute.delete_instance(zone, body["name"])
                break
            except AcceleratorUnavailable as err:
                out(f"{zone} does not offer {_gpu_type(body)}; skipping the zone")
                last = err
                break
            except CapacityError as err:
                out(f"no capacity in {zone} ({err.code}); trying the next zone")
                last = err
                break
            except QuotaError as err:
                if err.region is None:
                    raise
                over_quota.add(err.region)
                elsewhere = [z for z in zones[index + 1 :] if region_of(z) not in over_quota]
                if not elsewhere:
                    raise
                out(
                    f"{err.metric} quota of {err.region} is used up (another zone of "
                    f"{err.region} would not help); trying {elsewhere[0]} in region "
                    f"{region_of(elsewhere[0])}"
                )
                break
            else:
                return zone
    raise NoCapacityError(
        f"no capacity in any of {', '.join(zones)}"
        f"{f' ({last.code})' if last else ''}: add zones to survival.zones, "
        "try --provisioning standard, or retry later"
    )
