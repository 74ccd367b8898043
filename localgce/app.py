"""The compute endpoint: Google's route table, the handlers localgce models, and the admin API.

Every Compute request is resolved against Google's Compute v1 discovery document
(discovery.py) to a method id, checked against that method's declaration, then matched against
the `faults` knob (faults.py), and only then handed to the handler attached to the method id.
A method of the document without a handler answers 501; a path of no method answers 404.
The emulator-only routes (`/localgce/v1/...` and the `.../preempt` chaos verb) are outside the
document and its validation (auth.py still guards them).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable

from localgce import discovery, faults, regions
from localgce.accelerators import AcceleratorTypes
from localgce.batch import BatchApi
from localgce.errors import not_found, not_implemented
from localgce.httpserver import Request, Response, Router
from localgce.images import Images
from localgce.instances import Instances
from localgce.lifecycle import Lifecycle
from localgce.networks import Networks
from localgce.operations import Operations
from localgce.projects import Projects
from localgce.state import InstanceKey, Status, Store

P = "/compute/v1/projects/{project}"
I = P + "/zones/{zone}/instances/{instance}"  # noqa: E741 - reads as a path, not a number


class Admin:
    """Emulator-only: knobs and health (docs/localgce.md)."""

    def __init__(self, store: Store, endpoints: dict):
        self.store = store
        self.endpoints = endpoints

    def health(self, req: Request) -> dict:
        with self.store.lock:
            return {"status": "ok", "instances": len(self.store.instances), **self.endpoints}

    def get_config(self, req: Request) -> dict:
        with self.store.lock:
            return self.store.knobs.to_json()

    def set_config(self, req: Request) -> dict:
        body = req.json()
        with self.store.lock:
            self.store.knobs.update_from_json(body)
            self.store.commit()
            return self.store.knobs.to_json()


def _is_extension(path: str) -> bool:
    return path.startswith("/localgce/") or path.endswith("/preempt")


class ComputeApi:
    """Dispatch: emulator-only routes, else discovery method → validate → faults → handler."""

    def __init__(
        self,
        store: Store,
        ops: Operations,
        handlers: dict[str, Callable[..., Response | dict]],
        extensions: Router,
        batch: BatchApi | None = None,
    ):
        self.store = store
        self.ops = ops
        self.handlers = handlers
        self.extensions = extensions
        self.batch = batch  # Cloud Batch v1 (`/v1/...`) on the same endpoint

    def dispatch(self, req: Request) -> Response:
        if _is_extension(req.path):
            return self.extensions.dispatch(req)
        if self.batch is not None and self.batch.handles(req.path):
            return self.batch.dispatch(req)
        resolved = discovery.resolve(req.method, req.path)
        if resolved is None:
            raise not_found(req.path.lstrip("/"))
        method, raw_params = resolved
        params = {k: urllib.parse.unquote(v) for k, v in raw_params.items()}
        body = req.json() if req.body.strip() else None
        discovery.validate(method, params, req.query, body)
        fault = faults.take(self.store, method.id, params.get("zone"))
        if fault is not None:
            result = faults.inject(fault, method, params, req, self.store, self.ops)
            return Response(body=result)
        handler = self.handlers.get(method.id)
        if handler is None:
            raise not_implemented(method.id)
        req.params = params
        result = handler(req, **params)
        return result if isinstance(result, Response) else Response(body=result)


class Admission:
    """The accelerator-offering and GPU-quota check in front of instances.insert/start
    (regions.admit); the instance handlers themselves are unchanged."""

    def __init__(self, store: Store, ops: Operations, instances: Instances):
        self.store = store
        self.ops = ops
        self.instances = instances

    def insert(self, req: Request, project: str, zone: str):
        body = req.json()
        key = InstanceKey(project, zone, str(body.get("name", "")))
        failed = regions.admit(self.store, self.ops, "insert", key, body.get("guestAccelerators"))
        return failed or self.instances.insert(req, project=project, zone=zone)

    def start(self, req: Request, project: str, zone: str, instance: str):
        key = InstanceKey(project, zone, instance)
        with self.store.lock:
            rec = self.store.instances.get(key)
            stopped = rec is not None and rec.status == Status.TERMINATED
            accelerators = list(rec.resource.get("guestAccelerators") or []) if rec else []
        failed = None
        if stopped:
            failed = regions.admit(self.store, self.ops, "start", key, accelerators, exclude=key)
        return failed or self.instances.start(req, project=project, zone=zone, instance=instance)


def build_router(store: Store, lifecycle: Lifecycle, endpoints: dict) -> ComputeApi:
    ops = Operations(store)
    images = Images(store, ops)
    instances = Instances(store, ops, images, lifecycle)
    admission = Admission(store, ops, instances)
    projects = Projects(store, ops, lifecycle)
    accelerator_types = AcceleratorTypes(store)
    region_api = regions.Regions(store)
    networks = Networks(store)
    admin = Admin(store, endpoints)
    handlers = {
        "compute.instances.insert": admission.insert,
        "compute.instances.list": instances.list,
        "compute.instances.get": instances.get,
        "compute.instances.delete": instances.delete,
        "compute.instances.start": admission.start,
        "compute.instances.stop": instances.stop,
        "compute.instances.setMetadata": instances.set_metadata,
        "compute.instances.setScheduling": instances.set_scheduling,
        "compute.instances.getSerialPortOutput": instances.serial_port,
        "compute.instances.simulateMaintenanceEvent": instances.simulate_maintenance_event,
        "compute.images.insert": images.insert,
        "compute.images.list": images.list,
        "compute.images.getFromFamily": images.get_from_family,
        "compute.images.get": images.get,
        "compute.images.delete": images.delete,
        "compute.images.deprecate": images.deprecate,
        "compute.zoneOperations.get": ops.zone_get,
        "compute.zoneOperations.wait": ops.zone_wait,
        "compute.zoneOperations.list": ops.zone_list,
        "compute.globalOperations.get": ops.global_get,
        "compute.globalOperations.wait": ops.global_wait,
        "compute.projects.get": projects.get,
        "compute.projects.setCommonInstanceMetadata": projects.set_common_instance_metadata,
        "compute.regions.get": region_api.get,
        "compute.acceleratorTypes.list": accelerator_types.list,
        "compute.acceleratorTypes.get": accelerator_types.get,
        "compute.networks.get": networks.get,
        "compute.subnetworks.get": networks.get_subnetwork,
    }
    unknown = sorted(set(handlers) - set(discovery.methods()))
    if unknown:
        raise RuntimeError(f"handlers for methods the discovery document lacks: {unknown}")
    extensions = Router(
        [
            ("POST", I + "/preempt", instances.preempt),  # emulator-only chaos
            ("GET", "/localgce/v1/health", admin.health),
            ("GET", "/localgce/v1/config", admin.get_config),
            ("POST", "/localgce/v1/config", admin.set_config),
        ]
    )
    batch = BatchApi(store, lifecycle, admission.insert, images, lifecycle.state_dir / "batch")
    return ComputeApi(store, ops, handlers, extensions, batch)
