"""The Instance resource for a training VM, in the REST API's JSON shape, exactly as GCE requires.

Scheduling rules (docs/gce-behaviour.md, "Spot preemption", "Host maintenance" and "Spot and GPU
scheduling options"):
- spot: provisioningModel SPOT, instanceTerminationAction STOP (the disk survives, so the
  supervisor can start it again), onHostMaintenance TERMINATE, automaticRestart false, and a
  preemptionNoticeDuration when the job asks for one (instance/preempted is TRUE that long
  before the ACPI soft-off).
- preemptible (legacy): preemptible true, onHostMaintenance TERMINATE, automaticRestart false;
  no run-time limit (GCE refuses one: legacy preemptible VMs stop after 24 h anyway).
- standard: automaticRestart true; onHostMaintenance TERMINATE with GPUs (they cannot
  live-migrate), MIGRATE without.
- flex-start: provisioningModel FLEX_START with its required maxRunDuration,
  instanceTerminationAction DELETE (a flex-start VM cannot be stopped and started again: the
  supervisor creates a new one), onHostMaintenance TERMINATE, automaticRestart false, and no
  reservation.
- A run-time cap (max_run_seconds) on spot/standard is scheduling.maxRunDuration; the
  termination action then runs at its end (STOP for spot as on preemption; STOP for standard).

Network: ``networkInterfaces[0]`` names the network (``global/networks/NAME``), the subnetwork
when one is set (``regions/REGION/subnetworks/NAME``, REGION from the zone), and an external IP
(a ONE_TO_ONE_NAT access config) only when external_ip is on.
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
KEY_REPO = "trainer-repo"  # a git remote; absent when the code comes as a bundle
KEY_BUNDLE = "trainer-bundle"  # gs://BUCKET/code/COMMIT.bundle (survival/codepush.py)
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
    # The code bundle's gs:// URL; "" when the code comes from the git remote repo_url.
    bundle_url: str = ""

    def metadata(self) -> dict[str, str]:
        source = {KEY_BUNDLE: self.bundle_url} if self.bundle_url else {KEY_REPO: self.repo_url}
        return {
            **source,
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
    # Spot only: instance/preempted is TRUE this long before the ACPI soft-off (0: no notice).
    preemption_notice_seconds: int = 0
    # scheduling.maxRunDuration (0: none); required by flex-start.
    max_run_seconds: int = 0
    network: str = "default"
    subnetwork: str = ""
    external_ip: bool = True


def duration(seconds: int) -> dict[str, str]:
    """A Compute ``Duration`` in the REST JSON form: int64 ``seconds`` travels as a string."""
    return {"seconds": str(int(seconds))}


def scheduling(
    provisioning: str,
    gpu_count: int,
    *,
    preemption_notice_seconds: int = 0,
    max_run_seconds: int = 0,
) -> dict[str, Any]:
    """The ``scheduling`` block for a provisioning model, with or without GPUs."""
    if max_run_seconds < 0 or preemption_notice_seconds < 0:
        raise ConfigError("run durations and notices are 0 (none) or a number of seconds")
    sched: dict[str, Any]
    if provisioning == "spot":
        sched = {
            "provisioningModel": "SPOT",
            "instanceTerminationAction": "STOP",
            "onHostMaintenance": "TERMINATE",
            "automaticRestart": False,
        }
        if preemption_notice_seconds:
            sched["preemptionNoticeDuration"] = duration(preemption_notice_seconds)
    elif provisioning == "preemptible":
        if max_run_seconds:
            raise ConfigError(
                "a run-time limit (max_run_hours) needs provisioning spot, standard or "
                "flex-start: Compute Engine does not limit legacy preemptible VMs"
            )
        return {"preemptible": True, "onHostMaintenance": "TERMINATE", "automaticRestart": False}
    elif provisioning == "standard":
        sched = {
            "provisioningModel": "STANDARD",
            "onHostMaintenance": "TERMINATE" if gpu_count else "MIGRATE",
            "automaticRestart": True,
        }
        if max_run_seconds:
            sched["instanceTerminationAction"] = "STOP"
    elif provisioning == "flex-start":
        if not max_run_seconds:
            raise ConfigError("provisioning flex-start needs a run duration: set --max-run-hours")
        sched = {
            "provisioningModel": "FLEX_START",
            "instanceTerminationAction": "DELETE",
            "onHostMaintenance": "TERMINATE",
            "automaticRestart": False,
        }
    else:
        raise ConfigError(
            f"provisioning {provisioning!r}: use spot, preemptible, standard or flex-start"
        )
    if max_run_seconds:
        sched["maxRunDuration"] = duration(max_run_seconds)
    return sched


def region_of(zone: str) -> str:
    """us-central1-a → us-central1."""
    return zone.rsplit("-", 1)[0]


def network_interfaces(machine: MachineSpec) -> list[dict[str, Any]]:
    """The VM's one network interface: network, subnetwork (if set), external IP (if wanted)."""
    nic: dict[str, Any] = {"network": f"global/networks/{machine.network}"}
    if machine.subnetwork:
        nic["subnetwork"] = f"regions/{region_of(machine.zone)}/subnetworks/{machine.subnetwork}"
    if machine.external_ip:
        nic["accessConfigs"] = [{"type": "ONE_TO_ONE_NAT", "name": "External NAT"}]
    return [nic]


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
        "networkInterfaces": network_interfaces(machine),
        "serviceAccounts": [{"email": machine.service_account, "scopes": list(machine.scopes)}],
        "scheduling": scheduling(
            machine.provisioning,
            machine.gpu_count,
            preemption_notice_seconds=machine.preemption_notice_seconds,
            max_run_seconds=machine.max_run_seconds,
        ),
        "metadata": {"items": [{"key": k, "value": v} for k, v in items.items()]},
    }
    if machine.provisioning == "flex-start":
        # Flex-start capacity comes from Dynamic Workload Scheduler, never from a reservation.
        body["reservationAffinity"] = {"consumeReservationType": "NO_RESERVATION"}
    if machine.gpu_count:
        body["guestAccelerators"] = [
            {
                "acceleratorType": f"zones/{zone}/acceleratorTypes/{machine.gpu_type}",
                "acceleratorCount": machine.gpu_count,
            }
        ]
    return body
