"""acceleratorTypes: which GPU types a zone offers (`list`, `get`) and the check at insert/start.

The `zone_accelerators` knob maps a zone to the type names it offers; a zone it does not name
offers every type of `CATALOGUE`. An instance that asks for a type its zone does not offer is
refused as GCE refuses it: a synchronous 400 saying the acceleratorType resource was not found
(docs/gce-behaviour.md, "Accelerator types and GPU quotas").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from localgce import links
from localgce.errors import ApiError, invalid, not_found
from localgce.httpserver import Request
from localgce.listing import list_response
from localgce.state import Store


@dataclass(frozen=True)
class AcceleratorType:
    name: str
    description: str
    quota_metric: str  # the regional quota its GPUs count against (Quota.metric)
    maximum_cards_per_instance: int


CATALOGUE = {
    t.name: t
    for t in (
        AcceleratorType("nvidia-tesla-t4", "NVIDIA T4", "NVIDIA_T4_GPUS", 4),
        AcceleratorType(
            "nvidia-tesla-t4-vws", "NVIDIA Tesla T4 Virtual Workstation", "NVIDIA_T4_VWS_GPUS", 4
        ),
        AcceleratorType("nvidia-tesla-p4", "NVIDIA Tesla P4", "NVIDIA_P4_GPUS", 4),
        AcceleratorType(
            "nvidia-tesla-p4-vws", "NVIDIA Tesla P4 Virtual Workstation", "NVIDIA_P4_VWS_GPUS", 4
        ),
        AcceleratorType("nvidia-tesla-p100", "NVIDIA Tesla P100", "NVIDIA_P100_GPUS", 4),
        AcceleratorType(
            "nvidia-tesla-p100-vws",
            "NVIDIA Tesla P100 Virtual Workstation",
            "NVIDIA_P100_VWS_GPUS",
            4,
        ),
        AcceleratorType("nvidia-tesla-v100", "NVIDIA V100", "NVIDIA_V100_GPUS", 8),
        AcceleratorType("nvidia-l4", "NVIDIA L4", "NVIDIA_L4_GPUS", 8),
        AcceleratorType("nvidia-tesla-a100", "NVIDIA A100 40GB", "NVIDIA_A100_GPUS", 16),
        AcceleratorType("nvidia-a100-80gb", "NVIDIA A100 80GB", "NVIDIA_A100_80GB_GPUS", 8),
    )
}
GPU_METRICS = sorted({t.quota_metric for t in CATALOGUE.values()})


def validate_zone_accelerators(value) -> dict[str, list[str]]:
    """The `zone_accelerators` knob: {zone: [type names]}; unknown names → 400 with the list."""
    if not isinstance(value, dict):
        raise invalid('zoneAccelerators must be a JSON object {"zone": ["nvidia-tesla-t4", ...]}')
    clean = {}
    for zone, names in value.items():
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise invalid(f"zoneAccelerators[{zone!r}] must be a list of accelerator type names")
        unknown = sorted(set(names) - set(CATALOGUE))
        if unknown:
            raise invalid(
                f"unknown accelerator types {unknown}; localgce knows {sorted(CATALOGUE)}"
            )
        clean[zone] = list(names)
    return clean


def offered(store: Store, zone: str) -> list[str]:
    """The type names `zone` offers (lock held or not: the knob is replaced, never mutated)."""
    names = store.knobs.zone_accelerators.get(zone)
    return sorted(CATALOGUE) if names is None else sorted(names)


def requested(accelerators) -> list[tuple[str, int]]:
    """`guestAccelerators` of a request body or an instance → [(type name, count)]."""
    wanted = []
    for item in accelerators or []:
        if not isinstance(item, dict):
            continue
        count = item.get("acceleratorCount", 1)
        try:
            count = int(count)
        except (TypeError, ValueError):
            count = 1
        wanted.append((links.last(str(item.get("acceleratorType", ""))), count))
    return wanted


def check_offered(store: Store, project: str, zone: str, wanted: list[tuple[str, int]]) -> None:
    """400 as on GCE when the zone does not offer a requested type."""
    available = set(offered(store, zone))
    for name, _ in wanted:
        if name not in available:
            raise ApiError(
                400,
                "badRequest",
                f"The resource 'projects/{project}/zones/{zone}/acceleratorTypes/{name}' "
                "was not found",
            )


def _resource(project: str, zone: str, accel: AcceleratorType) -> dict:
    digest = hashlib.sha256(f"{zone}/{accel.name}".encode()).hexdigest()
    return {
        "kind": "compute#acceleratorType",
        "id": str(10000 + int(digest[:10], 16) % 10**15),
        "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
        "name": accel.name,
        "description": accel.description,
        "zone": links.url(f"projects/{project}/zones/{zone}"),
        "maximumCardsPerInstance": accel.maximum_cards_per_instance,
        "selfLink": links.url(f"projects/{project}/zones/{zone}/acceleratorTypes/{accel.name}"),
    }


class AcceleratorTypes:
    def __init__(self, store: Store):
        self.store = store

    def list(self, req: Request, project: str, zone: str) -> dict:
        items = [_resource(project, zone, CATALOGUE[n]) for n in offered(self.store, zone)]
        return list_response(
            "compute#acceleratorTypeList",
            items,
            req.query,
            links.url(f"projects/{project}/zones/{zone}/acceleratorTypes"),
        )

    def get(self, req: Request, project: str, zone: str, acceleratorType: str) -> dict:
        if acceleratorType not in offered(self.store, zone):
            raise not_found(f"projects/{project}/zones/{zone}/acceleratorTypes/{acceleratorType}")
        return _resource(project, zone, CATALOGUE[acceleratorType])
