"""The Instance body for every provisioning model, with and without GPUs (unit level; the
localgce-captured version is in test_e2e_localgce.py)."""

from __future__ import annotations

import json

import pytest

from survival.instance_spec import JobSpec, MachineSpec, build_instance

JOB = JobSpec(
    name="exp1-job", repo_url="file:///r/trainer.git", branch="exp1", commit="a" * 40,
    module="trainer.examples.keras_digits", job_dir="gs://b/jobs/exp1-job", train_steps=100,
    checkpoint_steps=10, seed=3, hparams_json='{"learning_rate": 0.01}',
)  # fmt: skip
SCOPES = (
    "https://www.googleapis.com/auth/devstorage.read_write",
    "https://www.googleapis.com/auth/logging.write",
)

EXPECTED_SCHEDULING = {
    ("spot", 1): {"provisioningModel": "SPOT", "instanceTerminationAction": "STOP",
                  "onHostMaintenance": "TERMINATE", "automaticRestart": False},
    ("spot", 0): {"provisioningModel": "SPOT", "instanceTerminationAction": "STOP",
                  "onHostMaintenance": "TERMINATE", "automaticRestart": False},
    ("preemptible", 1): {"preemptible": True, "onHostMaintenance": "TERMINATE",
                         "automaticRestart": False},
    ("preemptible", 0): {"preemptible": True, "onHostMaintenance": "TERMINATE",
                         "automaticRestart": False},
    ("standard", 1): {"provisioningModel": "STANDARD", "onHostMaintenance": "TERMINATE",
                      "automaticRestart": True},
    ("standard", 0): {"provisioningModel": "STANDARD", "onHostMaintenance": "MIGRATE",
                      "automaticRestart": True},
}  # fmt: skip


def machine(provisioning, gpus):
    return MachineSpec(
        zone="us-central1-b", machine_type="n1-standard-4", gpu_type="nvidia-tesla-t4",
        gpu_count=gpus, provisioning=provisioning, image="projects/p/global/images/img-1",
        disk_size_gb=50, service_account="default", scopes=SCOPES,
    )  # fmt: skip


@pytest.mark.parametrize(("provisioning", "gpus"), sorted(EXPECTED_SCHEDULING))
def test_body_fields(provisioning, gpus):
    body = build_instance(machine(provisioning, gpus), JOB)
    assert body["scheduling"] == EXPECTED_SCHEDULING[(provisioning, gpus)]
    assert body["machineType"] == "zones/us-central1-b/machineTypes/n1-standard-4"
    if gpus:
        assert body["guestAccelerators"] == [
            {"acceleratorType": "zones/us-central1-b/acceleratorTypes/nvidia-tesla-t4",
             "acceleratorCount": 1}
        ]  # fmt: skip
    else:
        assert "guestAccelerators" not in body
    assert body["serviceAccounts"] == [{"email": "default", "scopes": list(SCOPES)}]
    items = {i["key"]: i["value"] for i in body["metadata"]["items"]}
    assert items["trainer-branch"] == "exp1" and items["trainer-commit"] == "a" * 40
    assert items["keep-alive"] == "false" and json.loads(items["hparams"]) == {
        "learning_rate": 0.01
    }
    assert items["startup-script"].startswith("#!/usr/bin/env bash")
    assert "shutdown-script" in items
    disk = body["disks"][0]
    assert disk["boot"] and disk["autoDelete"]
    assert disk["initializeParams"]["sourceImage"] == "projects/p/global/images/img-1"


def test_body_parses_as_the_sdk_instance():
    from google.cloud import compute_v1

    body = build_instance(machine("spot", 1), JOB)
    inst = compute_v1.Instance.from_json(json.dumps(body))
    assert inst.scheduling.provisioning_model == "SPOT"
    assert inst.guest_accelerators[0].accelerator_count == 1
    assert json.loads(compute_v1.Instance.to_json(inst))["scheduling"]["automaticRestart"] is False
