"""Runtime knobs of the emulator: the values tests shrink and soak runs raise.

The same names are `serve` flags (kebab-case), JSON keys of `POST /localgce/v1/config`
(camelCase) and keyword arguments of `localgce.client.ensure_running` (snake_case, the field
names of `Knobs`). `camel`, `snake` and `knob_flag` are the only conversions between them.
GCE's real values are the defaults.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields

from localgce.errors import invalid

# Cloud Storage bucket names: 3-63 of lowercase letters, digits, '-', '_' and '.'.
_BUCKET_RE = re.compile(r"^[a-z0-9][-_.a-z0-9]{1,61}[a-z0-9]$")


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
    # The next N matching Compute calls fail as GCE fails them (faults.py): a list of
    # {"method": "compute.instances.start", "error": "rateLimitExceeded", "times": N, "zone"?}.
    faults: list[dict] = field(default_factory=list)
    # GPU quota limits (regions.py): {"us-central1": {"NVIDIA_T4_GPUS": 4}, "global":
    # {"GPUS_ALL_REGIONS": 8}}; what is not set has regions.py's defaults.
    quotas: dict[str, dict[str, float]] = field(default_factory=dict)
    # zone → the accelerator type names it offers (accelerators.py); unlisted zones offer all.
    zone_accelerators: dict[str, list[str]] = field(default_factory=dict)
    # Buckets whose objects nobody may write (storage_guard.py): uploads, patches, deletes of
    # their objects answer GCS's 403 and testIamPermissions grants no write permission.
    storage_denied_buckets: list[str] = field(default_factory=list)
    # Networks besides the auto-mode `default` one (networks.py): {"my-net": {"subnetworks":
    # {"us-central1": {"my-subnet": {"privateIpGoogleAccess": true}}}}}; "default": null removes it.
    networks: dict[str, dict | None] = field(default_factory=dict)

    def to_json(self) -> dict:
        return knobs_json(asdict(self))  # deep copies: a caller cannot change the knobs

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


# Knobs whose value is JSON (a list or an object): their `serve` flag takes a JSON string.
JSON_KNOBS = ("faults", "quotas", "zone_accelerators", "networks")
# Knobs whose value is a list of names: their `serve` flag takes them comma-separated.
LIST_KNOBS = ("exhausted_zones", "storage_denied_buckets")


def _coerce(name: str, value):
    # Imported here: these modules import the store, which imports this module.
    if name == "faults":
        from localgce.faults import validate

        return validate(value)
    if name == "quotas":
        from localgce.regions import validate_quotas

        return validate_quotas(value)
    if name == "zone_accelerators":
        from localgce.accelerators import validate_zone_accelerators

        return validate_zone_accelerators(value)
    if name == "networks":
        from localgce.networks import validate_networks

        return validate_networks(value)
    if name == "exhausted_zones":
        if not isinstance(value, list) or not all(isinstance(z, str) for z in value):
            raise invalid("exhaustedZones must be a list of zone names")
        return list(value)
    if name == "storage_denied_buckets":
        if not isinstance(value, list) or not all(
            isinstance(b, str) and _BUCKET_RE.match(b) for b in value
        ):
            raise invalid(
                f'storageDeniedBuckets must be a list of bucket names, e.g. ["my-bucket"], '
                f"got {value!r}"
            )
        return list(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise invalid(f"{camel(name)} must be a non-negative number, got {value!r}")
    return float(value)
