"""The kit waits for RUNNING operations through an operations client on *its* endpoint
(docs/gce-behaviour.md, "Waiting on operations from Python"): against localgce with slow
operations, nothing may reach for Google."""

from __future__ import annotations

import os
import sys
import time

import pytest

from localgce import daemon
from localgce.client import compute_client_options, ensure_running
from survival.gce import GoogleCompute

PROJECT = "ops-project"
ZONE = "us-central1-a"
DELAY_SECONDS = 1.0


def _spot_vm(name: str, image: str) -> dict:
    return {
        "name": name,
        "machineType": f"zones/{ZONE}/machineTypes/n1-standard-1",
        "disks": [
            {
                "boot": True,
                "autoDelete": True,
                "initializeParams": {"sourceImage": f"projects/{PROJECT}/global/images/{image}"},
            }
        ],
        "scheduling": {"provisioningModel": "SPOT", "instanceTerminationAction": "STOP"},
    }


@pytest.fixture(scope="module")
def slow_cloud(tmp_path_factory):
    state = tmp_path_factory.mktemp("ops") / "state"
    endpoints = ensure_running(state, operation_delay_seconds=DELAY_SECONDS, ssh_enabled=False)
    try:
        yield endpoints
    finally:
        daemon.stop(state)


def test_slow_image_and_instance_operations_are_waited_for_on_our_endpoint(
    slow_cloud, tmp_path, monkeypatch
):
    # Any attempt to reach compute.googleapis.com fails at once through this dead proxy.
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    options = compute_client_options(slow_cloud)
    image_dir = tmp_path / "image"
    image_dir.mkdir()
    os.symlink(sys.prefix, image_dir / "venv")

    compute = GoogleCompute(PROJECT, client_kwargs=options, poll_seconds=0.1)
    started = time.monotonic()
    compute.insert_local_image("ops-img-1", "ops-family", str(image_dir))
    assert time.monotonic() - started >= DELAY_SECONDS  # it really waited for RUNNING → DONE
    assert compute.newest_image("ops-family").name == "ops-img-1"

    body = _spot_vm("ops-vm", "ops-img-1")
    started = time.monotonic()
    compute.insert_instance(ZONE, body)
    assert time.monotonic() - started >= DELAY_SECONDS
    assert compute.get_instance(ZONE, "ops-vm").status in ("PROVISIONING", "STAGING", "RUNNING")
    compute.delete_instance(ZONE, "ops-vm")
    assert compute.get_instance(ZONE, "ops-vm") is None


def test_missing_google_credentials_is_one_line_saying_what_to_run(monkeypatch, tmp_path):
    from google.cloud import compute_v1

    from survival.errors import ConfigError
    from survival.sdk import make_client

    # No ADC anywhere: no env var, an empty gcloud config dir, no metadata server to ask.
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    with pytest.raises(ConfigError, match="gcloud auth application-default login") as err:
        make_client(compute_v1.ImagesClient)
    assert "\n" not in str(err.value)


def test_preempting_a_stopped_vm_is_an_error_not_a_success(slow_cloud, tmp_path):
    from survival.errors import SurvivalError

    options = compute_client_options(slow_cloud)
    image_dir = tmp_path / "image"
    image_dir.mkdir()
    os.symlink(sys.prefix, image_dir / "venv")
    compute = GoogleCompute(
        PROJECT, client_kwargs=options, extension_url=slow_cloud["compute"], poll_seconds=0.1
    )
    compute.insert_local_image("ops-img-2", "f2", str(image_dir))
    body = _spot_vm("ops-pre", "ops-img-2")
    compute.insert_instance(ZONE, body)
    compute.stop_instance(ZONE, "ops-pre")
    with pytest.raises(SurvivalError, match="only RUNNING VMs are preempted"):
        compute.preempt_instance(ZONE, "ops-pre")
    compute.delete_instance(ZONE, "ops-pre")
