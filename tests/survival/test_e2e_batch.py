"""End to end on localgce's Cloud Batch: `invoke train --engine batch` submits one Batch job and
returns; the invoke process is killed right after (no laptop), the task VM is preempted, Batch
retries the task on a new VM, and the job ends DONE with the model an uninterrupted run makes.
Batch is reached only through google-cloud-batch."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from polling import wait_for

from survival.config import LOCAL_PROJECT
from tests.survival.test_e2e_localgce import _register_kit_venv_image, invoke

REPO = Path(__file__).resolve().parents[2]
BUCKET = "survival-jobs"
TRAIN_STEPS = 3000
CHECKPOINT_STEPS = 500
WAIT_SECONDS = 300.0

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cloud():
    from google.cloud import batch_v1

    from localgce import daemon
    from localgce.client import batch_client_options, ensure_running
    from survival.backend import compute_for, ensure_bucket, storage_client

    # Not under pytest's 0700 tmp dirs: the guest may drop to an unprivileged user.
    root = Path(tempfile.mkdtemp(prefix="survival-e2e-batch-"))
    root.chmod(0o755)
    state = root / "state"
    endpoints = ensure_running(state, grace_spot_seconds=20)
    _register_kit_venv_image(endpoints, state, "gce-survival-kit")
    storage = storage_client(LOCAL_PROJECT, endpoints["storage"])
    ensure_bucket(storage, BUCKET, create=True)
    env = {
        **os.environ,
        "INVOKE_SURVIVAL_LOCAL_STATE_DIR": str(state),
        "INVOKE_SURVIVAL_SSH_KEY_PATH": str(root / "ssh" / "google_compute_engine"),
        "STORAGE_EMULATOR_HOST": endpoints["storage"],
        "GOOGLE_CLOUD_PROJECT": LOCAL_PROJECT,
        "PYTHONUNBUFFERED": "1",
    }
    try:
        yield {
            "root": root,
            "env": env,
            "storage": storage,
            "compute": compute_for(LOCAL_PROJECT, endpoints),
            "batch": batch_v1.BatchServiceClient(**batch_client_options(endpoints)),
        }
    finally:
        daemon.stop(state)
        shutil.rmtree(root, ignore_errors=True)


def _job_dir(cloud, name: str):
    from trainer.jobdir import JobDir
    from trainer.storage import GcsStore

    return JobDir(GcsStore(f"gs://{BUCKET}/jobs/{name}", client=cloud["storage"]))


def _task_vms(cloud, name: str) -> list:
    from survival.batch_engine import VM_LABEL

    found = cloud["compute"].list_instances(("us-central1-a",), VM_LABEL)
    return [vm for vm in found if vm.labels.get(VM_LABEL) == name]


def _submit_and_kill(cloud, tmp_path: Path, name: str, *flags: str) -> tuple[str, str]:
    """Run `invoke train --engine batch`, kill it as soon as it says the job is submitted, and
    return (its output, the Batch job's resource name)."""
    out_file = tmp_path / f"{name}.out"
    with out_file.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "invoke", "train", "--branch", "exp1", "--engine", "batch",
             "--example", "sklearn_digits", "--name", name, *flags],
            cwd=REPO, env=cloud["env"], stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(
            lambda: "train: follow it with" in out_file.read_text() or proc.poll() is not None,
            WAIT_SECONDS,
            lambda: f"the submission of {name}: {out_file.read_text()[-2000:]}",
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    text = out_file.read_text()
    found = re.search(r"as Batch job (projects/\S+/jobs/\S+) \((\w+);", text)
    assert found, text[-3000:]
    assert found.group(2) in ("QUEUED", "SCHEDULED"), text[-3000:]
    assert f"`invoke watch {name}`" in text
    return text, found.group(1)


def _state(cloud, batch_job: str) -> str:
    return cloud["batch"].get_job(name=batch_job).status.state.name


def test_batch_train_survives_a_preemption_without_the_laptop(cloud, tmp_path):
    name = "b-e2e"
    text, batch_job = _submit_and_kill(
        cloud, tmp_path, name,
        "--train-steps", str(TRAIN_STEPS), "--checkpoint-steps", str(CHECKPOINT_STEPS),
    )  # fmt: skip
    assert re.search(r"push-code: exp1 -> [0-9a-f]{40} \(gs://survival-jobs/code/", text)
    job = cloud["batch"].get_job(name=batch_job)
    variables = job.task_groups[0].task_spec.environment.variables
    assert variables["SURVIVAL_JOB_DIR"] == f"gs://{BUCKET}/jobs/{name}"
    assert variables["SURVIVAL_TRAINER_MODULE"] == "trainer.examples.sklearn_digits"
    job_dir = _job_dir(cloud, name)
    # While its Batch job runs, the name is taken.
    again = invoke(cloud, "train", "--branch", "exp1", "--engine", "batch", "--example",
                   "sklearn_digits", "--name", name, "--train-steps", str(TRAIN_STEPS))  # fmt: skip
    assert again.returncode == 1 and f"invoke down {name}" in again.stderr, again.stderr

    # Preempt the task's VM once the trainer is well into the run (a checkpoint is behind it).
    wait_for(
        lambda: int((job_dir.lease() or {}).get("step") or 0) > CHECKPOINT_STEPS,
        WAIT_SECONDS,
        lambda: f"training to pass step {CHECKPOINT_STEPS}: {_state(cloud, batch_job)}",
    )
    first_vm = _task_vms(cloud, name)[0].name
    preempted = invoke(cloud, "preempt", name)
    assert preempted.returncode == 0, preempted.stdout + preempted.stderr
    assert first_vm in preempted.stdout

    wait_for(
        lambda: _state(cloud, batch_job) in ("SUCCEEDED", "FAILED"),
        WAIT_SECONDS,
        lambda: f"{batch_job} to end: {_state(cloud, batch_job)}",
    )
    assert _state(cloud, batch_job) == "SUCCEEDED"
    (task,) = cloud["batch"].list_tasks(parent=f"{batch_job}/taskGroups/group0")
    codes = [
        e.task_execution.exit_code
        for e in task.status.status_events
        if "exit code" in e.description
    ]
    assert codes == [50001, 0], [e.description for e in task.status.status_events]
    # The task VMs are Batch's: deleted when the task ended.
    wait_for(lambda: not _task_vms(cloud, name), 60, "the task VMs to be deleted")

    from survival.progress import read_progress

    progress = read_progress(job_dir)
    assert progress.done and progress.done["steps"] == TRAIN_STEPS
    assert progress.preemptions == 1 and progress.stats.lost_steps_text == "0"

    # The same job, uninterrupted, in a local job dir: the exported models must be equal.
    local = tmp_path / "local-job"
    subprocess.run(
        [sys.executable, "-m", "trainer.examples.sklearn_digits", "--job-dir", str(local),
         "--train-steps", str(TRAIN_STEPS), "--checkpoint-steps", str(CHECKPOINT_STEPS),
         "--seed", "0", "--hparams-json", "{}"],
        cwd=REPO, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    import skops.io

    from trainer.examples.sklearn_digits import MODEL_FILE, TRUSTED_TYPES

    remote = tmp_path / "remote.skops"
    job_dir.store.download(f"export/{MODEL_FILE}", remote)
    ours = skops.io.load(remote, trusted=TRUSTED_TYPES)
    theirs = skops.io.load(local / "export" / MODEL_FILE, trusted=TRUSTED_TYPES)
    for attribute in ("coef_", "intercept_", "t_"):
        np.testing.assert_array_equal(getattr(ours, attribute), getattr(theirs, attribute))

    status = invoke(cloud, "status")
    assert status.returncode == 0, status.stderr
    row = next(line for line in status.stdout.splitlines() if name in line)
    assert "SUCCEEDED / DONE" in row and f"{TRAIN_STEPS}/{TRAIN_STEPS}" in row, status.stdout
    watched = invoke(cloud, "watch", name, timeout=120)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert f"job {name}: DONE" in watched.stdout and "lost steps   0" in watched.stdout
    assert "preemptions  1" in watched.stdout


def test_batch_sweep_with_chaos_trains_every_point_to_the_model_of_a_solo_run(cloud, tmp_path):
    """A 2x2 grid on one Batch job (parallelism 2) with --chaos 1: the command returns after
    its rehearsal preemption, Batch retries that task, and the 4 points end DONE with 0 lost
    steps; point 3's model is what a solo run makes; status, status --name and the report."""
    name = "s-e2e"
    steps = "1500"
    result = invoke(
        cloud, "sweep", "--branch", "exp1", "--engine", "batch", "--example", "sklearn_digits",
        "--name", name, "--grid", "learning_rate=0.01,0.03", "--grid", "batch_size=32,64",
        "--parallelism", "2", "--train-steps", steps, "--checkpoint-steps", "500",
        "--chaos", "1",
    )  # fmt: skip
    # The command returns once its one rehearsal preemption is made; Batch does the rest.
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = result.stdout
    found = re.search(r"as Batch job (projects/\S+/jobs/\S+) \((\w+); parallelism 2\)", text)
    assert found, text[-3000:]
    batch_job = found.group(1)
    assert "point 3 batch_size=64,learning_rate=0.03" in text
    assert re.search(r"chaos: preempting \S+ \(point \d\) at step \d+", text), text[-3000:]
    assert "chaos: 1 of 1 preemption(s) made" in text
    assert _state(cloud, batch_job) not in ("SUCCEEDED", "FAILED")  # nothing waits for the end
    job = cloud["batch"].get_job(name=batch_job)
    assert job.task_groups[0].task_count == 4 and job.task_groups[0].parallelism == 2

    # sweep.json is written once and names the four points.
    import json

    sweep_url = f"gs://{BUCKET}/sweeps/{name}"
    from trainer.jobdir import JobDir
    from trainer.storage import GcsStore

    document = json.loads(GcsStore(sweep_url, client=cloud["storage"]).read("sweep.json"))
    assert [p["hparams"] for p in document["points"]] == [
        {"learning_rate": 0.01, "batch_size": 32}, {"learning_rate": 0.01, "batch_size": 64},
        {"learning_rate": 0.03, "batch_size": 32}, {"learning_rate": 0.03, "batch_size": 64},
    ]  # fmt: skip

    def point_dir(index: int) -> JobDir:
        return JobDir(GcsStore(f"{sweep_url}/points/{index}", client=cloud["storage"]))

    wait_for(
        lambda: _state(cloud, batch_job) in ("SUCCEEDED", "FAILED"),
        WAIT_SECONDS,
        lambda: f"{batch_job} to end: {_state(cloud, batch_job)}",
    )
    assert _state(cloud, batch_job) == "SUCCEEDED"
    from survival.progress import read_progress

    progress = [read_progress(point_dir(index)) for index in range(4)]
    assert all(p.done and p.done["steps"] == int(steps) for p in progress)
    assert sum(p.preemptions for p in progress) == 1
    assert all(p.stats.lost_steps_text == "0" for p in progress)

    # Point 3, trained alone with the same spec, makes the same model.
    local = tmp_path / "solo"
    subprocess.run(
        [sys.executable, "-m", "trainer.examples.sklearn_digits", "--job-dir", str(local),
         "--train-steps", steps, "--checkpoint-steps", "500", "--seed", "0",
         "--hparams-json", json.dumps(document["points"][3]["hparams"])],
        cwd=REPO, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    import skops.io

    from trainer.examples.sklearn_digits import MODEL_FILE, TRUSTED_TYPES

    remote = tmp_path / "point3.skops"
    point_dir(3).store.download(f"export/{MODEL_FILE}", remote)
    ours = skops.io.load(remote, trusted=TRUSTED_TYPES)
    theirs = skops.io.load(local / "export" / MODEL_FILE, trusted=TRUSTED_TYPES)
    for attribute in ("coef_", "intercept_", "t_"):
        np.testing.assert_array_equal(getattr(ours, attribute), getattr(theirs, attribute))

    status = invoke(cloud, "status")
    assert status.returncode == 0, status.stderr
    row = next(line for line in status.stdout.splitlines() if name in line)
    assert "sweep 4/4 done" in row and "preempted 1" in row, status.stdout
    points = invoke(cloud, "status", "--name", name)
    assert points.returncode == 0, points.stderr
    rows = [line for line in points.stdout.splitlines() if f"{name}/" in line]
    assert len(rows) == 4 and all("DONE" in row for row in rows), points.stdout

    # The report: ranked by the example's metric, as a table, a CSV and a PNG.
    import csv

    output = tmp_path / "report"
    report = invoke(cloud, "sweep.report", name, "--output", str(output))
    assert report.returncode == 0, report.stdout + report.stderr
    assert "best first by final_loss" in report.stdout
    with (output / "report.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert sorted(int(row["point"]) for row in table) == [0, 1, 2, 3]
    losses = [float(row["final_loss"]) for row in table]
    assert losses == sorted(losses) and all(row["state"] == "DONE" for row in table)
    assert sum(int(row["preemptions"]) for row in table) == 1
    assert (output / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_resume_submits_only_the_points_without_done(cloud, tmp_path):
    import json

    from trainer.jobdir import JobDir
    from trainer.storage import GcsStore

    name = "s-resume"
    sweep_url = f"gs://{BUCKET}/sweeps/{name}"

    def point_dir(index: int) -> JobDir:
        return JobDir(GcsStore(f"{sweep_url}/points/{index}", client=cloud["storage"]))

    submitted = invoke(
        cloud, "sweep", "--branch", "exp1", "--engine", "batch", "--example", "sklearn_digits",
        "--name", name, "--grid", "learning_rate=0.01,0.03", "--parallelism", "1",
        "--train-steps", "600", "--checkpoint-steps", "200",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    first = re.search(r"as Batch job (projects/\S+/jobs/\S+) ", submitted.stdout).group(1)
    # Point 0 finishes; the sweep is taken down before point 1 does.
    wait_for(lambda: point_dir(0).done(), WAIT_SECONDS, "point 0 to be DONE")
    down = invoke(cloud, "down", name)
    assert down.returncode == 0 and f"deleted Batch job {first}" in down.stdout, down.stdout
    assert point_dir(1).done() is None

    def deleted() -> bool:
        from google.api_core import exceptions

        try:
            cloud["batch"].get_job(name=first)
        except exceptions.NotFound:
            return True
        return False

    # Batch deletes the job and its VMs; the job dirs stay.
    wait_for(deleted, 60, f"{first} to be deleted")
    assert not _task_vms(cloud, name)
    assert point_dir(0).done()

    resumed = invoke(cloud, "sweep.resume", name)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed 1 point(s) (1)" in resumed.stdout, resumed.stdout
    second = re.search(r"as Batch job (projects/\S+/jobs/\S+) ", resumed.stdout).group(1)
    job = cloud["batch"].get_job(name=second)
    assert job.task_groups[0].task_count == 1
    assert job.task_groups[0].task_spec.environment.variables["SURVIVAL_SWEEP_POINTS"] == "1"
    wait_for(
        lambda: _state(cloud, second) in ("SUCCEEDED", "FAILED"),
        WAIT_SECONDS,
        lambda: f"{second} to end: {_state(cloud, second)}",
    )
    assert _state(cloud, second) == "SUCCEEDED"
    assert point_dir(1).done()["hparams"]["learning_rate"] == 0.03
    record = json.loads(
        (
            Path(cloud["env"]["INVOKE_SURVIVAL_LOCAL_STATE_DIR"]) / "sweeps" / f"{name}.json"
        ).read_text()
    )
    assert record["batch_jobs"] == [first, second]
    again = invoke(cloud, "sweep.resume", name)
    assert again.returncode == 0 and "every point is DONE" in again.stdout, again.stdout
