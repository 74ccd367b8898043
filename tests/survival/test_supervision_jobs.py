"""Jobs across runs, without a cloud: a job name keeps its spec (SPEC.json), a new run is never
ended by an old run's FAILED marker, `invoke down` is recorded for supervisors to see, one
supervisor per job (a flock), and Ctrl-C is one line and exit 130."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from invoke import Exit
from polling import wait_for

from survival import jobstore
from survival.backend import Cloud
from survival.compute import InstanceInfo
from survival.config import Settings
from survival.errors import ConfigError
from survival.instance_spec import JobSpec, MachineSpec
from survival.launch import Launched, launch
from survival.request import TrainRequest
from survival.supervisor import Supervisor
from trainer.jobdir import JobDir


class Compute:
    project = "local-project"

    def __init__(self):
        self.instances = {}
        self.inserts = []
        self.interrupt_after = None

    def image_from_family(self, family):
        return f"global/images/{family}"

    def insert_instance(self, zone, body):
        self.inserts.append((zone, body))
        self.instances[(zone, body["name"])] = "RUNNING"

    def get_instance(self, zone, name):
        if self.interrupt_after is not None:
            if self.interrupt_after == 0:
                raise KeyboardInterrupt
            self.interrupt_after -= 1
        status = self.instances.get((zone, name))
        return InstanceInfo(name, zone, status, "SPOT", {}, {}, None) if status else None

    def delete_instance(self, zone, name):
        self.instances.pop((zone, name), None)

    def serial_output(self, zone, name, start=0):
        return "", start


@pytest.fixture
def cloud(tmp_path, monkeypatch):
    monkeypatch.setattr("survival.launch.require_branch", lambda *args: "c" * 40)
    settings = Settings.from_invoke({"survival": {"local_state_dir": str(tmp_path / "state")}})
    jobs = tmp_path / "jobs"

    class LocalCloud(Cloud):
        def open_job_dir(self, url):
            return JobDir.open(str(jobs / url.rsplit("/", 1)[1]))

    return LocalCloud(settings, Compute())


def request(**changes):
    fields = dict(branch="exp1", example="sklearn_digits", train_steps=20, checkpoint_steps=10,
                  seed=0, hparams=(), name="job1", zone=None, gpu=None, machine_type=None,
                  provisioning=None, follow=False, chaos=0, push=False,
                  keep_alive=False)  # fmt: skip
    fields.update(changes)
    return TrainRequest(**fields)


def quiet(line):
    pass


# --- a job name keeps its spec -----------------------------------------------------------------
def test_same_name_with_another_spec_is_refused_before_any_vm(cloud):
    launch(cloud, Path("."), request(), out=quiet)
    spec = json.loads(cloud.open_job_dir("gs://b/jobs/job1").store.read("SPEC.json"))
    assert spec["train_steps"] == 20 and spec["commit"] == "c" * 40 and spec["hparams"] == {}
    cloud.compute.instances.clear()  # `invoke down job1`

    with pytest.raises(ConfigError) as refused:
        launch(cloud, Path("."), request(train_steps=5000, hparams=("learning_rate=0.5",)),
               out=quiet)  # fmt: skip
    message = str(refused.value)
    assert "\n" not in message
    assert "train_steps 20 -> 5000" in message and "learning_rate" in message
    assert "`invoke watch job1`" in message and "another --name" in message
    assert len(cloud.compute.inserts) == 1
    # The local record still describes the job that exists.
    assert jobstore.load(cloud.settings.local_state_dir, "job1")[0].train_steps == 20

    # The same spec continues the job (a new commit of the branch included).
    launch(cloud, Path("."), request(checkpoint_steps=5), out=quiet)
    assert len(cloud.compute.inserts) == 2


def test_a_job_dir_older_than_spec_json_is_checked_against_its_done_summary(cloud):
    job_dir = cloud.open_job_dir("gs://b/jobs/old")
    job_dir.write_done({"steps": 3000, "seed": 0, "hparams": {}})
    with pytest.raises(ConfigError, match="train_steps 3000 -> 5000"):
        launch(cloud, Path("."), request(name="old", train_steps=5000), out=quiet)
    assert cloud.compute.inserts == []


# --- a FAILED marker belongs to its run ----------------------------------------------------------
def test_a_new_run_is_not_ended_by_the_previous_runs_failed_marker(cloud):
    launch(cloud, Path("."), request(), out=quiet)
    job_dir = cloud.open_job_dir("gs://b/jobs/job1")
    job_dir.write_failed("trainer exited with 64 (see logs/attempt-1.log); not retrying")
    cloud.compute.instances.clear()  # `invoke down job1`

    lines = []
    launched = launch(cloud, Path("."), request(), out=lines.append)
    assert job_dir.failed() is None
    assert any("previous run's FAILED marker" in line for line in lines)
    archived = job_dir.store.list("failed-runs/")
    assert len(archived) == 1 and b"exited with 64" in job_dir.store.read(archived[0])

    # The new run's supervisor sees the job go on, and its DONE.
    def world():
        job_dir.write_done({"steps": 20})

    sup = Supervisor(cloud.compute, name="job1", zone=launched.machine.zone,
                     zones=cloud.settings.zones, job_dir=job_dir, make_body=launched.make_body,
                     max_restarts=1, out=quiet, sleep=lambda s: world(),
                     keep_alive=True)  # fmt: skip
    assert sup.run().progress.done == {"steps": 20}
    assert launched.extra_metadata["survival-run-id"]


# --- `invoke down` and `invoke watch` after it ----------------------------------------------------
def test_down_is_recorded_and_watch_after_it_starts_a_new_run(cloud):
    from survival.launch import restart_run

    state = cloud.settings.local_state_dir
    launched = launch(cloud, Path("."), request(), out=quiet)
    jobstore.update(state, "job1", serial={"instance": "t0", "next": 900})
    assert jobstore.down_marked(state, "job1") is None
    assert jobstore.mark_down(state, "job1", 123.0)
    assert jobstore.down_marked(state, "job1") == {"at_unix": 123.0}
    assert not jobstore.mark_down(state, "never-launched", 1.0)

    lines = []
    again = restart_run(cloud, launched, lines.append)
    record = jobstore.read(state, "job1")
    assert "down" not in record and "serial" not in record
    assert (
        record["run_id"]
        == again.extra_metadata["survival-run-id"]
        != launched.extra_metadata["survival-run-id"]
    )


# --- one supervisor per job ----------------------------------------------------------------------
def test_a_second_supervisor_is_refused_and_told_who_holds_the_job(tmp_path):
    from survival.errors import SupervisedElsewhere

    with jobstore.supervisor_lock(tmp_path, "job1"):
        with (
            pytest.raises(SupervisedElsewhere) as refused,
            jobstore.supervisor_lock(tmp_path, "job1"),
        ):
            pass
        message = str(refused.value)
        assert f"pid {os.getpid()}" in message
        assert "`invoke ssh-logs job1 --follow`" in message
    with jobstore.supervisor_lock(tmp_path, "job1"):  # released with its holder
        pass


def test_a_killed_supervisor_never_leaves_the_lock_held(tmp_path):
    from survival.errors import SupervisedElsewhere

    code = (
        "import sys, time; from survival import jobstore\n"
        "with jobstore.supervisor_lock(sys.argv[1], 'job1'):\n"
        "    print('held', flush=True); time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        held = pytest.raises(SupervisedElsewhere, match=f"pid {holder.pid}")
        with held, jobstore.supervisor_lock(tmp_path, "job1"):
            pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()

    def free():
        try:
            with jobstore.supervisor_lock(tmp_path, "job1"):
                return True
        except SupervisedElsewhere:
            return False

    wait_for(free, 10, what="the lock of a killed supervisor to be free")


# --- Ctrl-C ---------------------------------------------------------------------------------------
def test_ctrl_c_is_one_line_and_exit_130(cloud, monkeypatch):
    from survival import cli

    launched = launch(cloud, Path("."), request(), out=quiet)
    cloud.compute.interrupt_after = 1  # the first poll sees RUNNING, the second is interrupted
    monkeypatch.setattr(cli, "LOCAL_POLL_SECONDS", 0.0)
    with pytest.raises(Exit) as stopped:
        cli._supervise(cloud, launched)
    assert stopped.value.code == 130
    assert stopped.value.message == (
        "interrupted: job1 keeps running; `invoke watch job1` resumes supervision"
    )


def test_machine_spec_round_trips_through_the_record(tmp_path):
    job = JobSpec(name="j", repo_url="file:///r.git", branch="b", commit="c" * 40, module="m",
                  job_dir="gs://b/jobs/j", train_steps=1, checkpoint_steps=1, seed=0,
                  hparams_json="{}")  # fmt: skip
    machine = MachineSpec("z-a", "n1-standard-4", "", 0, "spot", "img", 10, "default", ("s",))
    jobstore.save(tmp_path, job, machine, {}, run_id="r1")
    jobstore.update_machine(tmp_path, "j", machine.__class__(**{**machine.__dict__, "zone": "z-b"}))
    assert jobstore.load(tmp_path, "j")[1].zone == "z-b"
    assert jobstore.read(tmp_path, "j")["run_id"] == "r1"
    assert Launched(*jobstore.load(tmp_path, "j")).job == job
