"""The Instance resource: GCE's checks and defaults, and building a new one.

Everything here is pure: it reads a request body and the store's values and either raises the
API error GCE would answer (400) or returns resources. instances.py parses requests and answers;
this module decides what an instance looks like (docs/gce-behaviour.md, "The Instance resource").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from localgce import links
from localgce.errors import ApiError, invalid
from localgce.state import InstanceKey, InstanceRecord, Status, Store, fingerprint

METADATA_KEY_RE = re.compile(r"^[a-zA-Z0-9_-]{1,127}$")
METADATA_VALUE_MAX_BYTES = 256 * 1024
METADATA_TOTAL_MAX_BYTES = 512 * 1024
PROVISIONING_MODELS = {"STANDARD", "SPOT", "FLEX_START"}
TERMINATION_ACTIONS = {"STOP", "DELETE"}
ON_HOST_MAINTENANCE = {"MIGRATE", "TERMINATE"}
DEFAULT_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
# docs/gce-behaviour.md, "Spot and GPU scheduling options": a time limit (maxRunDuration or
# terminationTime) is at most 120 days; flex-start VMs run for at most 7 days. GCE's minimum is
# 30 s; localgce takes limits from 1 s so tests can watch one end.
MIN_RUN_SECONDS = 1
MAX_RUN_SECONDS = 120 * 24 * 3600
FLEX_START_MAX_RUN_SECONDS = 7 * 24 * 3600
MAX_DURATION_SECONDS = 315_576_000_000  # google.protobuf.Duration's range
NETWORK_PATH_RE = re.compile(
    r"^(?:(?:https?://[^/]+/compute/v1/)?projects/[a-z0-9-]+/)?global/networks/"
    r"(?P<name>[a-z]([-a-z0-9]{0,61}[a-z0-9])?)$"
)
SUBNETWORK_PATH_RE = re.compile(
    r"^(?:(?:https?://[^/]+/compute/v1/)?projects/[a-z0-9-]+/)?regions/(?P<region>[a-z]+-[a-z]+[0-9]+)"
    r"/subnetworks/(?P<name>[a-z]([-a-z0-9]{0,61}[a-z0-9])?)$"
)


def validate_metadata_items(items) -> list[dict]:
    """Metadata items as GCE accepts them (docs/gce-behaviour.md, "Metadata and fingerprints")."""
    if not isinstance(items, list):
        raise invalid("Invalid value for field 'metadata.items': must be a list.")
    seen, total, clean = set(), 0, []
    for item in items:
        key, value = item.get("key", ""), item.get("value", "")
        if not METADATA_KEY_RE.match(key):
            raise invalid(f"Invalid value for field 'metadata.items.key': '{key}'.")
        if key in seen:
            raise invalid(f"Duplicate metadata key '{key}'.")
        if not isinstance(value, str) or len(value.encode()) > METADATA_VALUE_MAX_BYTES:
            raise invalid(f"Value of metadata key '{key}' must be a string of at most 256 KiB.")
        seen.add(key)
        total += len(key) + len(value.encode())
        clean.append({"key": key, "value": value})
    if total > METADATA_TOTAL_MAX_BYTES:
        raise invalid("Metadata keys and values together exceed 512 KB.")
    return clean


def metadata_dict(metadata: dict) -> dict[str, str]:
    """A `Metadata` value (instance or project) as key → value."""
    return {item["key"]: item.get("value", "") for item in metadata.get("items", [])}


def is_spot(resource: dict) -> bool:
    """Spot and legacy preemptible VMs share preemption, its window and its scheduling rules."""
    sched = resource.get("scheduling", {})
    return sched.get("provisioningModel") == "SPOT" or bool(sched.get("preemptible"))


def duration_seconds(field: str, value) -> float:
    """A `Duration` ({seconds: int64 as a string or number, nanos}) in seconds; 400 if bad."""
    bad = invalid(f"Invalid value for field 'resource.scheduling.{field}': '{value}'.")
    if not isinstance(value, dict) or set(value) - {"seconds", "nanos"}:
        raise bad
    seconds, nanos = value.get("seconds", 0), value.get("nanos", 0)
    if isinstance(seconds, str) and re.fullmatch(r"-?[0-9]{1,12}", seconds):
        seconds = int(seconds)
    if isinstance(seconds, bool) or not isinstance(seconds, int) or isinstance(nanos, bool):
        raise bad
    if not isinstance(nanos, int) or not 0 <= nanos <= 999_999_999:
        raise bad
    if not 0 <= seconds <= MAX_DURATION_SECONDS:
        raise bad
    return seconds + nanos / 1e9


def parse_rfc3339(text: str) -> float | None:
    """Seconds since the epoch for an RFC 3339 timestamp with an offset (or Z); else None."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return None if moment.tzinfo is None else moment.timestamp()


def _check_time_limit(sched: dict, model: str, now_unix: float | None) -> None:
    """maxRunDuration / terminationTime: one of them, within GCE's range, not on legacy
    preemptible VMs; flex-start needs a maxRunDuration of at most 7 days."""
    has_duration = "maxRunDuration" in sched
    has_time = "terminationTime" in sched
    if has_duration and has_time:
        raise invalid(
            "Invalid value for field 'resource.scheduling': maxRunDuration and terminationTime "
            "are mutually exclusive; set one of them."
        )
    if (has_duration or has_time) and sched.get("preemptible") and model != "SPOT":
        raise invalid(
            "Invalid value for field 'resource.scheduling': a time limit cannot be set on "
            "preemptible instances; use the SPOT provisioning model."
        )
    if has_duration:
        seconds = duration_seconds("maxRunDuration", sched["maxRunDuration"])
        limit = FLEX_START_MAX_RUN_SECONDS if model == "FLEX_START" else MAX_RUN_SECONDS
        if not MIN_RUN_SECONDS <= seconds <= limit:
            raise invalid(
                "Invalid value for field 'resource.scheduling.maxRunDuration': "
                f"'{seconds:g}s'. Must be between {MIN_RUN_SECONDS}s and {limit}s."
            )
    if has_time:
        moment = parse_rfc3339(sched["terminationTime"])
        if moment is None:
            raise invalid(
                "Invalid value for field 'resource.scheduling.terminationTime': "
                f"'{sched['terminationTime']}'. Must be an RFC 3339 timestamp."
            )
        if now_unix is not None and not 0 < moment - now_unix <= MAX_RUN_SECONDS:
            raise invalid(
                "Invalid value for field 'resource.scheduling.terminationTime': "
                f"'{sched['terminationTime']}'. Must be in the future, at most 120 days ahead."
            )
    if model == "FLEX_START" and not has_duration:
        raise ApiError(
            400,
            "required",
            "Required field 'resource.scheduling.maxRunDuration' not specified: "
            "FLEX_START instances need a run duration.",
        )


def normalize_scheduling(sched: dict, has_gpus: bool, now_unix: float | None = None) -> dict:
    """GCE's defaults and checks (docs/gce-behaviour.md, "Spot preemption", "Host maintenance",
    "The Instance resource", "Spot and GPU scheduling options"). ``now_unix``: check that a
    terminationTime is in the future (None: do not)."""
    sched = dict(sched or {})
    model = sched.get("provisioningModel", "STANDARD")
    if model not in PROVISIONING_MODELS:
        raise invalid(f"Invalid value for field 'scheduling.provisioningModel': '{model}'.")
    if "preemptionNoticeDuration" in sched:
        if model != "SPOT":
            raise invalid(
                "Invalid value for field 'resource.scheduling.preemptionNoticeDuration': "
                "a preemption notice is for Spot instances only (provisioningModel SPOT)."
            )
        duration_seconds("preemptionNoticeDuration", sched["preemptionNoticeDuration"])
    _check_time_limit(sched, model, now_unix)
    action = sched.get("instanceTerminationAction", "STOP")
    if action not in TERMINATION_ACTIONS:
        raise invalid(
            f"Invalid value for field 'scheduling.instanceTerminationAction': '{action}'."
        )
    if model == "FLEX_START":
        if sched.get("preemptible"):
            raise invalid(
                "Invalid value for field 'resource.scheduling.preemptible': 'true'. "
                "FLEX_START instances are not preemptible."
            )
        if sched.get("automaticRestart") is True:
            raise invalid(
                "Invalid value for field 'resource.scheduling.automaticRestart': 'true'. "
                "FLEX_START instances cannot be automatically restarted."
            )
        maintenance = sched.get("onHostMaintenance", "TERMINATE")
        if maintenance != "TERMINATE":
            raise invalid(
                "Invalid value for field 'resource.scheduling.onHostMaintenance': "
                f"'{maintenance}'. FLEX_START instances only support TERMINATE."
            )
        sched.update(
            automaticRestart=False,
            onHostMaintenance="TERMINATE",
            preemptible=False,
            instanceTerminationAction=action,
        )
    elif is_spot({"scheduling": sched}):
        if sched.get("automaticRestart") is True:
            raise invalid(
                "Invalid value for field 'resource.scheduling.automaticRestart': 'true'. "
                "Preemptible and Spot instances cannot be automatically restarted."
            )
        maintenance = sched.get("onHostMaintenance", "TERMINATE")
        if maintenance != "TERMINATE":
            raise invalid(
                "Invalid value for field 'resource.scheduling.onHostMaintenance': "
                f"'{maintenance}'. Preemptible and Spot instances only support TERMINATE."
            )
        sched.update(
            automaticRestart=False,
            onHostMaintenance="TERMINATE",
            preemptible=True,
            instanceTerminationAction=action,
        )
    else:
        sched.setdefault("automaticRestart", True)
        sched.setdefault("onHostMaintenance", "MIGRATE")
        sched["preemptible"] = False
    maintenance = sched["onHostMaintenance"]
    if maintenance not in ON_HOST_MAINTENANCE:
        raise invalid(f"Invalid value for field 'scheduling.onHostMaintenance': '{maintenance}'.")
    if has_gpus and sched["onHostMaintenance"] == "MIGRATE":
        raise invalid(
            "Instances with guest accelerators do not support live migration: "
            "set scheduling.onHostMaintenance to TERMINATE."
        )
    sched["provisioningModel"] = model
    return sched


@dataclass(frozen=True)
class InstanceSpec:
    """An `instances.insert` body that passed GCE's checks: what a new instance is made of."""

    key: InstanceKey
    body: dict
    machine_type: str
    accelerators: list[dict]
    scheduling: dict
    metadata_items: list[dict]
    boot_disk: dict
    network_interface: dict

    @property
    def source_image(self) -> str:
        return self.boot_disk["initializeParams"]["sourceImage"]

    @classmethod
    def parse(
        cls, project: str, zone: str, body: dict, now_unix: float | None = None
    ) -> InstanceSpec:
        """Check the body as GCE does, in its order; the first problem is the 400 answered.
        ``now_unix``: the emulator's clock, to check a scheduling.terminationTime."""
        name = body.get("name", "")
        if not links.NAME_RE.match(name):
            raise invalid(
                f"Invalid value for field 'resource.name': '{name}'. Must be a match of regex "
                "'(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'"
            )
        if not body.get("machineType"):
            raise ApiError(400, "required", "Required field 'resource.machineType' not specified")
        accelerators = [
            {
                "acceleratorType": links.url(
                    f"projects/{project}/zones/{zone}/acceleratorTypes/"
                    + links.last(a.get("acceleratorType", ""))
                ),
                "acceleratorCount": int(a.get("acceleratorCount", 1)),
            }
            for a in body.get("guestAccelerators", [])
        ]
        scheduling = normalize_scheduling(body.get("scheduling", {}), bool(accelerators), now_unix)
        items = validate_metadata_items((body.get("metadata") or {}).get("items", []))
        disks = body.get("disks", [])
        boot_disks = [d for d in disks if d.get("boot")] or disks[:1]
        if not boot_disks:
            raise ApiError(
                400, "required", "Required field 'resource.disks' not specified: add a boot disk"
            )
        if not (boot_disks[0].get("initializeParams") or {}).get("sourceImage"):
            raise invalid(
                "The boot disk needs initializeParams.sourceImage (a registered localgce image)."
            )
        return cls(
            key=InstanceKey(project, zone, name),
            body=body,
            machine_type=links.last(body["machineType"]),
            accelerators=accelerators,
            scheduling=scheduling,
            metadata_items=items,
            boot_disk=boot_disks[0],
            network_interface=parse_network_interface(project, zone, body),
        )


def parse_network_interface(project: str, zone: str, body: dict) -> dict:
    """The one network interface localgce models: network, subnetwork, external IP or none.

    The network defaults to `default`; a subnetwork must be in the zone's region; no
    accessConfigs (or an empty list) means no external IP, as on GCE. A body without any
    network interface gets the default network with an external IP (a convenience of localgce's
    for hand-written bodies; the kit always sends one)."""
    if not body.get("networkInterfaces"):
        return {"network": "default", "subnetwork": "", "region": "", "external": True}
    nics = body["networkInterfaces"]
    if not isinstance(nics, list) or len(nics) != 1 or not isinstance(nics[0], dict):
        raise invalid(
            "Invalid value for field 'resource.networkInterfaces': localgce models one network "
            "interface per instance."
        )
    nic = nics[0]
    network = nic.get("network") or "global/networks/default"
    match = NETWORK_PATH_RE.match(network)
    if not match:
        raise invalid(
            f"Invalid value for field 'resource.networkInterfaces[0].network': '{network}'. "
            "The URL is malformed."
        )
    out = {"network": match.group("name"), "subnetwork": "", "region": "", "external": False}
    subnetwork = nic.get("subnetwork")
    if subnetwork:
        sub = SUBNETWORK_PATH_RE.match(subnetwork)
        if not sub:
            raise invalid(
                "Invalid value for field 'resource.networkInterfaces[0].subnetwork': "
                f"'{subnetwork}'. The URL is malformed."
            )
        if sub.group("region") != zone.rsplit("-", 1)[0]:
            raise invalid(
                "Invalid value for field 'resource.networkInterfaces[0].subnetwork': "
                f"'{subnetwork}'. The subnetwork must be in the instance's region "
                f"'{zone.rsplit('-', 1)[0]}'."
            )
        out.update(subnetwork=sub.group("name"), region=sub.group("region"))
    configs = nic.get("accessConfigs") or []
    if not isinstance(configs, list) or len(configs) > 1:
        raise invalid(
            "Invalid value for field 'resource.networkInterfaces[0].accessConfigs': at most one "
            "access config is supported."
        )
    if configs:
        kind = configs[0].get("type", "ONE_TO_ONE_NAT")
        if kind != "ONE_TO_ONE_NAT":
            raise invalid(
                "Invalid value for field 'resource.networkInterfaces[0].accessConfigs[0].type': "
                f"'{kind}'."
            )
        out["external"] = True
    return out


def network_interface_resource(project: str, nic: dict) -> dict:
    """The API view of a parsed network interface (an access config only with an external IP)."""
    out = {
        "kind": "compute#networkInterface",
        "name": "nic0",
        "network": links.url(f"projects/{project}/global/networks/{nic['network']}"),
        "networkIP": "127.0.0.1",
    }
    if nic["subnetwork"]:
        out["subnetwork"] = links.url(
            f"projects/{project}/regions/{nic['region']}/subnetworks/{nic['subnetwork']}"
        )
    if nic["external"]:
        out["accessConfigs"] = [
            {
                "kind": "compute#accessConfig",
                "type": "ONE_TO_ONE_NAT",
                "name": "External NAT",
                "natIP": "127.0.0.1",
            }
        ]
    return out


def new_instance(store: Store, spec: InstanceSpec, image: dict) -> InstanceRecord:
    """A PROVISIONING instance with GCE's defaults for what the body left out (lock held)."""
    project, zone, name = spec.key
    body, boot_disk = spec.body, spec.boot_disk
    proj = store.project(project)  # projects exist on first use
    zone_path = f"projects/{project}/zones/{zone}"
    disk_name = boot_disk.get("deviceName") or name
    resource = {
        "kind": "compute#instance",
        "id": store.new_id(),
        "name": name,
        "description": body.get("description", ""),
        "zone": links.url(zone_path),
        "selfLink": links.url(links.instance_path(project, zone, name)),
        "status": Status.PROVISIONING,
        "creationTimestamp": store.timestamp(),
        "machineType": links.url(f"{zone_path}/machineTypes/{spec.machine_type}"),
        "cpuPlatform": "localgce",
        "canIpForward": False,
        "deletionProtection": bool(body.get("deletionProtection", False)),
        "hostname": f"{name}.{zone}.c.{project}.internal",
        "disks": [
            {
                "kind": "compute#attachedDisk",
                "type": "PERSISTENT",
                "mode": "READ_WRITE",
                "source": links.url(f"{zone_path}/disks/{disk_name}"),
                "deviceName": disk_name,
                "index": 0,
                "boot": True,
                "autoDelete": bool(boot_disk.get("autoDelete", True)),
                "diskSizeGb": str(
                    boot_disk["initializeParams"].get("diskSizeGb", image.get("diskSizeGb", "10"))
                ),
            }
        ],
        "guestAccelerators": spec.accelerators,
        "scheduling": spec.scheduling,
        "metadata": {
            "kind": "compute#metadata",
            "fingerprint": fingerprint(spec.metadata_items, store.new_hex()),
            "items": spec.metadata_items,
        },
        "serviceAccounts": body.get("serviceAccounts")
        or [
            {
                "email": proj["defaultServiceAccount"],
                "scopes": list(DEFAULT_SCOPES),
            }
        ],
        "networkInterfaces": [network_interface_resource(project, spec.network_interface)],
        "tags": {
            "items": (body.get("tags") or {}).get("items", []),
            "fingerprint": fingerprint([], store.new_hex()),
        },
        "labels": body.get("labels", {}),
        "labelFingerprint": fingerprint([], store.new_hex()),
        "fingerprint": fingerprint([], store.new_hex()),
    }
    return InstanceRecord(
        resource=resource,
        guest={
            "project": project,
            "zone": zone,
            "boot": 0,
            "preempted": False,
            "maintenanceEvent": "NONE",
            "imageDir": image["_dir"],
            "imagePath": links.image_path(image["_project"], image["name"]),
        },
    )
