"""GPU quotas: `regions.get` and `projects.get` list them; insert and start are held to them.

The `quotas` knob sets limits, `{"us-central1": {"NVIDIA_T4_GPUS": 4}, "global":
{"GPUS_ALL_REGIONS": 8}}`; a limit it does not set is `DEFAULT_REGIONAL_GPU_LIMIT` per GPU
type and region, `DEFAULT_GPUS_ALL_REGIONS_LIMIT` for all regions together. Usage counts the GPUs
of the project's instances that are PROVISIONING, STAGING or RUNNING. An insert or a start that
would go past a regional or the global limit is accepted and its Operation fails with
QUOTA_EXCEEDED and a `quotaInfo` detail (docs/gce-behaviour.md, "Accelerator types and GPU
quotas").
"""

from __future__ import annotations

import hashlib

from localgce import links
from localgce.accelerators import CATALOGUE, GPU_METRICS, check_offered, requested
from localgce.errors import ApiError, invalid
from localgce.httpserver import Request
from localgce.operations import Operations
from localgce.state import InstanceKey, Status, Store

DEFAULT_REGIONAL_GPU_LIMIT = 8.0
DEFAULT_GPUS_ALL_REGIONS_LIMIT = 16.0
GLOBAL = "global"
GPUS_ALL_REGIONS = "GPUS_ALL_REGIONS"
USING_QUOTA = {Status.PROVISIONING, Status.STAGING, Status.RUNNING}
DEFAULT_ZONE_SUFFIXES = ("a", "b", "c", "f")


def region_of(zone: str) -> str:
    """`us-central1-a` → `us-central1`."""
    return zone.rsplit("-", 1)[0]


def validate_quotas(value) -> dict[str, dict[str, float]]:
    """The `quotas` knob: {region or "global": {metric: limit}}; bad input → 400."""
    if not isinstance(value, dict):
        raise invalid('quotas must be a JSON object {"us-central1": {"NVIDIA_T4_GPUS": 4}, ...}')
    clean = {}
    for scope, limits in value.items():
        if not isinstance(limits, dict):
            raise invalid(f"quotas[{scope!r}] must be an object of metric → limit")
        for metric, limit in limits.items():
            if isinstance(limit, bool) or not isinstance(limit, int | float) or limit < 0:
                raise invalid(f"quota {scope}/{metric} must be a non-negative number")
            if scope == GLOBAL and metric != GPUS_ALL_REGIONS:
                raise invalid(f"the global scope has only {GPUS_ALL_REGIONS}, not {metric!r}")
            if scope != GLOBAL and metric not in GPU_METRICS:
                raise invalid(f"unknown regional quota {metric!r}; known: {GPU_METRICS}")
        clean[scope] = {metric: float(limit) for metric, limit in limits.items()}
    return clean


def limit(store: Store, scope: str, metric: str) -> float:
    default = DEFAULT_GPUS_ALL_REGIONS_LIMIT if scope == GLOBAL else DEFAULT_REGIONAL_GPU_LIMIT
    return float(store.knobs.quotas.get(scope, {}).get(metric, default))


def usage(
    store: Store, project: str, region: str | None, metric: str, exclude: InstanceKey | None = None
) -> float:
    """GPUs counted against `metric` (GPUS_ALL_REGIONS: every GPU) in `region` (None: all)."""
    total = 0
    for key, rec in store.instances.items():
        if key.project != project or key == exclude or rec.status not in USING_QUOTA:
            continue
        if region is not None and region_of(key.zone) != region:
            continue
        for name, count in requested(rec.resource.get("guestAccelerators")):
            accel = CATALOGUE.get(name)
            if metric == GPUS_ALL_REGIONS or (accel and accel.quota_metric == metric):
                total += count
    return float(total)


def exceeded(
    store: Store, project: str, zone: str, wanted: list[tuple[str, int]], exclude=None
) -> str | None:
    """The first quota `wanted` GPUs would go past (regional metric or GPUS_ALL_REGIONS)."""
    region = region_of(zone)
    by_metric: dict[str, int] = {}
    for name, count in wanted:
        if name in CATALOGUE:
            metric = CATALOGUE[name].quota_metric
            by_metric[metric] = by_metric.get(metric, 0) + count
    for metric, count in sorted(by_metric.items()):
        if usage(store, project, region, metric, exclude) + count > limit(store, region, metric):
            return metric
    total = sum(by_metric.values())
    if total and usage(store, project, None, GPUS_ALL_REGIONS, exclude) + total > limit(
        store, GLOBAL, GPUS_ALL_REGIONS
    ):
        return GPUS_ALL_REGIONS
    return None


def quota_failure(
    store: Store,
    ops: Operations,
    op_type: str,
    project: str,
    zone: str | None,
    target: str,
    metric: str,
) -> dict:
    """The DONE Operation GCE answers when a quota is exceeded (403 FORBIDDEN on the Operation,
    `error.errors[0].code` QUOTA_EXCEEDED with a `quotaInfo` detail)."""
    if metric == GPUS_ALL_REGIONS or zone is None:
        scope, where, dimensions = GLOBAL, "globally", {"global": "global"}
        limit_name = "GPUS-ALL-REGIONS-per-project"
        metric = GPUS_ALL_REGIONS
    else:
        scope = region_of(zone)
        where, dimensions = f"in region {scope}", {"region": scope}
        limit_name = metric.replace("_", "-") + "-per-project-region"
    with store.lock:
        value = limit(store, scope, metric)
    err = ApiError(403, "QUOTA_EXCEEDED", f"Quota '{metric}' exceeded. Limit: {value:.1f} {where}.")
    details = [
        {
            "quotaInfo": {
                "metricName": f"compute.googleapis.com/{metric.lower()}",
                "limitName": limit_name,
                "dimensions": dimensions,
                "limit": value,
            }
        }
    ]
    return ops.fail(op_type, project, target, zone, err, code="QUOTA_EXCEEDED", details=details)


def admit(
    store: Store,
    ops: Operations,
    op_type: str,
    key: InstanceKey,
    accelerators,
    exclude: InstanceKey | None = None,
) -> dict | None:
    """The check before an insert or start: a zone that does not offer a requested type → 400;
    a quota that would be exceeded → the failed Operation (returned); else None."""
    wanted = requested(accelerators)
    if not wanted:
        return None
    check_offered(store, key.project, key.zone, wanted)
    with store.lock:
        metric = exceeded(store, key.project, key.zone, wanted, exclude)
    if metric is None:
        return None
    with store.lock:
        store.project(key.project)
    return quota_failure(
        store, ops, op_type, key.project, key.zone, links.instance_path(*key), metric
    )


def metric_of_request(store: Store, method, params: dict, body) -> str:
    """The GPU quota an injected QUOTA_EXCEEDED names: the call's first GPU type (insert body or
    the instance), else GPUS_ALL_REGIONS."""
    accelerators = (body or {}).get("guestAccelerators") if isinstance(body, dict) else None
    if not accelerators and "instance" in params and "zone" in params:
        key = InstanceKey(params.get("project", ""), params["zone"], params["instance"])
        with store.lock:
            rec = store.instances.get(key)
            accelerators = rec.resource.get("guestAccelerators") if rec else None
    for name, _ in requested(accelerators):
        if name in CATALOGUE:
            return CATALOGUE[name].quota_metric
    return GPUS_ALL_REGIONS


def region_quotas(store: Store, project: str, region: str) -> list[dict]:
    metrics = sorted(set(GPU_METRICS) | set(store.knobs.quotas.get(region, {})))
    return [
        {
            "metric": metric,
            "limit": limit(store, region, metric),
            "usage": usage(store, project, region, metric),
        }
        for metric in metrics
    ]


def project_quotas(store: Store, project: str) -> list[dict]:
    return [
        {
            "metric": GPUS_ALL_REGIONS,
            "limit": limit(store, GLOBAL, GPUS_ALL_REGIONS),
            "usage": usage(store, project, None, GPUS_ALL_REGIONS),
        }
    ]


class Regions:
    def __init__(self, store: Store):
        self.store = store

    def get(self, req: Request, project: str, region: str) -> dict:
        with self.store.lock:
            known = {z for z in self.store.knobs.zone_accelerators if region_of(z) == region}
            known |= {k.zone for k in self.store.instances if region_of(k.zone) == region}
            zones = sorted(known | {f"{region}-{s}" for s in DEFAULT_ZONE_SUFFIXES})
            quotas = region_quotas(self.store, project, region)
        digest = hashlib.sha256(region.encode()).hexdigest()
        return {
            "kind": "compute#region",
            "id": str(1000 + int(digest[:8], 16) % 10**6),
            "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
            "name": region,
            "description": region,
            "status": "UP",
            "zones": [links.url(f"projects/{project}/zones/{z}") for z in zones],
            "quotas": quotas,
            "selfLink": links.url(f"projects/{project}/regions/{region}"),
            "supportsPzs": False,
        }
