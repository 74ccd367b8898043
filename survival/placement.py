"""Where an instance goes: the zone order, and creating it in the first zone with capacity.

Used by the launch (first create) and the supervisor (re-create after a capacity error, or when
the instance is gone), so both move through ``survival.zones`` the same way and give up the same
way: NoCapacityError, which a launch reports and the supervisor retries after a backoff.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from survival.compute import Compute
from survival.errors import CapacityError, NoCapacityError


def zones_from(first: str | None, zones: Iterable[str]) -> tuple[str, ...]:
    """``first`` (when given), then the other ``zones`` in their order."""
    rest = tuple(zone for zone in zones if zone != first)
    return (first, *rest) if first else rest


def place(
    compute: Compute,
    zones: tuple[str, ...],
    make_body: Callable[[str], dict[str, Any]],
    out: Callable[[str], None],
) -> str:
    """Insert the instance in the first of ``zones`` with capacity and return that zone.

    A capacity error moves on to the next zone (saying so through ``out``); NoCapacityError when
    none of them has any. Other errors propagate at once."""
    last: CapacityError | None = None
    for zone in zones:
        try:
            compute.insert_instance(zone, make_body(zone))
        except CapacityError as err:
            out(f"no capacity in {zone} ({err.code}); trying the next zone")
            last = err
            continue
        return zone
    raise NoCapacityError(
        f"no capacity in any of {', '.join(zones)}"
        f"{f' ({last.code})' if last else ''}: add zones to survival.zones, "
        "try --provisioning standard, or retry later"
    )
