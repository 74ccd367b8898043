"""The compute endpoint: the route table (the whole emulated surface) and the admin endpoints."""

from __future__ import annotations

from localgce.httpserver import Request, Router
from localgce.images import Images
from localgce.instances import Instances
from localgce.lifecycle import Lifecycle
from localgce.operations import Operations
from localgce.projects import Projects
from localgce.state import Store

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


def build_router(store: Store, lifecycle: Lifecycle, endpoints: dict) -> Router:
    ops = Operations(store)
    images = Images(store, ops)
    instances = Instances(store, ops, images, lifecycle)
    projects = Projects(store, ops, lifecycle)
    admin = Admin(store, endpoints)
    return Router(
        [
            # instances
            ("POST", P + "/zones/{zone}/instances", instances.insert),
            ("GET", P + "/zones/{zone}/instances", instances.list),
            ("GET", I, instances.get),
            ("DELETE", I, instances.delete),
            ("POST", I + "/start", instances.start),
            ("POST", I + "/stop", instances.stop),
            ("POST", I + "/setMetadata", instances.set_metadata),
            ("POST", I + "/setScheduling", instances.set_scheduling),
            ("GET", I + "/serialPort", instances.serial_port),
            ("POST", I + "/simulateMaintenanceEvent", instances.simulate_maintenance_event),
            ("POST", I + "/preempt", instances.preempt),  # emulator-only chaos
            # images
            ("POST", P + "/global/images", images.insert),
            ("GET", P + "/global/images", images.list),
            ("GET", P + "/global/images/family/{family}", images.get_from_family),
            ("GET", P + "/global/images/{image}", images.get),
            ("DELETE", P + "/global/images/{image}", images.delete),
            ("POST", P + "/global/images/{image}/deprecate", images.deprecate),
            # operations
            ("GET", P + "/zones/{zone}/operations/{operation}", ops.zone_get),
            ("POST", P + "/zones/{zone}/operations/{operation}/wait", ops.zone_wait),
            ("GET", P + "/global/operations/{operation}", ops.global_get),
            ("POST", P + "/global/operations/{operation}/wait", ops.global_wait),
            # projects
            ("GET", P, projects.get),
            ("POST", P + "/setCommonInstanceMetadata", projects.set_common_instance_metadata),
            # emulator-only admin
            ("GET", "/localgce/v1/health", admin.health),
            ("GET", "/localgce/v1/config", admin.get_config),
            ("POST", "/localgce/v1/config", admin.set_config),
        ]
    )
