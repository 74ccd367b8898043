"""The Instance resource: GCE's checks and defaults, and building a new one.

Everything here is pure: it reads a request body and the store's values and either raises the
API error GCE would answer (400) or returns resources. instances.py parses requests and answers;
this module decides what an instance looks like (docs/gce-behaviour.md, "The Instance resource").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from localgce import links
from localgce.errors import ApiError, invalid
from localgce.state import InstanceKey, InstanceRecord, Status, Store, fingerprint

METADATA_KEY_RE = re.compile(r"^[a-zA-Z0-9_-]{1,127}$")
METADATA_VALUE_MAX_BYTES = 256 * 1024
METADATA_TOTAL_MAX_BYTES = 512 * 1024
PROVISIONING_MODELS = {"STANDARD", "SPOT"}
TERMINATION_ACTIONS = {"STOP", "DELETE"}
ON_HOST_MAINTENANCE = {"MIGRATE", "TERMINATE"}
DEFAULT_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


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


def normalize_scheduling(sched: dict, has_gpus: bool) -> dict:
    """GCE's defaults and checks (docs/gce-behaviour.md, "Spot preemption", "Host maintenance",
    "The Instance resource")."""
    sched = dict(sched or {})
    model = sched.get("provisioningModel", "STANDARD")
    if model not in PROVISIONING_MODELS:
        raise invalid(f"Invalid value for field 'scheduling.provisioningModel': '{model}'.")
    if is_spot({"scheduling": sched}):
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
        action = sched.get("instanceTerminationAction", "STOP")
        if action not in TERMINATION_ACTIONS:
            raise invalid(
                f"Invalid value for field 'scheduling.instanceTerminationAction': '{action}'."
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

    @property
    def source_image(self) -> str:
        return self.boot_disk["initializeParams"]["sourceImage"]

    @classmethod
    def parse(cls, project: str, zone: str, body: dict) -> InstanceSpec:
        """Check the body as GCE does, in its order; the first problem is the 400 answered."""
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
        scheduling = normalize_scheduling(body.get("scheduling", {}), bool(accelerators))
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
        )


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
        "networkInterfaces": [
            {
                "kind": "compute#networkInterface",
                "name": "nic0",
                "network": links.url(f"projects/{project}/global/networks/default"),
                "networkIP": "127.0.0.1",
                "accessConfigs": [
                    {
                        "kind": "compute#accessConfig",
                        "type": "ONE_TO_ONE_NAT",
                        "name": "External NAT",
                        "natIP": "127.0.0.1",
                    }
                ],
            }
        ],
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
