"""instances: insert, get, list, start, stop, delete, setMetadata, setScheduling,
getSerialPortOutput, simulateMaintenanceEvent, and the emulator-only `preempt`.

The handlers parse the request, call, and answer. Validation happens before anything changes
and answers GCE's HTTP errors (400/404/409/412); what a new instance looks like, with GCE's
defaults so that `get` shows what GCE would show, is instance_resource.py's; the state change
itself runs as the Operation's work (operations.py) in lifecycle.py.
"""

from __future__ import annotations

from collections.abc import Callable

from localgce import links
from localgce.errors import ApiError, fingerprint_mismatch, invalid, not_found
from localgce.httpserver import Request
from localgce.images import Images
from localgce.instance_resource import InstanceSpec, normalize_scheduling, validate_metadata_items
from localgce.lifecycle import Lifecycle
from localgce.listing import list_response
from localgce.operations import Operations
from localgce.state import InstanceKey, InstanceRecord, Status, Store, fingerprint


class Instances:
    def __init__(self, store: Store, ops: Operations, images: Images, lifecycle: Lifecycle):
        self.store = store
        self.ops = ops
        self.images = images
        self.lifecycle = lifecycle

    # --- helpers -----------------------------------------------------------------------------
    def _rec(self, key: InstanceKey) -> InstanceRecord:
        rec = self.store.instances.get(key)
        if rec is None:
            raise not_found(links.instance_path(*key))
        return rec

    def render(self, rec: InstanceRecord) -> dict:
        """The API view, with the natIP that publishes this boot's ssh port (emulator-only form)."""
        out = dict(rec.resource)
        port = rec.guest.get("sshPort")
        nat_ip = f"127.0.0.1:{port}" if port and rec.status == Status.RUNNING else "127.0.0.1"
        nic = dict(out["networkInterfaces"][0])
        if nic.get("accessConfigs"):  # no external IP: nothing to publish
            nic["accessConfigs"] = [dict(nic["accessConfigs"][0], natIP=nat_ip)]
        out["networkInterfaces"] = [nic, *out["networkInterfaces"][1:]]
        return out

    def _run(
        self, op_type: str, req: Request, key: InstanceKey, work: Callable[[InstanceKey], None]
    ) -> dict:
        """The Operation of a call on an existing instance (else 404), doing `work(key)`."""
        with self.store.lock:
            target_id = self._rec(key).resource["id"]
        return self.ops.run(
            op_type,
            key.project,
            links.instance_path(*key),
            target_id,
            lambda: work(key),
            zone=key.zone,
            request_id=req.query.get("requestId"),
        )

    # --- handlers --------------------------------------------------------------------------------
    def insert(self, req: Request, project: str, zone: str) -> dict:
        spec = InstanceSpec.parse(project, zone, req.json(), now_unix=self.store.clock())
        image = self.images.resolve(spec.source_image, project)
        if zone in self.store.knobs.exhausted_zones:
            return self._zone_exhausted(spec.key)
        rec = self.lifecycle.create(spec, image)
        return self.ops.run(
            "insert",
            project,
            links.instance_path(*spec.key),
            rec.resource["id"],
            lambda: self.lifecycle.boot(spec.key),
            zone=zone,
            request_id=req.query.get("requestId"),
        )

    def _zone_exhausted(self, key: InstanceKey) -> dict:
        """The insert is accepted, and its Operation fails as GCE's does when a zone is full."""
        with self.store.lock:
            self.store.project(key.project)
        return self.ops.fail(
            "insert",
            key.project,
            links.instance_path(*key),
            key.zone,
            ApiError(
                503,
                "ZONE_RESOURCE_POOL_EXHAUSTED",
                f"The zone 'projects/{key.project}/zones/{key.zone}' does not have enough "
                "resources available to fulfill the request. Try a different zone, or try again "
                "later.",
            ),
            code="ZONE_RESOURCE_POOL_EXHAUSTED",
        )

    def get(self, req: Request, project: str, zone: str, instance: str) -> dict:
        with self.store.lock:
            return self.render(self._rec(InstanceKey(project, zone, instance)))

    def list(self, req: Request, project: str, zone: str) -> dict:
        with self.store.lock:
            items = [
                self.render(rec)
                for key, rec in sorted(self.store.instances.items())
                if key.project == project and key.zone == zone
            ]
        return list_response(
            "compute#instanceList",
            items,
            req.query,
            links.url(f"projects/{project}/zones/{zone}/instances"),
        )

    def start(self, req: Request, project: str, zone: str, instance: str) -> dict:
        return self._run("start", req, InstanceKey(project, zone, instance), self.lifecycle.start)

    def stop(self, req: Request, project: str, zone: str, instance: str) -> dict:
        key = InstanceKey(project, zone, instance)
        with self.store.lock:
            model = self._rec(key).resource["scheduling"].get("provisioningModel")
        if model == "FLEX_START":
            # docs/gce-behaviour.md, "Spot and GPU scheduling options": flex-start VMs run until
            # their run duration ends (or are deleted); they cannot be stopped or suspended.
            raise invalid(
                f"Instance '{instance}' uses the FLEX_START provisioning model, which does not "
                "support stopping; delete the instance instead."
            )
        return self._run("stop", req, key, self.lifecycle.stop)

    def delete(self, req: Request, project: str, zone: str, instance: str) -> dict:
        return self._run("delete", req, InstanceKey(project, zone, instance), self.lifecycle.delete)

    def set_metadata(self, req: Request, project: str, zone: str, instance: str) -> dict:
        body = req.json()
        items = validate_metadata_items(body.get("items", []))
        key = InstanceKey(project, zone, instance)
        with self.store.lock:
            if body.get("fingerprint") != self._rec(key).resource["metadata"]["fingerprint"]:
                raise fingerprint_mismatch()

        def work(key: InstanceKey) -> None:
            with self.store.lock:
                current = self._rec(key)
                current.resource["metadata"] = {
                    "kind": "compute#metadata",
                    "fingerprint": fingerprint(items, self.store.new_hex()),
                    "items": items,
                }
                self.store.commit()
            self.lifecycle.refresh_ssh_keys(key)

        return self._run("setMetadata", req, key, work)

    def set_scheduling(self, req: Request, project: str, zone: str, instance: str) -> dict:
        body = req.json()
        key = InstanceKey(project, zone, instance)
        with self.store.lock:
            rec = self._rec(key)
            current = rec.resource["scheduling"]
            # Preemptibility is fixed at create time here (GCE: only while TERMINATED).
            merged = dict(body)
            for fixed in ("provisioningModel", "preemptible"):
                if fixed in current:
                    merged.setdefault(fixed, current[fixed])
            sched = normalize_scheduling(
                merged, bool(rec.resource.get("guestAccelerators")), self.store.clock()
            )

        def work(key: InstanceKey) -> None:
            with self.store.lock:
                self._rec(key).resource["scheduling"] = sched
                self.store.commit()

        return self._run("setScheduling", req, key, work)

    def serial_port(self, req: Request, project: str, zone: str, instance: str) -> dict:
        try:
            port = int(req.query.get("port") or 1)
            start = int(req.query.get("start") or 0)
        except ValueError as exc:
            raise invalid("port and start must be integers") from exc
        if port not in (1, 2, 3, 4):
            raise invalid(f"Invalid value for field 'port': '{port}'. Must be 1-4.")
        key = InstanceKey(project, zone, instance)
        with self.store.lock:
            self._rec(key)
        if port == 1:
            data, used_start, next_offset = self.lifecycle.serial(key).read(start)
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
        key = InstanceKey(project, zone, instance)
        return self._run("simulateMaintenanceEvent", req, key, self.lifecycle.simulate_maintenance)

    def preempt(self, req: Request, project: str, zone: str, instance: str) -> dict:
        """Emulator-only chaos: the full Spot preemption, as if Compute Engine reclaimed the VM."""
        key = InstanceKey(project, zone, instance)
        return self._run("compute.instances.preempted", req, key, self.lifecycle.preempt)
