"""Units of localgce's Batch: routing from the discovery document, enum names, the job checks,
state transitions, and the daemon-start sweep of task VMs (no daemon needed)."""

from __future__ import annotations

import pytest

from localgce.batch import api, model
from localgce.batch.runner import JOB_UID_LABEL, Runner
from localgce.errors import ApiError
from localgce.state import InstanceKey, InstanceRecord, Store

JOB = "projects/p/locations/us-central1/jobs/j1"


def job_body(**group) -> dict:
    return {
        "taskGroups": [
            {"taskSpec": {"runnables": [{"script": {"text": "true"}}]}, **group},
        ],
        "allocationPolicy": {
            "instances": [{"policy": {"bootDisk": {"image": "projects/p/global/images/family/f"}}}]
        },
    }


def test_routes_come_from_the_discovery_document():
    method, params = api.resolve("POST", f"/v1/{JOB}:cancel")
    assert method.id == "batch.projects.locations.jobs.cancel" and params == {"name": JOB}
    method, params = api.resolve("GET", f"/v1/{JOB}/taskGroups/group0/tasks/3")
    assert method.id == "batch.projects.locations.jobs.taskGroups.tasks.get"
    assert params == {"name": f"{JOB}/taskGroups/group0/tasks/3"}
    method, _ = api.resolve("GET", "/v1/projects/p/locations/l/operations/op-1")
    assert method.id == "batch.projects.locations.operations.get"
    assert api.resolve("GET", "/v1/projects/p/nothing/here") is None
    with pytest.raises(ApiError) as err:
        api.resolve("PUT", f"/v1/{JOB}")
    assert err.value.status == 405


def test_enum_numbers_become_names_and_unknown_numbers_stay():
    body = job_body()
    body["allocationPolicy"]["instances"][0]["policy"]["provisioningModel"] = 2
    body["taskGroups"][0]["taskSpec"]["lifecyclePolicies"] = [{"action": 1}, {"action": 99}]
    named = api.enum_names({"$ref": "Job"}, body)
    assert named["allocationPolicy"]["instances"][0]["policy"]["provisioningModel"] == "SPOT"
    actions = [p["action"] for p in named["taskGroups"][0]["taskSpec"]["lifecyclePolicies"]]
    assert actions == ["RETRY_TASK", 99]


def test_parse_job_defaults_and_task_environments():
    spec = model.parse_job("us-central1", job_body())
    assert (spec.task_count, spec.parallelism, spec.max_retry_count) == (1, 1, 0)
    assert spec.zone == "us-central1-a" and spec.provisioning_model == "STANDARD"
    envs = [{"variables": {"X": "a"}}, {"variables": {"X": "b"}}]
    spec = model.parse_job("us-central1", job_body(taskEnvironments=envs, taskCount="7"))
    assert spec.task_count == 2 and spec.task_variables == ({"X": "a"}, {"X": "b"})
    body = job_body(taskCount="4", parallelism="2")
    body["allocationPolicy"]["location"] = {"allowedLocations": ["zones/europe-west4-b"]}
    spec = model.parse_job("europe-west4", body)
    assert (spec.task_count, spec.parallelism, spec.zone) == (4, 2, "europe-west4-b")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b["taskGroups"].append(b["taskGroups"][0]), "exactly one task group"),
        (lambda b: b.pop("allocationPolicy"), "bootDisk.image"),
        (lambda b: b["taskGroups"][0]["taskSpec"].update(runnables=[]), "at least one runnable"),
        (lambda b: b["taskGroups"][0]["taskSpec"].update(maxRunDuration="1h"), "duration"),
        (
            lambda b: b["taskGroups"][0]["taskSpec"].update(volumes=[{"mountPath": "/m"}]),
            "volumes is not supported by localgce",
        ),
        (
            lambda b: b["allocationPolicy"]["instances"][0].update(instanceTemplate="t"),
            "instanceTemplate is not supported",
        ),
        (
            lambda b: b["taskGroups"][0]["taskSpec"]["runnables"][0]["script"].update(path="/x"),
            "exactly one of text or path",
        ),
    ],
)
def test_parse_job_refuses_what_localgce_cannot_run(change, message):
    body = job_body()
    change(body)
    with pytest.raises(ApiError, match=message) as err:
        model.parse_job("us-central1", body)
    assert err.value.status == 400


def _policies(*policies) -> model.JobSpec:
    body = job_body()
    body["taskGroups"][0]["taskSpec"]["lifecyclePolicies"] = [
        {"action": action, "actionCondition": {"exitCodes": codes}} for action, codes in policies
    ]
    return model.parse_job("us-central1", body)


def test_lifecycle_policies_decide_which_failures_may_be_retried():
    default = _policies()
    assert default.may_retry(1) and default.may_retry(50001)
    retry_preempted = _policies(("RETRY_TASK", [50001]))
    assert retry_preempted.may_retry(50001) and not retry_preempted.may_retry(1)
    fail_on_config_error = _policies(("FAIL_TASK", [64]))
    assert not fail_on_config_error.may_retry(64) and fail_on_config_error.may_retry(50001)


def test_a_delete_or_cancel_is_not_undone_by_a_task_starting_late():
    allowed = model.job_transition_allowed
    assert allowed(model.QUEUED, model.SCHEDULED) and allowed(model.RUNNING, model.FAILED)
    assert not allowed(model.CANCELLATION_IN_PROGRESS, model.RUNNING)
    assert allowed(model.CANCELLATION_IN_PROGRESS, model.CANCELLED)
    assert not allowed(model.DELETION_IN_PROGRESS, model.RUNNING)
    assert allowed(model.SUCCEEDED, model.DELETION_IN_PROGRESS)
    assert not allowed(model.SUCCEEDED, model.RUNNING)


class _Lifecycle:
    def __init__(self, store: Store):
        self.store = store
        self.deleted: list[InstanceKey] = []

    def delete(self, key: InstanceKey) -> None:
        self.deleted.append(key)
        with self.store.lock:
            self.store.instances.pop(key)


def test_daemon_start_deletes_the_task_vms_a_previous_daemon_left(tmp_path):
    store = Store(tmp_path)
    task_vm = InstanceKey("p", "us-central1-a", "job-1-group0-0")
    other_vm = InstanceKey("p", "us-central1-a", "trainer")
    for key, labels in ((task_vm, {JOB_UID_LABEL: "j-1"}), (other_vm, {"app": "x"})):
        store.instances[key] = InstanceRecord(
            resource={"name": key.name, "status": "RUNNING", "labels": labels}, guest={}
        )
    lifecycle = _Lifecycle(store)
    runner = Runner(store, lifecycle, insert=None, images=None, log_dir=tmp_path / "batch")

    assert runner.delete_leftover_vms() == [task_vm]
    assert lifecycle.deleted == [task_vm] and list(store.instances) == [other_vm]
