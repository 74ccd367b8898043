"""`--engine batch`: a job (or a sweep's points) as a Cloud Batch job, which needs no supervisor.

Batch creates the task VMs from our image, runs `startup/batch-runner.sh` (startup.sh's logic) on
each, retries a task whose VM was preempted (exit code 50001) or whose trainer saved a notice
checkpoint (75) under a RETRY_TASK lifecycle policy, and deletes the VMs when tasks end. So
`invoke train --engine batch` returns once the job is QUEUED, and nothing on this machine has to
keep running for the job to finish.

How the job's settings reach the task: as ``taskSpec.environment`` variables named
``SURVIVAL_<METADATA KEY>`` (``SURVIVAL_TRAINER_COMMIT``, ``SURVIVAL_JOB_DIR``, ...) holding exactly
the values a VM job carries in its metadata. The runnable is a fixed script (``script.text`` made
from files in startup/), never built from a value; the runner copies each variable verbatim into
a file and startup.sh's own validation checks it with the same patterns as metadata. Environment
variables are what Batch hands every task, with no extra read before the code fetch, and they
are visible in the job's description. A sweep's tasks get one variable, ``SURVIVAL_SWEEP`` (the
sweep.json URL), and pick their point by ``BATCH_TASK_INDEX`` (survival/sweep.py).

Batch's SDK is imported lazily (the first call that needs a client).
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from survival.errors import ConfigError
from survival.instance_spec import STARTUP_DIR, JobSpec, MachineSpec, region_of
from trainer import exitcodes

ENGINES = ("vms", "batch")
# Batch's exit code for a task whose VM was preempted
# (https://cloud.google.com/batch/docs/troubleshooting#reserved-exit-codes).
PREEMPTED_EXIT_CODE = 50001
RETRY_EXIT_CODES = (PREEMPTED_EXIT_CODE, exitcodes.NOTICE_SAVED)
# Batch allows maxRetryCount 0-10 (https://cloud.google.com/batch/docs/reference/rest/v1/TaskSpec).
MAX_RETRY_COUNT = 10
ENV_PREFIX = "SURVIVAL_"
SWEEP_ENV = "SURVIVAL_SWEEP"
SWEEP_POINTS_ENV = "SURVIVAL_SWEEP_POINTS"
# The Batch job's label naming our job, and the label its task VMs carry (not survival-job:
# `invoke status` and `down --all` list survival-job instances as VM-engine jobs).
JOB_LABEL = "survival-job"
VM_LABEL = "survival-batch"
# Settings a VM job carries that mean nothing on Batch (the VM is Batch's to delete).
_NOT_SENT = ("keep-alive",)
_PROVISIONING = {"spot": "SPOT", "preemptible": "PREEMPTIBLE", "standard": "STANDARD"}
DONE_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")
_GUARD = 'if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then\n  startup::main "$@"\nfi\n'
JOB_ID_SUFFIX_HEX = 2
MAX_JOB_ID = 63


def env_name(key: str) -> str:
    """The task variable of metadata key ``key``: trainer-commit → SURVIVAL_TRAINER_COMMIT."""
    return ENV_PREFIX + key.upper().replace("-", "_")


def job_variables(job: JobSpec) -> dict[str, str]:
    return {env_name(k): v for k, v in job.metadata().items() if k not in _NOT_SENT}


def runner_script(startup_dir: Path = STARTUP_DIR) -> str:
    """The runnable's script.text: startup.sh without its own entry point, then batch-runner.sh
    (which then finds startup.sh's functions defined and runs batch::main)."""
    startup = (startup_dir / "startup.sh").read_text()
    if not startup.endswith(_GUARD):
        raise ConfigError(
            f"{startup_dir / 'startup.sh'} no longer ends with its entry-point guard; "
            "survival/batch_engine.py composes the Batch runner from it and must be updated"
        )
    runner = (startup_dir / "batch-runner.sh").read_text()
    return startup[: -len(_GUARD)] + "\n# --- batch-runner.sh ---\n" + runner


def image_path(image: str) -> str:
    """bootDisk.image as Batch takes it: projects/P/global/images/NAME (from a self link)."""
    index = image.find("projects/")
    return image[index:] if index >= 0 else image


def location_of(zones: tuple[str, ...] | list[str]) -> str:
    """Batch's job location: the region of the first zone (jobs are regional resources)."""
    return region_of(zones[0])


def job_id_for(name: str) -> str:
    """A Batch job ID for job ``name``: the name and a random suffix, so a later run of the
    same name (after `invoke down`) never collides with the old job while it is deleted."""
    suffix = secrets.token_hex(JOB_ID_SUFFIX_HEX)
    stem = name[: MAX_JOB_ID - len(suffix) - 1].rstrip("-")
    return f"{stem}-{suffix}"


def job_body(
    machine: MachineSpec,
    zones: tuple[str, ...] | list[str],
    variables: dict[str, str],
    *,
    name: str,
    task_count: int = 1,
    parallelism: int = 1,
    max_retry_count: int = MAX_RETRY_COUNT,
    script: str | None = None,
) -> dict[str, Any]:
    """The Batch v1 Job resource (REST JSON shape) of one job or sweep."""
    if machine.provisioning not in _PROVISIONING:
        raise ConfigError(
            f"provisioning {machine.provisioning!r} cannot run on Batch: use spot, preemptible "
            "or standard with --engine batch"
        )
    if not 0 <= max_retry_count <= MAX_RETRY_COUNT:
        raise ConfigError(f"Batch allows 0 to {MAX_RETRY_COUNT} retries per task")
    if task_count < 1 or not 1 <= parallelism <= task_count:
        raise ConfigError("a Batch job needs 1 or more tasks and a parallelism of 1 to taskCount")
    policy: dict[str, Any] = {
        "machineType": machine.machine_type,
        "provisioningModel": _PROVISIONING[machine.provisioning],
        # The baked image has the drivers: Batch must not install its own.
        "bootDisk": {"image": image_path(machine.image), "sizeGb": str(machine.disk_size_gb)},
    }
    if machine.gpu_count:
        policy["accelerators"] = [{"type": machine.gpu_type, "count": str(machine.gpu_count)}]
    allocation: dict[str, Any] = {
        "location": {"allowedLocations": [f"zones/{zone}" for zone in zones]},
        "instances": [{"policy": policy, "installGpuDrivers": False}],
        "labels": {VM_LABEL: name},
    }
    if machine.service_account and machine.service_account != "default":
        allocation["serviceAccount"] = {"email": machine.service_account}
    if not machine.external_ip or machine.network != "default":
        interface: dict[str, Any] = {"network": f"global/networks/{machine.network}"}
        if machine.subnetwork:
            interface["subnetwork"] = (
                f"regions/{region_of(zones[0])}/subnetworks/{machine.subnetwork}"
            )
        interface["noExternalIpAddress"] = not machine.external_ip
        allocation["network"] = {"networkInterfaces": [interface]}
    task_spec: dict[str, Any] = {
        "runnables": [{"script": {"text": script if script is not None else runner_script()}}],
        "environment": {"variables": variables},
        "maxRetryCount": max_retry_count,
        "lifecyclePolicies": [
            {"action": "RETRY_TASK", "actionCondition": {"exitCodes": list(RETRY_EXIT_CODES)}}
        ],
    }
    if machine.max_run_seconds:
        task_spec["maxRunDuration"] = f"{machine.max_run_seconds}s"
    return {
        "labels": {JOB_LABEL: name},
        "taskGroups": [
            {"taskSpec": task_spec, "taskCount": str(task_count), "parallelism": str(parallelism)}
        ],
        "allocationPolicy": allocation,
        "logsPolicy": {"destination": "CLOUD_LOGGING"},
    }


class BatchJobs:
    """Batch v1 jobs of one project and location through google-cloud-batch; resources come
    back in their REST JSON shape (camelCase, enums as names)."""

    def __init__(self, client: Any, project: str, location: str):
        self.client = client
        self.project = project
        self.location = location

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    @staticmethod
    def _dict(message: Any) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(
            type(message).to_json(message, use_integers_for_enums=False)
        )
        return value

    def create(self, job_id: str, body: dict[str, Any]) -> dict[str, Any]:
        from google.cloud import batch_v1

        job = batch_v1.Job.from_json(json.dumps(body))
        try:
            created = self.client.create_job(parent=self.parent, job_id=job_id, job=job)
        except Exception as err:  # an API error: one line that says what Batch answered
            raise ConfigError(f"Batch refused job {job_id}: {_message(err)}") from None
        return self._dict(created)

    def get(self, name: str) -> dict[str, Any] | None:
        from google.api_core import exceptions

        try:
            return self._dict(self.client.get_job(name=name))
        except exceptions.NotFound:
            return None

    def tasks(self, name: str) -> list[dict[str, Any]]:
        from google.api_core import exceptions

        try:
            found = self.client.list_tasks(parent=f"{name}/taskGroups/group0")
            return [self._dict(task) for task in found]
        except exceptions.NotFound:
            return []

    def probe(self) -> None:
        """One jobs.list call of at most one job: raises what the API answers (disabled, denied)."""
        found = self.client.list_jobs(request={"parent": self.parent, "page_size": 1})
        next(iter(found), None)

    def delete(self, name: str) -> bool:
        """Ask Batch to delete job ``name`` (its VMs go with it); False if it is gone already."""
        from google.api_core import exceptions

        try:
            self.client.delete_job(name=name)
        except exceptions.NotFound:
            return False
        return True


def _message(err: Exception) -> str:
    text = getattr(err, "message", None) or str(err)
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def open_batch(settings: Any, endpoints: dict[str, Any] | None = None) -> BatchJobs:
    """Batch jobs in the region of survival.zones[0]: on localgce's ``endpoints`` when given
    (backend local), else Google's Batch API with Application Default Credentials."""
    from google.cloud import batch_v1

    location = location_of(settings.zones)
    if endpoints is not None:
        from localgce.client import batch_client_options

        return BatchJobs(
            batch_v1.BatchServiceClient(**batch_client_options(endpoints)),
            settings.project,
            location,
        )
    from survival.sdk import make_client

    return BatchJobs(make_client(batch_v1.BatchServiceClient), settings.project, location)


def batch_for(settings: Any) -> BatchJobs:
    """Batch jobs of the configured cloud (localgce must be running)."""
    endpoints = None
    if settings.is_local:
        from survival.backend import local_endpoints

        endpoints = local_endpoints(settings.local_state_dir, start=False)
    return open_batch(settings, endpoints)


def state_of(job: dict[str, Any] | None) -> str:
    """QUEUED … SUCCEEDED, or "(deleted)" when Batch has no such job any more."""
    if job is None:
        return "(deleted)"
    return str((job.get("status") or {}).get("state") or "STATE_UNSPECIFIED")


def task_counts(job: dict[str, Any] | None) -> dict[str, int]:
    """{"SUCCEEDED": 3, "RUNNING": 1, ...} of the job's task group."""
    groups = ((job or {}).get("status") or {}).get("taskGroups") or {}
    counts: dict[str, int] = {}
    for group in groups.values():
        for state, count in (group.get("counts") or {}).items():
            counts[state] = counts.get(state, 0) + int(count)
    return counts


def is_active(job: dict[str, Any] | None) -> bool:
    return job is not None and state_of(job) not in DONE_STATES


@dataclass(frozen=True)
class Followed:
    """How `invoke watch` left a Batch job."""

    state: str
    seconds: float


def follow(
    batch: BatchJobs,
    batch_job: str,
    describe: Callable[[dict[str, Any] | None], str],
    *,
    poll_seconds: float,
    out: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Followed:
    """Print a line whenever the job's state or ``describe(job)`` changes, until the job is
    done or gone. Following changes nothing: Batch runs the job either way."""
    start = clock()
    last = None
    while True:
        job = batch.get(batch_job)
        line = f"{state_of(job)}: {describe(job)}"
        if line != last:
            out(line)
            last = line
        if not is_active(job):
            return Followed(state_of(job), clock() - start)
        sleep(poll_seconds)


@dataclass(frozen=True)
class Submitted:
    """A job submitted to Batch: what it runs, on what, and the Batch job (as created)."""

    job: JobSpec
    machine: MachineSpec
    batch_job: dict[str, Any]


def check_not_running(batch: BatchJobs, settings: Any, name: str) -> None:
    """A job whose recorded Batch job is still queued or running must not be submitted again."""
    from survival import jobstore

    if name not in jobstore.names(settings.local_state_dir):
        return
    record = jobstore.read(settings.local_state_dir, name)
    for batch_job in record.get("batch_jobs") or []:
        found = batch.get(batch_job)
        if is_active(found):
            raise ConfigError(
                f"job {name} runs as Batch job {batch_job} ({state_of(found)}): follow it with "
                f"`invoke watch {name}`, or delete it first with `invoke down {name}`"
            )


def max_retries(settings: Any) -> int:
    """survival.max_restarts, capped at Batch's limit of 10 retries per task."""
    return min(int(settings.max_restarts), MAX_RETRY_COUNT)


def submit_train(
    cloud: Any,
    batch: BatchJobs,
    worktree: Path,
    req: Any,
    *,
    out: Callable[[str], None] = print,
    now_unix: float | None = None,
) -> Submitted:
    """`invoke train --engine batch`: the same checks and job dir bookkeeping as a VM launch
    (survival.launch.prepare_run), then one Batch job with one task; recorded locally with
    engine "batch"."""
    from survival import jobstore
    from survival.launch import prepare_run

    settings = cloud.settings
    run = prepare_run(
        cloud, worktree, req, out=out, now_unix=now_unix,
        also_check=lambda name: check_not_running(batch, settings, name),
    )  # fmt: skip
    # The task's VM is Batch's: it is deleted when the task ends, whatever keep-alive says.
    job, machine = dataclasses.replace(run.job, keep_alive=False), run.machine
    body = job_body(
        machine, settings.zones, job_variables(job), name=job.name,
        max_retry_count=max_retries(settings),
    )  # fmt: skip
    created = batch.create(job_id_for(job.name), body)
    jobstore.save(
        settings.local_state_dir, job, machine, {}, engine=jobstore.ENGINE_BATCH,
        batch_jobs=[created["name"]], run_id=run.run_id, launched_unix=run.now_unix,
    )  # fmt: skip
    return Submitted(job, machine, created)


def shared_spec(settings: Any, req: Any, module: str, commit: str) -> dict[str, str]:
    """The settings every point of a sweep shares, as the runner's metadata keys."""
    from survival.codepush import bundle_url
    from survival.sweep import SHARED_KEYS

    job = JobSpec(
        name=req.name,
        repo_url=settings.trainer_repo,
        bundle_url="" if settings.trainer_repo else bundle_url(settings.job_bucket, commit),
        branch=req.branch,
        commit=commit,
        module=module,
        job_dir="",
        train_steps=req.train_steps,
        checkpoint_steps=req.checkpoint_steps,
        seed=req.seed,
        hparams_json="{}",
    )
    return {key: value for key, value in job.metadata().items() if key in SHARED_KEYS}


def submit_sweep(
    cloud: Any,
    batch: BatchJobs,
    worktree: Path,
    req: Any,
    points: list[dict[str, Any]],
    parallelism: int,
    *,
    out: Callable[[str], None] = print,
) -> dict[str, Any]:
    """`invoke sweep --engine batch`: sweep.json (created once), then one Batch job whose task I
    trains point I. Returns the local sweep record."""
    from survival import sweep as sweeps
    from survival.launch import machine_for, push_for
    from survival.request import validate

    settings = cloud.settings
    module, _ = validate(req)
    name = req.name
    url = sweeps.sweep_dir(settings.job_bucket, name)
    store = cloud.open_job_dir(url).store
    if sweeps.read_sweep(store) is not None or sweeps.read_record(settings.local_state_dir, name):
        raise ConfigError(
            f"sweep {name} exists ({url}/{sweeps.SWEEP_FILE} is never overwritten): choose "
            f"another --name, or `invoke status {name}` to see it"
        )
    if not 1 <= parallelism <= len(points):
        raise ConfigError(f"--parallelism must be between 1 and the {len(points)} points")
    machine = machine_for(settings, cloud.compute.image_from_family(settings.image_family))
    commit = push_for(cloud, worktree, req, out)
    document = sweeps.sweep_document(
        name, req.example, shared_spec(settings, req, module, commit), points, time.time()
    )
    body = job_body(
        machine, settings.zones, {SWEEP_ENV: f"{url}/{sweeps.SWEEP_FILE}"}, name=name,
        task_count=len(points), parallelism=parallelism, max_retry_count=max_retries(settings),
    )  # fmt: skip
    sweeps.write_sweep(store, document)
    created = batch.create(job_id_for(name), body)
    record = sweeps.new_record(
        name, "batch", len(points), batch_jobs=[created["name"]], job_points=[None],
        sweep_url=url, example=req.example, train_steps=req.train_steps,
        machine=dataclasses_dict(machine), location=batch.location,
    )  # fmt: skip
    sweeps.save_record(settings.local_state_dir, record)
    return {**record, "state": state_of(created)}


def dataclasses_dict(machine: MachineSpec) -> dict[str, Any]:
    import dataclasses

    return {**dataclasses.asdict(machine), "scopes": list(machine.scopes)}


_ON_VM_RE = re.compile(r" on zones/([a-z0-9-]+)/instances/([0-9A-Za-z_-]+)")


def task_vm(task: dict[str, Any]) -> tuple[str, str] | None:
    """(zone, instance id) the task's newest execution runs on, from its status events
    ("Task state is updated from ASSIGNED to RUNNING on zones/Z/instances/ID.")."""
    for event in reversed((task.get("status") or {}).get("statusEvents") or []):
        found = _ON_VM_RE.search(str(event.get("description") or ""))
        if found:
            return found.group(1), found.group(2)
    return None


# --chaos on Batch: preemptions land between these fractions of the training steps, and the
# rehearsal gives up after this long (the job may end first: fewer preemptions then).
CHAOS_LOW_FRACTION = 0.2
CHAOS_HIGH_FRACTION = 0.6
CHAOS_TIMEOUT_SECONDS = 3600.0


def chaos_targets(count: int, train_steps: int, rng: Any) -> list[int]:
    """``count`` random steps, ascending, in the middle of the run (each leaves steps to lose)."""
    low = max(1, int(train_steps * CHAOS_LOW_FRACTION))
    high = max(low, int(train_steps * CHAOS_HIGH_FRACTION))
    if count < 0:
        raise ConfigError("--chaos must be a number of preemptions, 0 or more")
    return sorted(rng.randint(low, high) for _ in range(count))


def rehearse_preemptions(
    batch: BatchJobs,
    compute: Any,
    batch_job: str,
    step_of: Callable[[int], int],
    targets: list[int],
    *,
    order: list[int] | None = None,
    poll_seconds: float,
    timeout_seconds: float,
    out: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """`--chaos N` on Batch: for each target step (ascending), preempt the VM of a RUNNING task
    whose point (``step_of(point)``: its trainer's step) has reached it. Batch retries the task
    on a new VM; this only picks the moments. Returns how many preemptions were made (fewer when
    the job ends or ``timeout_seconds`` pass first)."""
    made = 0
    deadline = clock() + timeout_seconds
    pending = sorted(targets)
    preempted: set[str] = set()
    while pending and clock() < deadline:
        job = batch.get(batch_job)
        if not is_active(job):
            break
        for task in batch.tasks(batch_job):
            if (task.get("status") or {}).get("state") != "RUNNING" or not pending:
                continue
            index = int(str(task["name"]).rsplit("/", 1)[-1])
            point = order[index] if order else index
            where = task_vm(task)
            step = step_of(point)
            if where is None or step < pending[0]:
                continue
            zone, instance_id = where
            vm = next(
                (
                    info
                    for info in compute.list_instances((zone,), VM_LABEL)
                    if str(info.raw.get("id")) == instance_id
                    and info.status == "RUNNING"
                    and info.name not in preempted
                ),
                None,
            )
            if vm is None:
                continue
            out(f"chaos: preempting {vm.name} (point {point}) at step {step} "
                f"(target {pending[0]}; {len(pending) - 1} left)")  # fmt: skip
            compute.preempt_instance(zone, vm.name)
            preempted.add(vm.name)
            pending.pop(0)
            made += 1
        if pending:
            sleep(poll_seconds)
    return made
