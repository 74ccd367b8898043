"""A Batch job and its tasks: the parsed spec, the states, the status events, the API views.

Every read and write of a job holds the daemon's `Store.lock` (the one lock of localgce's state);
jobs live in memory only (a daemon restart forgets them; docs/localgce.md, "Batch").
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

from localgce.errors import ApiError
from localgce.state import InstanceKey

# JobStatus.State and TaskStatus.State (docs/gce-behaviour.md, "Cloud Batch").
QUEUED, SCHEDULED, RUNNING = "QUEUED", "SCHEDULED", "RUNNING"
SUCCEEDED, FAILED = "SUCCEEDED", "FAILED"
DELETION_IN_PROGRESS = "DELETION_IN_PROGRESS"
CANCELLATION_IN_PROGRESS, CANCELLED = "CANCELLATION_IN_PROGRESS", "CANCELLED"
PENDING, ASSIGNED = "PENDING", "ASSIGNED"
UNEXECUTED = "UNEXECUTED"  # a task that had not run when its job finished
JOB_DONE_STATES = {SUCCEEDED, FAILED, CANCELLED}
JOB_ACTIVE_STATES = {QUEUED, SCHEDULED, RUNNING}
TASK_DONE_STATES = {SUCCEEDED, FAILED, UNEXECUTED}

TASK_GROUP_ID = "group0"  # Batch names a job's one task group `group0`
MAX_RETRY_COUNT = 10
MAX_TASK_COUNT = 1000  # localgce's own bound: every task is a VM with processes on this host
DEFAULT_MACHINE_TYPE = "e2-standard-2"
PROVISIONING_MODELS = {"STANDARD", "SPOT", "PREEMPTIBLE"}
_DURATION_RE = re.compile(r"^([0-9]{1,12})(\.[0-9]{1,9})?s$")


def job_transition_allowed(current: str, new: str) -> bool:
    """Delete may follow any state; cancel ends in CANCELLED; a finished job stays finished."""
    if new == DELETION_IN_PROGRESS:
        return True
    if current == DELETION_IN_PROGRESS:
        return False
    if current == CANCELLATION_IN_PROGRESS:
        return new == CANCELLED
    return current not in JOB_DONE_STATES


def not_supported(what: str) -> ApiError:
    """A field localgce does not model: 400, so a job never runs differently than asked."""
    err = ApiError(400, "invalid", f"{what} is not supported by localgce (docs/localgce.md, Batch)")
    err.status_name = "INVALID_ARGUMENT"
    return err


def bad_job(message: str) -> ApiError:
    err = ApiError(400, "invalid", message)
    err.status_name = "INVALID_ARGUMENT"
    return err


def rfc3339(unix: float) -> str:
    """A protobuf Timestamp in JSON: RFC 3339, UTC, `Z`, microseconds."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(unix))
    return f"{whole}.{int((unix % 1) * 1_000_000):06d}Z"


def duration_seconds(field_name: str, value) -> float:
    """A protobuf Duration in JSON (`"3600s"`, `"1.5s"`) in seconds; 400 if malformed."""
    match = _DURATION_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise bad_job(f'Invalid value for {field_name}: {value!r}; use a duration like "3600s".')
    return float(match[1] + (match[2] or ""))


def _int(field_name: str, value, default: int) -> int:
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise bad_job(f"Invalid value for {field_name}: {value!r}.") from None


@dataclass(frozen=True)
class Runnable:
    text: str | None
    path: str | None
    ignore_exit_status: bool
    always_run: bool
    variables: dict[str, str]


@dataclass(frozen=True)
class JobSpec:
    """What the runner needs from a Job body that passed the checks."""

    task_count: int
    parallelism: int
    runnables: tuple[Runnable, ...]
    variables: dict[str, str]
    task_variables: tuple[dict[str, str], ...]  # taskGroups[0].taskEnvironments, by task index
    max_retry_count: int
    max_run_seconds: float | None
    policies: tuple[tuple[str, frozenset[int]], ...]  # (action, exit codes)
    zone: str
    machine_type: str
    provisioning_model: str
    accelerators: tuple[tuple[str, int], ...]
    image: str
    vm_labels: dict[str, str]
    external_ip: bool  # allocationPolicy.network...noExternalIpAddress unset

    def may_retry(self, exit_code: int) -> bool:
        """Whether lifecyclePolicies let a failed execution with `exit_code` be retried
        (maxRetryCount still bounds it). No policy: the default policy, retry. A RETRY_TASK
        policy retries on its exit codes and fails on any other; FAIL_TASK the other way round."""
        for action, codes in self.policies:
            if exit_code in codes:
                return action == "RETRY_TASK"
        if self.policies:
            return self.policies[0][0] == "FAIL_TASK"
        return True


def _variables(where: str, env: dict | None) -> dict[str, str]:
    env = env or {}
    for secret in ("secretVariables", "encryptedVariables"):
        if env.get(secret):
            raise not_supported(f"{where}.{secret}")
    return {str(k): str(v) for k, v in (env.get("variables") or {}).items()}


def _runnable(index: int, body: dict) -> Runnable:
    where = f"taskSpec.runnables[{index}]"
    if "container" in body:
        raise not_supported(f"{where}.container (container runnables)")
    if "barrier" in body:
        raise not_supported(f"{where}.barrier (barrier runnables)")
    if body.get("background"):
        raise not_supported(f"{where}.background")
    if body.get("timeout"):
        raise not_supported(f"{where}.timeout (use taskSpec.maxRunDuration)")
    script = body.get("script")
    if not isinstance(script, dict) or bool(script.get("text")) == bool(script.get("path")):
        raise bad_job(f"{where} needs a script with exactly one of text or path.")
    return Runnable(
        text=script.get("text"),
        path=script.get("path"),
        ignore_exit_status=bool(body.get("ignoreExitStatus")),
        always_run=bool(body.get("alwaysRun")),
        variables=_variables(f"{where}.environment", body.get("environment")),
    )


def _zone(location: str, allocation: dict) -> str:
    """The zone of the task VMs: the first allowed zone, else zone `-a` of the allowed (or the
    job's) region."""
    allowed = (allocation.get("location") or {}).get("allowedLocations") or []
    for entry in allowed:
        kind, _, name = str(entry).partition("/")
        if kind == "zones" and name:
            return name
    for entry in allowed:
        kind, _, name = str(entry).partition("/")
        if kind == "regions" and name:
            return f"{name}-a"
    return f"{location}-a"


def parse_job(location: str, body: dict) -> JobSpec:
    """Check a Job body as far as localgce runs it; the first problem is the 400 answered."""
    groups = body.get("taskGroups") or []
    if len(groups) != 1:
        raise bad_job("A job needs exactly one task group (taskGroups); Batch supports one.")
    group = groups[0]
    spec = group.get("taskSpec") or {}
    if spec.get("volumes"):
        raise not_supported("taskSpec.volumes")
    runnables = tuple(_runnable(i, r) for i, r in enumerate(spec.get("runnables") or []))
    if not runnables:
        raise bad_job("taskSpec.runnables needs at least one runnable.")
    task_envs = group.get("taskEnvironments") or []
    task_count = len(task_envs) or _int("taskCount", group.get("taskCount"), 1)
    if not 1 <= task_count <= MAX_TASK_COUNT:
        raise bad_job(f"taskCount must be between 1 and {MAX_TASK_COUNT} in localgce.")
    parallelism = _int("parallelism", group.get("parallelism"), task_count)
    if parallelism < 1:
        raise bad_job("parallelism must be at least 1.")
    retries = _int("maxRetryCount", spec.get("maxRetryCount"), 0)
    if not 0 <= retries <= MAX_RETRY_COUNT:
        raise bad_job(f"maxRetryCount must be between 0 and {MAX_RETRY_COUNT}; got {retries}.")
    max_run = spec.get("maxRunDuration")
    policies = []
    for policy in spec.get("lifecyclePolicies") or []:
        action = policy.get("action")
        if action not in ("RETRY_TASK", "FAIL_TASK"):
            raise bad_job(f"lifecyclePolicies action must be RETRY_TASK or FAIL_TASK: {action!r}")
        codes = (policy.get("actionCondition") or {}).get("exitCodes") or []
        policies.append((action, frozenset(int(c) for c in codes)))

    allocation = body.get("allocationPolicy") or {}
    instances = allocation.get("instances") or []
    if not instances:
        raise bad_job(
            "allocationPolicy.instances[0].policy is required in localgce: its bootDisk.image "
            "names the localgce image (family or image) the task VMs boot."
        )
    if instances[0].get("instanceTemplate"):
        raise not_supported("allocationPolicy.instances[0].instanceTemplate")
    policy = instances[0].get("policy") or {}
    if policy.get("disks"):
        raise not_supported("allocationPolicy.instances[0].policy.disks")
    image = (policy.get("bootDisk") or {}).get("image")
    if not image:
        raise bad_job(
            "allocationPolicy.instances[0].policy.bootDisk.image is required in localgce: name "
            "a registered image, e.g. projects/P/global/images/family/F."
        )
    model = policy.get("provisioningModel") or "STANDARD"
    if model == "PROVISIONING_MODEL_UNSPECIFIED":
        model = "STANDARD"
    if model not in PROVISIONING_MODELS:
        raise not_supported(f"provisioningModel {model}")
    accelerators = tuple(
        (str(a.get("type", "")), _int("accelerators.count", a.get("count"), 1))
        for a in policy.get("accelerators") or []
    )
    return JobSpec(
        task_count=task_count,
        parallelism=parallelism,
        runnables=runnables,
        variables=_variables("taskSpec.environment", spec.get("environment")),
        task_variables=tuple(_variables("taskEnvironments", e) for e in task_envs),
        max_retry_count=retries,
        max_run_seconds=None if max_run is None else duration_seconds("maxRunDuration", max_run),
        policies=tuple(policies),
        zone=_zone(location, allocation),
        machine_type=policy.get("machineType") or DEFAULT_MACHINE_TYPE,
        provisioning_model=model,
        accelerators=accelerators,
        image=image,
        vm_labels={str(k): str(v) for k, v in (allocation.get("labels") or {}).items()},
        external_ip=not any(
            nic.get("noExternalIpAddress")
            for nic in (allocation.get("network") or {}).get("networkInterfaces") or []
        ),
    )


@dataclass
class Task:
    index: int
    state: str = PENDING
    events: list[dict] = field(default_factory=list)
    attempt: int = 0  # BATCH_TASK_RETRY_ATTEMPT of the current (or last) execution
    vm: InstanceKey | None = None


@dataclass
class Job:
    name: str  # projects/P/locations/L/jobs/ID
    project: str
    location: str
    uid: str
    resource: dict  # the Job as created (enums as names), output fields added when rendered
    spec: JobSpec
    tasks: list[Task]
    create_unix: float
    update_unix: float
    state: str = QUEUED
    events: list[dict] = field(default_factory=list)
    run_start_unix: float | None = None
    run_end_unix: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)  # cancel/delete asked
    thread: threading.Thread | None = None

    @property
    def group_name(self) -> str:
        return f"{self.name}/taskGroups/{TASK_GROUP_ID}"

    def task_name(self, index: int) -> str:
        return f"{self.group_name}/tasks/{index}"


def event(description: str, now_unix: float, **extra) -> dict:
    return {
        "type": "STATUS_CHANGED",
        "description": description,
        "eventTime": rfc3339(now_unix),
        **extra,
    }


def render_task(job: Job, task: Task) -> dict:
    return {
        "name": job.task_name(task.index),
        "status": {"state": task.state, "statusEvents": list(task.events)},
    }


def render_job(job: Job, now_unix: float) -> dict:
    out = dict(job.resource)
    counts: dict[str, int] = {}
    for task in job.tasks:
        counts[task.state] = counts.get(task.state, 0) + 1
    status = {
        "state": job.state,
        "statusEvents": list(job.events),
        "taskGroups": {
            TASK_GROUP_ID: {
                "counts": {state: str(n) for state, n in counts.items()},
                "instances": [
                    {
                        "machineType": job.spec.machine_type,
                        "provisioningModel": job.spec.provisioning_model,
                        "taskPack": "1",
                        "bootDisk": {"image": job.spec.image},
                    }
                ],
            }
        },
    }
    if job.run_start_unix is not None:
        end = job.run_end_unix if job.run_end_unix is not None else now_unix
        status["runDuration"] = f"{max(0.0, end - job.run_start_unix):.3f}s"
    out.update(
        name=job.name,
        uid=job.uid,
        status=status,
        createTime=rfc3339(job.create_unix),
        updateTime=rfc3339(job.update_unix),
    )
    return out
