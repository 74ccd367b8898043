"""Runtime knobs of the emulator: the values tests shrink and soak runs raise.

The same names are `serve` flags (kebab-case), JSON keys of `POST /localgce/v1/config`
(camelCase) and keyword arguments of `localgce.client.ensure_running` (snake_case, the field
names of `Knobs`). `camel`, `snake` and `knob_flag` are the only conversions between them.
GCE's real values are the defaults.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from localgce.errors import invalid


@dataclass
class Knobs:
    # Zones where inserts fail with ZONE_RESOURCE_POOL_EXHAUSTED (the orchestrator's zone fallback).
    exhausted_zones: list[str] = field(default_factory=list)
    # Random preemptions of RUNNING Spot/preemptible VMs, per VM per hour (0 = only on request).
    preemption_rate_per_hour: float = 0.0
    # ACPI soft-off → mechanical-off window: 30 s Spot/preemptible, 120 s standard on GCE.
    grace_spot_seconds: float = 30.0
    grace_standard_seconds: float = 120.0
    # How long maintenance-event shows the notice before the host-maintenance stop (1 h on GCE).
    maintenance_notice_seconds: float = 3600.0
    # 0: mutating calls answer with a DONE Operation. >0: they stay RUNNING at least this long.
    operation_delay_seconds: float = 0.0

    def to_json(self) -> dict:
        return knobs_json(asdict(self))

    def update_from_json(self, payload: dict) -> None:
        """Apply camelCase keys from the admin endpoint; unknown keys or bad values → 400."""
        if not isinstance(payload, dict):
            raise invalid("config body must be a JSON object")
        by_camel = {camel(f.name): f for f in fields(self)}
        staged = {}
        for key, value in payload.items():
            spec = by_camel.get(key)
            if spec is None:
                raise invalid(f"unknown config key {key!r}; known keys: {sorted(by_camel)}")
            staged[spec.name] = _coerce(spec.name, value)
        for name, value in staged.items():
            setattr(self, name, value)


def camel(name: str, sep: str = "_") -> str:
    """`grace_spot_seconds` → `graceSpotSeconds` (`sep="-"`: kebab-case); camelCase is kept."""
    head, *rest = name.split(sep)
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def snake(name: str) -> str:
    """`graceSpotSeconds` → `grace_spot_seconds`; snake_case is kept."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def knobs_json(knobs: dict) -> dict:
    """Knobs keyed in snake_case or camelCase → the camelCase JSON form."""
    return {camel(key): value for key, value in knobs.items()}


def knob_flag(name: str) -> str:
    """The `serve` flag of a knob named in snake_case or camelCase: `--grace-spot-seconds`."""
    return "--" + snake(name).replace("_", "-")


def _coerce(name: str, value):
    if name == "exhausted_zones":
        if not isinstance(value, list) or not all(isinstance(z, str) for z in value):
            raise invalid("exhaustedZones must be a list of zone names")
        return list(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise invalid(f"{camel(name)} must be a non-negative number, got {value!r}")
    return float(value)
