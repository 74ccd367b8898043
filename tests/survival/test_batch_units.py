"""Batch engine and sweep units: the Job resource the kit submits, the runner script it sends,
and sweep points (expanded and validated before anything is created). No emulator."""

from __future__ import annotations

import json

import pytest

from survival import batch_engine, jobstore
from survival import sweep as sweeps
from survival.errors import ConfigError
from survival.instance_spec import STARTUP_DIR, JobSpec, MachineSpec

ZONES = ("us-central1-a", "us-central1-b")


def _machine(**overrides) -> MachineSpec:
    values = {
        "zone": "us-central1-a", "machine_type": "n1-standard-4", "gpu_type": "nvidia-tesla-t4",
        "gpu_count": 1, "provisioning": "spot", "disk_size_gb": 50, "service_account": "default",
        "image": "https://compute.googleapis.com/compute/v1/projects/p/global/images/kit-1",
        "scopes": ("s",),
    }  # fmt: skip
    return MachineSpec(**{**values, **overrides})


def _job() -> JobSpec:
    return JobSpec(
        name="j1", repo_url="", bundle_url=f"gs://b/code/{'a' * 40}.bundle", branch="exp1",
        commit="a" * 40, module="trainer.examples.sklearn_digits", job_dir="gs://b/jobs/j1",
        train_steps=300, checkpoint_steps=50, seed=3, hparams_json='{"alpha": 0.001}',
    )  # fmt: skip


def test_the_job_retries_preemption_and_notice_exits_and_carries_the_settings_as_variables():
    from google.cloud import batch_v1

    variables = batch_engine.job_variables(_job())
    body = batch_engine.job_body(_machine(), ZONES, variables, name="j1", script="#!/bin/sh\n")
    # The resource is one google-cloud-batch accepts (an unknown field would raise here).
    job = batch_v1.Job.from_json(json.dumps(body))
    spec = job.task_groups[0].task_spec
    assert list(spec.lifecycle_policies[0].action_condition.exit_codes) == [50001, 75]
    assert spec.lifecycle_policies[0].action.name == "RETRY_TASK"
    assert spec.max_retry_count == 10
    assert dict(spec.environment.variables) == {
        "SURVIVAL_TRAINER_BUNDLE": f"gs://b/code/{'a' * 40}.bundle",
        "SURVIVAL_TRAINER_BRANCH": "exp1", "SURVIVAL_TRAINER_COMMIT": "a" * 40,
        "SURVIVAL_TRAINER_MODULE": "trainer.examples.sklearn_digits",
        "SURVIVAL_JOB_DIR": "gs://b/jobs/j1", "SURVIVAL_TRAIN_STEPS": "300",
        "SURVIVAL_CHECKPOINT_STEPS": "50", "SURVIVAL_SEED": "3",
        "SURVIVAL_HPARAMS": '{"alpha": 0.001}', "SURVIVAL_CRASH_RETRIES": "2",
    }  # fmt: skip
    policy = job.allocation_policy.instances[0]
    assert policy.policy.boot_disk.image == "projects/p/global/images/kit-1"
    assert policy.policy.provisioning_model.name == "SPOT"
    assert policy.install_gpu_drivers is False
    assert policy.policy.accelerators[0].type_ == "nvidia-tesla-t4"
    assert list(job.allocation_policy.location.allowed_locations) == [
        "zones/us-central1-a", "zones/us-central1-b"]  # fmt: skip
    assert job.allocation_policy.labels == {"survival-batch": "j1"}
    assert batch_engine.location_of(ZONES) == "us-central1"


@pytest.mark.parametrize(
    ("overrides", "kwargs", "words"),
    [
        ({"provisioning": "flex-start"}, {}, "cannot run on Batch"),
        ({}, {"max_retry_count": 11}, "0 to 10 retries"),
        ({}, {"task_count": 2, "parallelism": 3}, "parallelism of 1 to taskCount"),
    ],
)
def test_what_batch_cannot_run_is_one_line(overrides, kwargs, words):
    with pytest.raises(ConfigError, match=words):
        batch_engine.job_body(_machine(**overrides), ZONES, {}, name="j", script="", **kwargs)


def test_the_runner_is_startup_sh_then_batch_runner_sh_and_runs_batch_main_only():
    text = batch_engine.runner_script()
    startup = (STARTUP_DIR / "startup.sh").read_text()
    assert text.startswith(startup[: startup.index('if [[ "${BASH_SOURCE[0]}"')])
    assert 'startup::main "$@"' not in text  # startup.sh's own entry point is cut off
    assert text.rstrip().endswith('batch::main "$@"\nfi')


def test_a_changed_startup_sh_entry_point_is_caught(tmp_path):
    (tmp_path / "startup.sh").write_text("#!/bin/bash\nstartup::main\n")
    (tmp_path / "batch-runner.sh").write_text("")
    with pytest.raises(ConfigError, match="entry-point guard"):
        batch_engine.runner_script(tmp_path)


def test_job_ids_are_valid_batch_ids_and_unique_per_run():
    first, second = (batch_engine.job_id_for("a" * 63) for _ in range(2))
    assert first != second and len(first) <= 63 and first[0].isalpha()


def test_job_records_say_their_engine(tmp_path):
    jobstore.save(tmp_path, _job(), _machine(), {})
    assert jobstore.engine_of(jobstore.read(tmp_path, "j1")) == "vms"
    jobstore.save(tmp_path, _job(), _machine(), {}, engine="batch", batch_jobs=["x"])
    record = jobstore.read(tmp_path, "j1")
    assert jobstore.engine_of(record) == "batch" and record["batch_jobs"] == ["x"]
    assert jobstore.engine_of({}) == "vms"  # a record from before engines


def test_a_grid_is_the_product_of_its_flags_in_order():
    grid = sweeps.parse_grid(["learning_rate=0.01,0.03", "batch_size=32,64"])
    points = sweeps.expand("sklearn_digits", grid, [], 0, 0)
    assert points == [
        {"learning_rate": 0.01, "batch_size": 32}, {"learning_rate": 0.01, "batch_size": 64},
        {"learning_rate": 0.03, "batch_size": 32}, {"learning_rate": 0.03, "batch_size": 64},
    ]  # fmt: skip


def test_random_points_are_drawn_from_ranges_reproducibly():
    ranges = [sweeps.parse_range("learning_rate=1e-4:1e-1:log"), sweeps.parse_range(
        "batch_size=16:128")]  # fmt: skip
    grid = sweeps.parse_grid(["alpha=0.0001,0.001"])
    first = sweeps.expand("sklearn_digits", grid, ranges, 5, 7)
    assert first == sweeps.expand("sklearn_digits", grid, ranges, 5, 7)
    assert first != sweeps.expand("sklearn_digits", grid, ranges, 5, 8)
    assert len(first) == 5
    for point in first:
        assert 1e-4 <= point["learning_rate"] <= 1e-1
        assert isinstance(point["batch_size"], int) and 16 <= point["batch_size"] <= 128
        assert point["alpha"] in (0.0001, 0.001)


@pytest.mark.parametrize(
    ("grid", "ranges", "random_points", "words"),
    [
        (["learning_rate=0.01,20"], [], 0, r"point 1 .*learning_rate.* must be float from"),
        (["momentum=0.9"], [], 0, "unknown hyperparameter 'momentum'"),
        (["batch_size=32,abc"], [], 0, "must be int|integer|whole"),
        (["learning_rate"], [], 0, "use NAME=V1,V2"),
        ([], ["learning_rate=1e-4:1e-1:log"], 0, "give --random N as well"),
        ([], ["learning_rate=0:1:log"], 3, "a log range needs LOW > 0"),
        ([], ["learning_rate=1:0"], 3, "LOW must be a number no larger than HIGH"),
        ([], [], 0, "a sweep needs points"),
        (["learning_rate=0.01", "learning_rate=0.03"], [], 0, "given twice"),
    ],
)
def test_bad_points_are_refused_before_anything_is_created(grid, ranges, random_points, words):
    with pytest.raises(ConfigError, match=words):
        sweeps.expand(
            "sklearn_digits",
            sweeps.parse_grid(grid),
            [sweeps.parse_range(r) for r in ranges],
            random_points,
            0,
        )


def test_sweep_json_is_created_once_and_never_overwritten(tmp_path):
    from trainer.jobdir import JobDir

    store = JobDir.open(str(tmp_path / "sweeps" / "s1")).store
    spec = {"trainer-commit": "c" * 40, "train-steps": "10", "job-dir": "not shared"}
    document = sweeps.sweep_document("s1", "sklearn_digits", spec, [{"alpha": 0.1}], 1.0)
    sweeps.write_sweep(store, document)
    assert sweeps.read_sweep(store)["spec"] == {"trainer-commit": "c" * 40, "train-steps": "10"}
    with pytest.raises(ConfigError, match="never overwritten"):
        sweeps.write_sweep(store, {**document, "points": []})
    assert sweeps.read_sweep(store)["points"] == [{"index": 0, "hparams": {"alpha": 0.1}}]


@pytest.mark.parametrize(
    ("done", "failed", "task", "state"),
    [
        (True, False, "RUNNING", "DONE"),
        (False, True, None, "FAILED"),
        (False, False, "RUNNING", "RUNNING"),
        (False, False, "PENDING", "PENDING"),
        (False, False, "SUCCEEDED", "ENDED"),
    ],
)
def test_a_points_state(done, failed, task, state):
    from survival.progress import Progress

    progress = Progress({"steps": 1} if done else None, {"reason": "x"} if failed else None,
                        [], None, 0, None)  # fmt: skip
    assert sweeps.point_state(progress, task) == state


def _invoke(*args, env=None):
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=Path(__file__).resolve().parents[2],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip


def test_sweep_and_engine_flags_have_help():
    import inspect

    import tasks

    sweeps_collection = tasks.ns.collections["sweep"]
    for task in (tasks.ns.tasks["train"], tasks.ns.tasks["status"],
                 sweeps_collection.tasks["sweep"], sweeps_collection.tasks["resume"]):  # fmt: skip
        name = task.name
        params = list(inspect.signature(task.body).parameters)[1:]
        assert all((task.help or {}).get(p) for p in params), name


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["sweep", "--branch", "exp1", "--example", "sklearn_digits", "--grid",
          "learning_rate=0.01,20"], "point 1"),
        (["sweep", "--branch", "exp1", "--example", "sklearn_digits", "--grid",
          "learning_rate=0.01,0.1", "--parallelism", "3"], "--parallelism must be between 1"),
        (["sweep", "--branch", "exp1", "--engine", "k8s", "--grid", "alpha=0.1"],
         "--engine 'k8s': use vms"),
        (["sweep", "--branch", "exp1", "--engine", "batch", "--example", "sklearn_digits",
          "--grid", "alpha=0.1", "--chaos", "-1"], "--chaos must be a number of preemptions"),
    ],
)  # fmt: skip
def test_sweep_and_batch_errors_are_one_line_before_anything_is_created(tmp_path, args, words):
    import os

    # A state dir with no emulator: anything that reached the cloud would say so instead.
    env = {**os.environ, "INVOKE_SURVIVAL_LOCAL_STATE_DIR": str(tmp_path / "state")}
    result = _invoke(*args, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert words in result.stderr, result.stderr
    assert not (tmp_path / "state").exists()


class _FakeBatch:
    def __init__(self, error=None):
        self.error = error

    def probe(self):
        if self.error:
            raise self.error


def test_doctor_checks_the_batch_api_and_says_how_to_enable_it(tmp_path):
    from google.api_core import exceptions as api
    from invoke import Config

    from survival.config import DEFAULTS, Settings
    from survival.doctor import check_batch

    values = {"backend": "gce", "project": "my-project-1", "local_state_dir": str(tmp_path)}
    config = Config(overrides={"survival": values})
    config.load_collection({"survival": DEFAULTS})
    current = Settings.from_invoke(config)
    ok = check_batch(current, _FakeBatch())
    assert ok.ok and ok.name == "Batch API (us-central1)" and "batch.agentReporter" in ok.detail
    disabled = check_batch(current, _FakeBatch(api.Forbidden(
        "Batch API has not been used in project 123 before or it is disabled.",
        errors=[{"reason": "accessNotConfigured"}])))  # fmt: skip
    assert not disabled.ok
    assert disabled.fix == "gcloud services enable batch.googleapis.com --project my-project-1"
    denied = check_batch(current, _FakeBatch(api.Forbidden("Permission denied on batch.jobs.list")))
    assert not denied.ok and "roles/batch.jobsEditor" in denied.fix


def test_a_vms_sweep_runs_one_supervised_launch_per_point_at_most_p_at_a_time(
    tmp_path, monkeypatch
):
    """--engine vms: every point is `invoke train`'s launch + supervisor for job NAME-pI, with
    its own hyperparameters, never more than --parallelism at once."""
    import dataclasses
    import threading
    from types import SimpleNamespace

    from survival import cli, launch, sweep_cli
    from survival.request import TrainRequest
    from trainer.jobdir import JobDir

    running, peak, seen = [0], [0], []
    lock = threading.Lock()
    # Each supervisor waits for a second one: the pool must run two at once (with one at a
    # time the barrier breaks), and the peak shows it never runs more.
    pair = threading.Barrier(2, timeout=30)

    def fake_launch(cloud, worktree, req, out=print):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            seen.append((req.name, req.hparams, req.push))
        return SimpleNamespace(job=req)

    def fake_supervise(cloud, launched, plan=None):
        pair.wait()
        with lock:
            running[0] -= 1

    monkeypatch.setattr(launch, "launch", fake_launch)
    monkeypatch.setattr(cli, "_supervise", fake_supervise)
    monkeypatch.setattr(cli, "load_sdk_before_supervising", lambda: None)
    monkeypatch.setattr(launch, "push_for", lambda *a: "c" * 40)
    settings = SimpleNamespace(
        job_bucket="b", local_state_dir=tmp_path / "state", zones=ZONES, trainer_repo="",
        image_family="f", machine_type="n1", gpu_type="", gpu_count=0, provisioning="spot",
        disk_size_gb=10, service_account="default", scopes=("s",), preemption_notice_seconds=0,
        max_run_seconds=0, network="default", subnetwork="", external_ip=True,
    )  # fmt: skip
    cloud = SimpleNamespace(
        settings=settings,
        compute=SimpleNamespace(image_from_family=lambda family: "projects/p/global/images/i"),
        open_job_dir=lambda url: JobDir.open(str(tmp_path / url.removeprefix("gs://"))),
    )
    req = TrainRequest.from_flags(
        branch="exp1", example="sklearn_digits", hparams=(), name="sw", zone=None, gpu=None,
        machine_type=None, provisioning=None, follow=True, chaos=0, push=True, keep_alive=False,
    )  # fmt: skip
    points = [{"learning_rate": r, "batch_size": b} for r in (0.01, 0.03) for b in (32, 64)]

    record = sweep_cli._sweep_vms(cloud, dataclasses.replace(req), points, 2)

    assert peak[0] == 2
    assert sorted(name for name, _, _ in seen) == ["sw-p0", "sw-p1", "sw-p2", "sw-p3"]
    assert ("sw-p3", ("learning_rate=0.03", "batch_size=64"), False) in seen
    assert record["jobs"] == ["sw-p0", "sw-p1", "sw-p2", "sw-p3"]
    assert sweeps.read_record(tmp_path / "state", "sw")["engine"] == "vms"
    stored = sweeps.read_sweep(JobDir.open(str(tmp_path / "b" / "sweeps" / "sw")).store)
    assert len(stored["points"]) == 4 and stored["commit"] == "c" * 40


def test_batch_chaos_preempts_the_vm_of_a_running_task_past_each_target_step():
    """Task 1 trains point 7 (the job's order is [3, 7]); task 0's point never moves. Each target
    step preempts the VM task 1 runs on at that moment; Batch's retry runs on a new VM."""
    from types import SimpleNamespace

    job = "projects/p/locations/r/jobs/j"
    steps = {3: 0, 7: 0}
    vm_of_task = {0: "100", 1: "200"}
    preempted = []

    def task(index):
        event = ("Task state is updated from ASSIGNED to RUNNING on "
                 f"zones/us-central1-a/instances/{vm_of_task[index]}.")  # fmt: skip
        status = {"state": "RUNNING", "statusEvents": [{"description": event}]}
        return {"name": f"{job}/taskGroups/group0/tasks/{index}", "status": status}

    batch = SimpleNamespace(get=lambda name: {"status": {"state": "RUNNING"}},
                            tasks=lambda name: [task(0), task(1)])  # fmt: skip

    def list_instances(zones, label):
        return [SimpleNamespace(name=f"vm-{vm}", status="RUNNING", raw={"id": vm})
                for vm in vm_of_task.values()]  # fmt: skip

    def preempt_instance(zone, name):
        preempted.append((zone, name, steps[7]))
        vm_of_task[1] = str(int(vm_of_task[1]) + 1)  # the retry's new VM

    def one_poll_later(_seconds):
        steps[7] += 100

    ticks = iter(range(1000))
    made = batch_engine.rehearse_preemptions(
        batch, SimpleNamespace(list_instances=list_instances, preempt_instance=preempt_instance),
        job, steps.__getitem__, [250, 150], order=[3, 7], poll_seconds=1, timeout_seconds=50,
        clock=lambda: next(ticks), sleep=one_poll_later, out=lambda line: None,
    )  # fmt: skip

    assert made == 2
    assert preempted == [("us-central1-a", "vm-200", 200), ("us-central1-a", "vm-201", 300)]


def test_batch_chaos_stops_when_the_job_ends():
    from types import SimpleNamespace

    batch = SimpleNamespace(get=lambda name: {"status": {"state": "SUCCEEDED"}},
                            tasks=lambda name: [])  # fmt: skip
    made = batch_engine.rehearse_preemptions(
        batch, SimpleNamespace(), "j", lambda point: 0, [10], poll_seconds=1, timeout_seconds=5,
        sleep=lambda s: None, out=lambda line: None,
    )  # fmt: skip
    assert made == 0
