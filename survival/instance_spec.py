"""The Instance resource for a training VM, in the REST API's JSON shape, exactly as GCE requires.

Scheduling rules (docs/gce-behaviour.md, "Spot preemption" and "Host maintenance"):
- spot: provisioningModel SPOT, instanceTerminationAction STOP (the disk survives, so the
  supervisor can start it again), onHostMaintenance TERMINATE, automaticRestart false.
- preemptible (legacy): preemptible true, onHostMaintenance TERMINATE, automaticRestart false.
- standard: automaticRestart true; onHostMaintenance TERMINATE with GPUs (they cannot
  live-migrate), MIGRATE without.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from survival.errors import ConfigError

STARTUP_DIR = Path(__file__).resolve().parent.parent / "startup"
JOB_LABEL = "survival-job"
DISK_TYPE = "pd-balanced"

# Metadata keys startup.sh reads (and validates). One place, so the two never drift.
KEY_REPO = "trainer-repo"
KEY_BRANCH = "trainer-branch"
KEY_COMMIT = "trainer-commit"
KEY_MODULE = "trainer-module"
KEY_JOB_DIR = "job-dir"
KEY_TRAIN_STEPS = "train-steps"
KEY_CHECKPOINT_STEPS = "checkpoint-steps"
KEY_SEED = "seed"
KEY_HPARAMS = "hparams"
KEY_KEEP_ALIVE = "keep-alive"
KEY_CRASH_RETRIES = "crash-retries"


@dataclass(frozen=True)
class JobSpec:
    """Everything the instance needs to run one training job."""

    name: str
    repo_url: str
    branch: str
    commit: str
    module: str
    job_dir: str
    train_steps: int
    checkpoint_steps: int
    seed: int
    hparams_json: str
    keep_alive: bool = False
    crash_retries: int = 2

    def metadata(self) -> dict[str, str]:
        return {
            KEY_REPO: self.repo_url,
            KEY_BRANCH: self.branch,
            KEY_COMMIT: self.commit,
            KEY_MODULE: self.module,
            KEY_JOB_DIR: self.job_dir,
            KEY_TRAIN_STEPS: str(self.train_steps),
            KEY_CHECKPOINT_STEPS: str(self.checkpoint_steps),
            KEY_SEED: str(self.seed),
            KEY_HPARAMS: self.hparams_json,
            KEY_KEEP_ALIVE: "true" if self.keep_alive else "false",
            KEY_CRASH_RETRIES: str(self.crash_retries),
        }


@dataclass(frozen=True)
class MachineSpec:
    """Shape and placement of the VM."""

    zone: str
    machine_type: str
    gpu_type: str
    gpu_count: int
    provisioning: str  # spot | preemptible | standard
    image: str
    disk_size_gb: int
    service_account: str
    scopes: tuple[str, ...]


def scheduling(provisioning: str, gpu_count: int) -> dict[str, Any]:
    """The ``scheduling`` block for a provisioning model, with or without GPUs."""
    if provisioning == "spot":
        return {
            "provisioningModel": "SPOT",
            "instanceTerminationAction": "STOP",
            "onHostMaintenance": "TERMINATE",
            "automaticRestart": False,
        }
    if provisioning == "preemptible":
        return {"preemptible": True, "onHostMaintenance": "TERMINATE", "automaticRestart": False}
    if provisioning == "standard":
        return {
            "provisioningModel": "STANDARD",
            "onHostMaintenance": "TERMINATE" if gpu_count else "MIGRATE",
            "automaticRestart": True,
        }
    raise ConfigError(f"provisioning {provisioning!r}: use spot, preemptible or standard")


def startup_scripts() -> dict[str, str]:
    """startup-script and shutdown-script metadata values, from startup/."""
    return {
        "startup-script": (STARTUP_DIR / "startup.sh").read_text(),
        "shutdown-script": (STARTUP_DIR / "shutdown.sh").read_text(),
    }


def build_instance(
    machine: MachineSpec, job: JobSpec, extra_metadata: dict[str, str] | None = None
) -> dict[str, Any]:
    """The Instance body for ``instances.insert`` (camelCase JSON, enums by name)."""
    zone = machine.zone
    items = {**job.metadata(), **startup_scripts(), **(extra_metadata or {})}
    body: dict[str, Any] = {
        "name": job.name,
        "machineType": f"zones/{zone}/machineTypes/{machine.machine_type}",
        "labels": {JOB_LABEL: job.name},
        "disks": [
            {
                "boot": True,
                "autoDelete": True,
                "type": "PERSISTENT",
                "initializeParams": {
                    "sourceImage": machine.image,
                    "diskSizeGb": str(machine.disk_size_gb),
                    "diskType": f"zones/{zone}/diskTypes/{DISK_TYPE}",
                },
            }
        ],
        "networkInterfaces": [
            {
                "network": "global/networks/default",
                "accessConfigs": [{"type": "ONE_TO_ONE_NAT", "name": "External NAT"}],
            }
        ],
        "serviceAccounts": [{"email": machine.service_account, "scopes": list(machine.scopes)}],
        "scheduling": scheduling(machine.provisioning, machine.gpu_count),
        "metadata": {"items": [{"key": k, "value": v} for k, v in items.items()]},
    }
    if machine.gpu_count:
        body["guestAccelerators"] = [
            {
                "acceleratorType": f"zones/{zone}/acceleratorTypes/{machine.gpu_type}",
                "acceleratorCount": machine.gpu_count,
            }
        ]
    return body
