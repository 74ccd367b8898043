"""Cloud Batch v1 in localgce, driven only through google-cloud-batch (its REST transport).

One daemon for the session (conftest `lg`); each test submits its own job and waits for states
through the client. Task VMs are observed through google-cloud-compute's instance list.
"""

# ruff: noqa: S310 - every URL here is the emulator on 127.0.0.1

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from google.api_core import exceptions as core_exceptions
from google.cloud import batch_v1
from google.protobuf import duration_pb2, json_format
from lgtest import PROJECT, ZONE, unique
from polling import wait_for

from localgce.client import batch_client_options, extension_headers

LOCATION = "us-central1"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"
JOB_WAIT_SECONDS = 120.0
UID_LABEL = "batch-job-uid"


@pytest.fixture(scope="module")
def batch(lg) -> batch_v1.BatchServiceClient:
    return batch_v1.BatchServiceClient(**batch_client_options(lg))


def script_job(
    image: str,
    text: str,
    *,
    task_count: int = 1,
    parallelism: int = 0,
    max_retry_count: int = 0,
    policies: list[batch_v1.LifecyclePolicy] | None = None,
    spot: bool = False,
    variables: dict[str, str] | None = None,
    max_run_seconds: int = 0,
) -> batch_v1.Job:
    spec = batch_v1.TaskSpec(
        runnables=[batch_v1.Runnable(script=batch_v1.Runnable.Script(text=text))],
        max_retry_count=max_retry_count,
        lifecycle_policies=policies or [],
        environment=batch_v1.Environment(variables=variables or {}),
    )
    if max_run_seconds:
        spec.max_run_duration = duration_pb2.Duration(seconds=max_run_seconds)
    model = batch_v1.AllocationPolicy.ProvisioningModel
    policy = batch_v1.AllocationPolicy.InstancePolicy(
        machine_type="e2-standard-2",
        provisioning_model=model.SPOT if spot else model.STANDARD,
        boot_disk=batch_v1.AllocationPolicy.Disk(image=image),
    )
    return batch_v1.Job(
        task_groups=[
            batch_v1.TaskGroup(
                task_spec=spec, task_count=task_count, parallelism=parallelism or task_count
            )
        ],
        allocation_policy=batch_v1.AllocationPolicy(
            instances=[batch_v1.AllocationPolicy.InstancePolicyOrTemplate(policy=policy)]
        ),
        logs_policy=batch_v1.LogsPolicy(destination=batch_v1.LogsPolicy.Destination.CLOUD_LOGGING),
    )


def submit(batch, job: batch_v1.Job, prefix: str) -> batch_v1.Job:
    return batch.create_job(parent=PARENT, job_id=unique(prefix), job=job)


def wait_state(batch, name: str, *states) -> batch_v1.Job:
    wanted = {batch_v1.JobStatus.State[s] for s in states}
    last = {}

    def reached():
        last["job"] = batch.get_job(name=name)
        return last["job"] if last["job"].status.state in wanted else None

    return wait_for(
        reached,
        JOB_WAIT_SECONDS,
        lambda: (
            f"{name} to be {states}; it is {last['job'].status.state.name}: "
            f"{[e.description for e in last['job'].status.status_events]}"
        ),
    )


def tasks_of(batch, job: batch_v1.Job) -> list[batch_v1.Task]:
    return list(batch.list_tasks(parent=job.task_groups[0].name))


def task_vms(compute, uid: str) -> list:
    return [
        vm
        for vm in compute.instances.list(project=PROJECT, zone=ZONE)
        if vm.labels.get(UID_LABEL) == uid
    ]


def execution_codes(task: batch_v1.Task) -> list[int]:
    return [
        e.task_execution.exit_code
        for e in task.status.status_events
        if "exit code" in e.description
    ]


def log_text(lg, job: batch_v1.Job, index: int, attempt: int = 0) -> str:
    path = Path(lg["state_dir"]) / "batch" / job.uid / f"task-{index}-attempt-{attempt}.log"
    return path.read_text() if path.exists() else ""


def test_script_job_runs_each_task_on_its_own_vm_and_succeeds(batch, compute, lg, image):
    text = 'echo "index=$BATCH_TASK_INDEX of $BATCH_TASK_COUNT uid=$BATCH_JOB_UID $GREETING"\n'
    job = submit(batch, script_job(image, text, task_count=3, variables={"GREETING": "hi"}), "echo")
    assert job.status.state == batch_v1.JobStatus.State.QUEUED
    assert job.uid and job.name.startswith(PARENT + "/jobs/echo-")

    done = wait_state(batch, job.name, "SUCCEEDED", "FAILED")

    assert done.status.state == batch_v1.JobStatus.State.SUCCEEDED
    descriptions = [e.description for e in done.status.status_events]
    for before, after in (
        ("QUEUED", "SCHEDULED"),
        ("SCHEDULED", "RUNNING"),
        ("RUNNING", "SUCCEEDED"),
    ):
        assert f"Job state is set from {before} to {after} for job {job.name}." in descriptions
    assert dict(done.status.task_groups["group0"].counts) == {"SUCCEEDED": 3}
    tasks = tasks_of(batch, done)
    assert [t.status.state.name for t in tasks] == ["SUCCEEDED"] * 3
    assert (
        batch.get_task(name=f"{done.task_groups[0].name}/tasks/2").status.state.name == "SUCCEEDED"
    )
    for index in range(3):
        assert log_text(lg, done, index) == f"index={index} of 3 uid={done.uid} hi\n"
    vms = set()
    for task in tasks:
        running = [e for e in task.status.status_events if e.task_state.name == "RUNNING"]
        assert len(running) == 1 and "on zones/us-central1-a/instances/" in running[0].description
        vms.add(running[0].description)
        assert execution_codes(task) == [0]
    assert len(vms) == 3  # one VM per task
    assert task_vms(compute, done.uid) == []  # each VM deleted when its task ended


def test_failing_task_runs_max_retry_count_plus_one_times_then_fails(batch, compute, lg, image):
    text = 'echo "attempt $BATCH_TASK_RETRY_ATTEMPT"\nexit 1\n'
    job = submit(batch, script_job(image, text, max_retry_count=2), "fails")

    done = wait_state(batch, job.name, "SUCCEEDED", "FAILED")

    assert done.status.state == batch_v1.JobStatus.State.FAILED
    (task,) = tasks_of(batch, done)
    assert task.status.state.name == "FAILED"
    assert execution_codes(task) == [1, 1, 1]
    assert [log_text(lg, done, 0, n) for n in range(4)] == [
        "attempt 0\n",
        "attempt 1\n",
        "attempt 2\n",
        "",
    ]
    assert "task with index 0 failed" in done.status.status_events[-1].description
    assert task_vms(compute, done.uid) == []


def test_preempted_task_is_retried_on_a_new_vm_under_retry_task(batch, compute, lg, image):
    text = (
        'echo "attempt $BATCH_TASK_RETRY_ATTEMPT on $(hostname)"\n'
        'if [ "$BATCH_TASK_RETRY_ATTEMPT" = 0 ]; then sleep 300; fi\n'
    )
    retry_on_preemption = batch_v1.LifecyclePolicy(
        action=batch_v1.LifecyclePolicy.Action.RETRY_TASK,
        action_condition=batch_v1.LifecyclePolicy.ActionCondition(exit_codes=[50001]),
    )
    job = submit(
        batch,
        script_job(image, text, spot=True, max_retry_count=1, policies=[retry_on_preemption]),
        "preempt",
    )
    wait_for(lambda: log_text(lg, job, 0, 0), JOB_WAIT_SECONDS, "attempt 0 to start")
    (first_vm,) = task_vms(compute, job.uid)
    assert first_vm.scheduling.provisioning_model == "SPOT"
    assert first_vm.labels[UID_LABEL] == job.uid
    assert len(first_vm.network_interfaces[0].access_configs) == 1  # an external IP by default
    request = urllib.request.Request(
        f"{lg['compute']}/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances/"
        f"{first_vm.name}/preempt",
        data=b"",
        method="POST",
        headers=extension_headers(lg),
    )
    urllib.request.urlopen(request, timeout=30).read()

    done = wait_state(batch, job.name, "SUCCEEDED", "FAILED")

    assert done.status.state == batch_v1.JobStatus.State.SUCCEEDED
    (task,) = tasks_of(batch, done)
    assert execution_codes(task) == [50001, 0]
    running = [e.description for e in task.status.status_events if e.task_state.name == "RUNNING"]
    assert len(running) == 2
    assert str(first_vm.id) in running[0] and str(first_vm.id) not in running[1]
    assert log_text(lg, done, 0, 1).startswith("attempt 1")
    assert task_vms(compute, done.uid) == []


def test_parallelism_bounds_the_task_vms(batch, compute, lg, image, tmp_path):
    release = tmp_path / "release"
    text = f'while [ ! -e "{release}" ]; do sleep 0.1; done\necho "task $BATCH_TASK_INDEX"\n'
    job = submit(batch, script_job(image, text, task_count=4, parallelism=2), "parallel")
    seen: list[int] = []

    def two_running():
        states = [t.status.state.name for t in tasks_of(batch, job)]
        seen.append(len(task_vms(compute, job.uid)))
        # A RUNNING task's VM exists until the task leaves RUNNING, and none can before release.
        return states.count("RUNNING") == 2 and seen[-1] == 2

    wait_for(two_running, JOB_WAIT_SECONDS, "two tasks running")
    assert [t.status.state.name for t in tasks_of(batch, job)][2:] == ["PENDING", "PENDING"]
    release.touch()

    def finished():
        seen.append(len(task_vms(compute, job.uid)))
        return batch.get_job(name=job.name).status.state.name in ("SUCCEEDED", "FAILED")

    wait_for(finished, JOB_WAIT_SECONDS, "the job to finish")
    assert batch.get_job(name=job.name).status.state.name == "SUCCEEDED"
    assert max(seen) == 2


def test_cancel_then_delete_remove_the_task_vms_and_the_job(batch, compute, lg, image):
    job = submit(batch, script_job(image, "sleep 300\n", task_count=2), "delete")
    wait_state(batch, job.name, "RUNNING")
    wait_for(lambda: len(task_vms(compute, job.uid)) == 2, JOB_WAIT_SECONDS, "two task VMs")

    batch.cancel_job(name=job.name).result(timeout=JOB_WAIT_SECONDS)

    cancelled = batch.get_job(name=job.name)
    assert cancelled.status.state == batch_v1.JobStatus.State.CANCELLED
    states = [e.description for e in cancelled.status.status_events]
    assert (
        f"Job state is set from RUNNING to CANCELLATION_IN_PROGRESS for job {job.name}." in states
    )
    assert task_vms(compute, job.uid) == []
    # Stopped while they ran: no task is left RUNNING.
    assert {t.status.state.name for t in tasks_of(batch, cancelled)} == {"FAILED"}

    batch.delete_job(name=job.name).result(timeout=JOB_WAIT_SECONDS)

    with pytest.raises(core_exceptions.NotFound):
        batch.get_job(name=job.name)
    assert job.name not in [j.name for j in batch.list_jobs(parent=PARENT)]


def test_delete_of_a_running_job_deletes_its_vms(batch, compute, lg, image):
    job = submit(batch, script_job(image, "sleep 300\n"), "delrun")
    wait_for(lambda: task_vms(compute, job.uid), JOB_WAIT_SECONDS, "the task VM")

    batch.delete_job(name=job.name).result(timeout=JOB_WAIT_SECONDS)

    assert task_vms(compute, job.uid) == []
    with pytest.raises(core_exceptions.NotFound):
        batch.get_job(name=job.name)


def test_max_run_duration_fails_the_task_with_50005(batch, lg, image):
    job = submit(batch, script_job(image, "sleep 300\n", max_run_seconds=1), "maxrun")

    done = wait_state(batch, job.name, "SUCCEEDED", "FAILED")

    (task,) = tasks_of(batch, done)
    assert done.status.state.name == "FAILED" and execution_codes(task) == [50005]


def test_an_unknown_field_in_the_job_is_400(batch, lg, image):
    body = {
        **json_format.MessageToDict(batch_v1.Job.pb(script_job(image, "true\n"))),
        "surprise": 1,
    }
    # The generated client drops unknown fields, so the raw body goes through its own session.
    session = batch._transport._session
    response = session.post(
        f"{lg['batch']}/v1/{PARENT}/jobs", params={"jobId": unique("unknown")}, json=body
    )
    error = core_exceptions.from_http_response(response)
    assert isinstance(error, core_exceptions.BadRequest)
    assert 'Unknown name "surprise"' in error.message


def _container(job: batch_v1.Job) -> None:
    job.task_groups[0].task_spec.runnables[0].container = batch_v1.Runnable.Container(
        image_uri="busybox"
    )


def _barrier(job: batch_v1.Job) -> None:
    barrier = batch_v1.Runnable(barrier=batch_v1.Runnable.Barrier(name="b"))
    job.task_groups[0].task_spec.runnables.append(barrier)


def _eleven_retries(job: batch_v1.Job) -> None:
    job.task_groups[0].task_spec.max_retry_count = 11


def _unknown_image(job: batch_v1.Job) -> None:
    policy = job.allocation_policy.instances[0].policy
    policy.boot_disk.image = f"projects/{PROJECT}/global/images/family/no-such-family"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_container, "container runnables.* not supported by localgce"),
        (_barrier, "barrier runnables.* not supported by localgce"),
        (_eleven_retries, "maxRetryCount must be between 0 and 10"),
        (_unknown_image, "Register the image"),
    ],
)
def test_unsupported_or_invalid_jobs_are_400(batch, image, change, message):
    job = script_job(image, "true\n")
    change(job)
    with pytest.raises(core_exceptions.BadRequest, match=message):
        submit(batch, job, "bad")


def test_methods_localgce_does_not_model_answer_501(batch):
    with pytest.raises(core_exceptions.MethodNotImplemented):
        list(batch.list_locations(request={"name": f"projects/{PROJECT}"}))


def test_script_path_ignore_exit_status_always_run_and_task_environments(
    batch, lg, image, tmp_path
):
    script = tmp_path / "step.sh"
    script.write_text('#!/bin/sh\necho "path step for $COLOR"\nexit 3\n')
    job = script_job(image, "unused")
    spec = job.task_groups[0].task_spec
    spec.runnables = [
        batch_v1.Runnable(
            script=batch_v1.Runnable.Script(path=str(script)), ignore_exit_status=True
        ),
        batch_v1.Runnable(script=batch_v1.Runnable.Script(text="echo text step\nexit 4\n")),
        batch_v1.Runnable(script=batch_v1.Runnable.Script(text="echo skipped\n")),
        batch_v1.Runnable(script=batch_v1.Runnable.Script(text="echo cleanup\n"), always_run=True),
    ]
    job.task_groups[0].task_environments = [
        batch_v1.Environment(variables={"COLOR": "red"}),
        batch_v1.Environment(variables={"COLOR": "blue"}),
    ]
    job = submit(batch, job, "runnables")

    done = wait_state(batch, job.name, "SUCCEEDED", "FAILED")

    assert done.task_groups[0].task_count == 2  # the length of taskEnvironments
    assert [execution_codes(t) for t in tasks_of(batch, done)] == [[4], [4]]
    for index, color in enumerate(("red", "blue")):
        assert log_text(lg, done, index) == f"path step for {color}\ntext step\ncleanup\n"
