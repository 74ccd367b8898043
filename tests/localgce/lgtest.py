"""Helpers for the localgce tests: constants, condition waits, the clients, resource builders.

A plain module (not conftest) so test files can import it under any pytest import mode.
"""

# ruff: noqa: S310 - every URL here is the emulator on 127.0.0.1

from __future__ import annotations

import re
import urllib.error
import urllib.request
import uuid

from google.cloud import compute_v1
from polling import wait_for

from localgce.client import compute_client_options

ROOT = "/computeMetadata/v1/"
PROJECT = "lg-test"
ZONE = "us-central1-a"
# Small windows so the suite stays fast; a guest that exits early ends the window at once anyway.
TEST_KNOBS = {
    "grace_spot_seconds": 8.0,
    "grace_standard_seconds": 8.0,
    "maintenance_notice_seconds": 3.0,
}
WAIT_SECONDS = 60.0


class Compute:
    """The official clients bound to the emulator, and small helpers over them."""

    def __init__(self, endpoints: dict):
        opts = compute_client_options(endpoints)
        self.endpoints = endpoints
        self.instances = compute_v1.InstancesClient(**opts)
        self.images = compute_v1.ImagesClient(**opts)
        self.projects = compute_v1.ProjectsClient(**opts)
        self.zone_operations = compute_v1.ZoneOperationsClient(**opts)
        self.global_operations = compute_v1.GlobalOperationsClient(**opts)

    def insert(self, name: str, image: str, **resource) -> None:
        """instances.insert of `instance_resource(name, image, **resource)`; waits for DONE."""
        self.instances.insert(
            project=PROJECT, zone=ZONE, instance_resource=instance_resource(name, image, **resource)
        ).result()

    def delete(self, name: str) -> None:
        self.instances.delete(project=PROJECT, zone=ZONE, instance=name).result()

    def get(self, name: str, zone: str = ZONE) -> compute_v1.Instance:
        return self.instances.get(project=PROJECT, zone=zone, instance=name)

    def status(self, name: str) -> str:
        return self.get(name).status

    def serial(self, name: str) -> str:
        return self.instances.get_serial_port_output(
            project=PROJECT, zone=ZONE, instance=name
        ).contents

    def wait_status(self, name: str, status: str, timeout_seconds: float = WAIT_SECONDS) -> None:
        wait_for(lambda: self.status(name) == status, timeout_seconds, f"{name} to be {status}")

    def wait_serial(self, name: str, pattern: str, count: int = 1) -> str:
        wait_for(
            lambda: len(re.findall(pattern, self.serial(name))) >= count,
            what=f"{count}× {pattern!r} on {name}'s serial port",
        )
        return self.serial(name)

    def metadata_host(self, name: str) -> str:
        """The guest's GCE_METADATA_HOST, which `guest_script` prints to the serial port."""
        text = self.wait_serial(name, r"METADATA_HOST=127\.0\.0\.1:\d+")
        return re.findall(r"METADATA_HOST=(127\.0\.0\.1:\d+)", text)[-1]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def instance_resource(
    name: str,
    image: str,
    *,
    startup: str | None = None,
    shutdown: str | None = None,
    spot: bool = True,
    gpus: int = 0,
    scheduling: dict | None = None,
    extra_metadata: dict | None = None,
) -> compute_v1.Instance:
    items = dict(extra_metadata or {})
    if startup is not None:
        items["startup-script"] = startup
    if shutdown is not None:
        items["shutdown-script"] = shutdown
    sched = dict(scheduling or {})
    if spot:
        sched.setdefault("provisioning_model", "SPOT")
    resource = compute_v1.Instance(
        name=name,
        machine_type=f"zones/{ZONE}/machineTypes/n1-standard-4",
        disks=[
            compute_v1.AttachedDisk(
                boot=True,
                auto_delete=True,
                initialize_params=compute_v1.AttachedDiskInitializeParams(source_image=image),
            )
        ],
        scheduling=compute_v1.Scheduling(**sched),
        metadata=compute_v1.Metadata(
            items=[compute_v1.Items(key=k, value=v) for k, v in items.items()]
        ),
    )
    if gpus:
        resource.guest_accelerators = [
            compute_v1.AcceleratorConfig(
                accelerator_type=f"zones/{ZONE}/acceleratorTypes/nvidia-tesla-t4",
                accelerator_count=gpus,
            )
        ]
    return resource


# A guest script helper: query the metadata server from inside the guest with the image's Python.
MD_GET = (
    "python -c 'import os, sys, urllib.request as u; "
    'h = os.environ["GCE_METADATA_HOST"]; '
    'r = u.Request("http://" + h + "/computeMetadata/v1/" + sys.argv[1], '
    'headers={"Metadata-Flavor": "Google"}); print(u.urlopen(r, timeout=10).read().decode())\''
)


def fetch(host: str, path: str, headers=None, timeout: float = 30.0):
    """(status, headers, body) of a GET; HTTP errors are answers, not exceptions."""
    headers = {"Metadata-Flavor": "Google"} if headers is None else headers
    request = urllib.request.Request(f"http://{host}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read().decode()
