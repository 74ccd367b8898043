"""instances: insert, get, list, start, stop, delete, setMetadata, setScheduling,
getSerialPortOutput, simulateMaintenanceEvent, and the emulator-only `preempt`.

Validation happens before anything changes and answers GCE's HTTP errors (400/404/409/412);
the state change itself runs as the Operation's work (operations.py). Unset scheduling fields get
GCE's defaults, so `get` shows what GCE would show.
"""

from __future__ import annotations

import re

from localgce import links
from localgce.errors import ApiError, already_exists, fingerprint_mismatch, invalid, not_found
from localgce.httpserver import Request
from localgce.images import Images
from localgce.lifecycle import Lifecycle
from localgce.listing import list_response
from localgce.operations import Operations
from localgce.state import InstanceRecord, Store, fingerprint

METADATA_KEY_RE = re.compile(r"^[a-zA-Z0-9_-]{1,127}$")
METADATA_VALUE_MAX_BYTES = 256 * 1024
METADATA_TOTAL_MAX_BYTES = 512 * 1024
PROVISIONING_MODELS = {"STANDARD", "SPOT"}
TERMINATION_ACTIONS = {"STOP", "DELETE"}
ON_HOST_MAINTENANCE = {"MIGRATE", "TERMINATE"}


def validate_metadata_items(items) -> list[dict]:
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


def normalize_scheduling(sched: dict, has_gpus: bool) -> dict:
    """GCE's defaults and checks (gce-semantics §2.3, §2.5, §3.2)."""
    sched = dict(sched or {})
    model = sched.get("provisioningModel", "STANDARD")
    if model not in PROVISIONING_MODELS:
        raise invalid(f"Invalid value for field 'scheduling.provisioningModel': '{model}'.")
    spot = model == "SPOT" or bool(sched.get("preemptible"))
    if spot:
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


class Instances:
    def __init__(self, store: Store, ops: Operations, images: Images, lifecycle: Lifecycle):
        self.store = store
        self.ops = ops
        self.images = images
        self.lifecycle = lifecycle

    # --- helpers -----------------------------------------------------------------------------
    def _rec(self, project: str, zone: str, name: str) -> InstanceRecord:
        rec = self.store.instances.get((project, zone, name))
        if rec is None:
            raise not_found(links.instance_path(project, zone, name))
        return rec

    def render(self, rec: InstanceRecord) -> dict:
        """The API view, with the natIP that publishes this boot's ssh port (emulator-only form)."""
        out = dict(rec.resource)
        port = rec.guest.get("sshPort")
        nat_ip = f"127.0.0.1:{port}" if port and rec.status == "RUNNING" else "127.0.0.1"
        nic = dict(out["networkInterfaces"][0])
        nic["accessConfigs"] = [dict(nic["accessConfigs"][0], natIP=nat_ip)]
        out["networkInterfaces"] = [nic, *out["networkInterfaces"][1:]]
        return out

    def _run(self, op_type, project, zone, name, work, req: Request) -> dict:
        with self.store.lock:
            rec = self._rec(project, zone, name)
            target_id = rec.resource["id"]
        return self.ops.run(
            op_type,
            project,
            links.instance_path(project, zone, name),
            target_id,
            work,
            zone=zone,
            request_id=req.query.get("requestId"),
        )

    # --- handlers --------------------------------------------------------------------------------
    def insert(self, req: Request, project: str, zone: str) -> dict:
        body = req.json()
        name = body.get("name", "")
        path = links.instance_path(project, zone, name)
        if not links.NAME_RE.match(name):
            raise invalid(
                f"Invalid value for field 'resource.name': '{name}'. Must be a match of regex "
                "'(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'"
            )
        if not body.get("machineType"):
            raise ApiError(400, "required", "Required field 'resource.machineType' not specified")
        machine_type = links.last(body["machineType"])
        zone_path = f"projects/{project}/zones/{zone}"
        accelerators = [
            {
                "acceleratorType": links.url(
                    f"{zone_path}/acceleratorTypes/{links.last(a.get('acceleratorType', ''))}"
                ),
                "acceleratorCount": int(a.get("acceleratorCount", 1)),
            }
            for a in body.get("guestAccelerators", [])
        ]
        scheduling = normalize_scheduling(body.get("scheduling", {}), bool(accelerators))
        items = validate_metadata_items((body.get("metadata") or {}).get("items", []))
        boot_disks = [d for d in body.get("disks", []) if d.get("boot")] or body.get("disks", [])[
            :1
        ]
        if not boot_disks:
            raise ApiError(
                400, "required", "Required field 'resource.disks' not specified: add a boot disk"
            )
        source_image = (boot_disks[0].get("initializeParams") or {}).get("sourceImage")
        if not source_image:
            raise invalid(
                "The boot disk needs initializeParams.sourceImage (a registered localgce image)."
            )
        image = self.images.resolve(source_image, project)

        if zone in self.store.knobs.exhausted_zones:
            with self.store.lock:
                self.store.project(project)
            return self.ops.fail(
                "insert",
                project,
                path,
                zone,
                ApiError(
                    503,
                    "ZONE_RESOURCE_POOL_EXHAUSTED",
                    f"The zone 'projects/{project}/zones/{zone}' does not have enough resources "
                    "available to fulfill the request. Try a different zone, or try again later.",
                ),
                code="ZONE_RESOURCE_POOL_EXHAUSTED",
            )

        with self.store.lock:
            proj = self.store.project(project)
            if (project, zone, name) in self.store.instances:
                raise already_exists(path)
            instance_id = self.store.new_id()
            disk_name = boot_disks[0].get("deviceName") or name
            resource = {
                "kind": "compute#instance",
                "id": instance_id,
                "name": name,
                "description": body.get("description", ""),
                "zone": links.url(f"projects/{project}/zones/{zone}"),
                "selfLink": links.url(path),
                "status": "PROVISIONING",
                "creationTimestamp": self.store.timestamp(),
                "machineType": links.url(
                    f"projects/{project}/zones/{zone}/machineTypes/{machine_type}"
                ),
                "cpuPlatform": "localgce",
                "canIpForward": False,
                "deletionProtection": bool(body.get("deletionProtection", False)),
                "hostname": f"{name}.{zone}.c.{project}.internal",
                "disks": [
                    {
                        "kind": "compute#attachedDisk",
                        "type": "PERSISTENT",
                        "mode": "READ_WRITE",
                        "source": links.url(f"projects/{project}/zones/{zone}/disks/{disk_name}"),
                        "deviceName": disk_name,
                        "index": 0,
                        "boot": True,
                        "autoDelete": bool(boot_disks[0].get("autoDelete", True)),
                        "diskSizeGb": str(
                            (boot_disks[0].get("initializeParams") or {}).get(
                                "diskSizeGb", image.get("diskSizeGb", "10")
                            )
                        ),
                    }
                ],
                "guestAccelerators": accelerators,
                "scheduling": scheduling,
                "metadata": {
                    "kind": "compute#metadata",
                    "fingerprint": fingerprint(items, self.store.new_hex()),
                    "items": items,
                },
                "serviceAccounts": body.get("serviceAccounts")
                or [
                    {
                        "email": proj["defaultServiceAccount"],
                        "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
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
                    "fingerprint": fingerprint([], self.store.new_hex()),
                },
                "labels": body.get("labels", {}),
                "labelFingerprint": fingerprint([], self.store.new_hex()),
                "fingerprint": fingerprint([], self.store.new_hex()),
            }
            rec = InstanceRecord(
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
            rec.guest["disk"] = str(self.lifecycle.instance_dir(rec) / "disk")
            self.store.instances[(project, zone, name)] = rec
            self.store.commit()
        return self.ops.run(
            "insert",
            project,
            path,
            instance_id,
            lambda: self.lifecycle.boot((project, zone, name)),
            zone=zone,
            request_id=req.query.get("requestId"),
        )

    def get(self, req: Request, project: str, zone: str, instance: str) -> dict:
        with self.store.lock:
            return self.render(self._rec(project, zone, instance))

    def list(self, req: Request, project: str, zone: str) -> dict:
        with self.store.lock:
            items = [
                self.render(rec)
                for (p, z, _), rec in sorted(self.store.instances.items())
                if p == project and z == zone
            ]
        return list_response(
            "compute#instanceList",
            items,
            req.query,
            links.url(f"projects/{project}/zones/{zone}/instances"),
        )

    def start(self, req: Request, project: str, zone: str, instance: str) -> dict:
        key = (project, zone, instance)
        return self._run("start", project, zone, instance, lambda: self.lifecycle.start(key), req)

    def stop(self, req: Request, project: str, zone: str, instance: str) -> dict:
        key = (project, zone, instance)
        return self._run("stop", project, zone, instance, lambda: self.lifecycle.stop(key), req)

    def delete(self, req: Request, project: str, zone: str, instance: str) -> dict:
        key = (project, zone, instance)
        return self._run("delete", project, zone, instance, lambda: self.lifecycle.delete(key), req)

    def set_metadata(self, req: Request, project: str, zone: str, instance: str) -> dict:
        body = req.json()
        items = validate_metadata_items(body.get("items", []))
        with self.store.lock:
            rec = self._rec(project, zone, instance)
            if body.get("fingerprint") != rec.resource["metadata"]["fingerprint"]:
                raise fingerprint_mismatch()
        key = (project, zone, instance)

        def work() -> None:
            with self.store.lock:
                current = self._rec(project, zone, instance)
                current.resource["metadata"] = {
                    "kind": "compute#metadata",
                    "fingerprint": fingerprint(items, self.store.new_hex()),
                    "items": items,
                }
                self.store.commit()
            self.lifecycle.refresh_ssh_keys(key)

        return self._run("setMetadata", project, zone, instance, work, req)

    def set_scheduling(self, req: Request, project: str, zone: str, instance: str) -> dict:
        body = req.json()
        with self.store.lock:
            rec = self._rec(project, zone, instance)
            current = rec.resource["scheduling"]
            # Preemptibility is fixed at create time here (GCE: only while TERMINATED).
            merged = dict(body)
            for fixed in ("provisioningModel", "preemptible"):
                if fixed in current:
                    merged.setdefault(fixed, current[fixed])
            sched = normalize_scheduling(merged, bool(rec.resource.get("guestAccelerators")))

        def work() -> None:
            with self.store.lock:
                self._rec(project, zone, instance).resource["scheduling"] = sched
                self.store.commit()

        return self._run("setScheduling", project, zone, instance, work, req)

    def serial_port(self, req: Request, project: str, zone: str, instance: str) -> dict:
        try:
            port = int(req.query.get("port") or 1)
            start = int(req.query.get("start") or 0)
        except ValueError as exc:
            raise invalid("port and start must be integers") from exc
        if port not in (1, 2, 3, 4):
            raise invalid(f"Invalid value for field 'port': '{port}'. Must be 1-4.")
        with self.store.lock:
            self._rec(project, zone, instance)
        if port == 1:
            data, used_start, next_offset = self.lifecycle.serial((project, zone, instance)).read(
                start
            )
        else:
            data, used_start, next_offset = b"", 0, 0
        return {
            "kind": "compute#serialPortOutput",
            "contents": data.decode(errors="replace"),
            "start": str(used_start),
            "next": str(next_offset),
            "selfLink": links.url(
                links.instance_path(project, zone, instance) + f"/serialPort?port={port}"
            ),
        }

    def simulate_maintenance_event(
        self, req: Request, project: str, zone: str, instance: str
    ) -> dict:
        key = (project, zone, instance)
        with self.store.lock:
            self._rec(project, zone, instance)
        return self._run(
            "simulateMaintenanceEvent",
            project,
            zone,
            instance,
            lambda: self.lifecycle.simulate_maintenance(key),
            req,
        )

    def preempt(self, req: Request, project: str, zone: str, instance: str) -> dict:
        """Emulator-only chaos: the full Spot preemption, as if Compute Engine reclaimed the VM."""
        key = (project, zone, instance)
        with self.store.lock:
            self._rec(project, zone, instance)
        return self._run(
            "compute.instances.preempted",
            project,
            zone,
            instance,
            lambda: self.lifecycle.preempt(key),
            req,
        )
