"""startup/startup.sh's attempt loop, for real: a trainer SIGKILLed mid-checkpoint is retried,
and the retry gets a new attempt number, so the killed attempt's log (logs/attempt-1.log)
survives and the retry's log and record carry the same number (2).

startup.sh runs as on a VM, minus the VM: a fake metadata server holds the job's metadata, the
job dir is on fake-gcs-server, the trainer repository is a local git repository holding this
tree's trainer/, and LOCALGCE_ROOT keeps every path startup.sh writes inside a temp dir."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from gitrepo import git
from polling import wait_for

from tests.trainer import helpers
from tests.trainer.fake_metadata import FakeMetadataServer
from trainer.jobdir import END_COMPLETED, END_CRASHED, JobDir, attempt_log_name

BUCKET = "startup-tests"
SLOW_CHECKPOINT_SECONDS = 2  # the window in which the first attempt is killed

pytestmark = pytest.mark.slow


def _trainer_repo(root: Path) -> tuple[str, str]:
    """A git repository whose branch `exp` holds this tree's trainer/; (file:// URL, commit)."""
    repo = root / "trainer-repo"
    shutil.copytree(
        helpers.REPO / "trainer", repo / "trainer", ignore=shutil.ignore_patterns("__pycache__")
    )
    git(repo, "init", "--quiet", "--initial-branch=exp")
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", "trainer")
    return f"file://{repo}", git(repo, "rev-parse", "HEAD")


@pytest.fixture
def vm_root():
    # Not under pytest's 0700 tmp dirs: startup.sh may drop to an unprivileged user.
    root = Path(tempfile.mkdtemp(prefix="survival-startup-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _job_url() -> str:
    from google.api_core.exceptions import Conflict

    from trainer.storage import _gcs_client

    with contextlib.suppress(Conflict):  # made by an earlier test of the session
        _gcs_client().create_bucket(BUCKET)
    return f"gs://{BUCKET}/job-{uuid.uuid4().hex[:8]}"


def _vm(vm_root: Path, job_url: str, extra_attributes: dict, extra_env: dict):
    """What startup.sh finds on a VM booted for ``job_url``: (metadata server, env, disk)."""
    repo_url, commit = _trainer_repo(vm_root)
    attributes = {
        "job-dir": job_url,
        "trainer-repo": repo_url,
        "trainer-branch": "exp",
        "trainer-commit": commit,
        "trainer-module": "trainer.examples.sklearn_digits",
        "keep-alive": "true",  # no power-off: the script just ends
        **extra_attributes,
    }
    metadata = FakeMetadataServer(
        {
            "instance/attributes/": "".join(f"{key}\n" for key in attributes),
            **{f"instance/attributes/{key}": value for key, value in attributes.items()},
        }
    )
    disk = vm_root / "disk"
    image_python = disk / "opt/survival/venv/bin/python"
    image_python.parent.mkdir(parents=True)
    # A script, not a symlink: a symlinked venv Python would not find its pyvenv.cfg.
    image_python.write_text(f'#!/bin/sh\nexec "{helpers.sys.executable}" "$@"\n')
    image_python.chmod(0o755)
    env = helpers.trainer_env(
        {"GCE_METADATA_HOST": metadata.host, "LOCALGCE_ROOT": str(disk), **extra_env}
    )
    return metadata, env, disk


def _run_startup(metadata, env, output: Path, until, what: str, then=None) -> int:
    """Run startup.sh until ``until()`` holds (``then()`` runs at that moment), then to its end;
    its exit status. ``until`` is called with the running process."""
    metadata.start()
    with open(output, "w") as sink:
        startup = subprocess.Popen(
            ["bash", str(helpers.REPO / "startup/startup.sh")],
            env=env,
            cwd=helpers.REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:

        def condition() -> bool:
            assert startup.poll() is None, f"startup.sh ended early:\n{output.read_text()}"
            return until()

        wait_for(
            condition,
            helpers.WAIT_SECONDS,
            lambda: f"{what}; startup.sh said:\n{output.read_text()}",
            max_delay_seconds=0.1,
        )
        if then is not None:
            then()
        return startup.wait(timeout=helpers.WAIT_SECONDS)
    finally:
        if startup.poll() is None:
            startup.kill()
            startup.wait()
        metadata.stop()


def test_killed_attempt_keeps_its_log_and_the_retry_takes_the_next_number(gcs_env, vm_root):
    job_url = _job_url()
    metadata, env, disk = _vm(
        vm_root,
        job_url,
        {"train-steps": "40", "checkpoint-steps": "20", "crash-retries": "2"},
        # Every checkpoint waits before its manifest: the first attempt is killed there.
        {"SURVIVAL_TEST_SLOW_CHECKPOINT_SECONDS": str(SLOW_CHECKPOINT_SECONDS)},
    )
    local_log = disk / "var/log/survival" / attempt_log_name(1)
    pid_file = disk / "run/survival/trainer.pid"
    output = vm_root / "startup-output.txt"

    returncode = _run_startup(
        metadata,
        env,
        output,
        until=lambda: local_log.is_file() and "manifest pending" in local_log.read_text(),
        what="the first attempt's first checkpoint",
        then=lambda: os.kill(int(pid_file.read_text()), signal.SIGKILL),
    )
    stderr = output.read_text()
    assert returncode == 0, stderr
    assert "trainer exited with 137" in stderr, stderr

    job = JobDir.open(job_url)
    records = job.attempts()
    assert [(r["attempt"], r["end_reason"]) for r in records] == [
        (1, END_CRASHED),
        (2, END_COMPLETED),
    ], stderr
    assert job.done()["attempts"] == 2 and job.done()["crashes"] == 1
    assert sorted(job.attempt_log_names()) == [attempt_log_name(1), attempt_log_name(2)]
    killed_log = job.store.read(f"logs/{attempt_log_name(1)}").decode()
    retry_log = job.store.read(f"logs/{attempt_log_name(2)}").decode()
    assert "manifest pending" in killed_log and "DONE" not in killed_log
    assert "DONE: 40 steps" in retry_log


def test_a_held_lease_is_waited_out_not_failed(gcs_env, vm_root):
    """Exit 73 on a VM (a LEASE whose holder cannot be checked from here, e.g. from a previous
    boot) is retried once the lease's stale limit has passed, not marked FAILED."""
    job_url = _job_url()
    job = JobDir.open(job_url)
    metadata, env, _ = _vm(
        vm_root,
        job_url,
        {"train-steps": "10", "checkpoint-steps": "5"},
        {"SURVIVAL_LEASE_STALE_SECONDS": "2"},
    )
    output = vm_root / "startup-output.txt"

    def hold_lease() -> None:
        # Another writer's LEASE, refreshed while the first attempt runs.
        now = time.time()
        body = {"holder": "other-vm", "pid": 4242, "attempt": 1, "step": 0,
                "started_unix": now, "heartbeat_unix": now}  # fmt: skip
        job.store.write("LEASE", json.dumps(body).encode())

    def first_attempt_held() -> bool:
        if "trainer exited with 73" in output.read_text():
            return True
        hold_lease()
        return False

    hold_lease()
    returncode = _run_startup(
        metadata, env, output, until=first_attempt_held, what="the first attempt's exit 73"
    )
    stderr = output.read_text()
    assert returncode == 0, stderr
    assert "trying again in 4s" in stderr, stderr
    assert job.failed() is None, stderr
    assert job.done()["steps"] == 10
    assert [r["end_reason"] for r in job.attempts()] == [END_CRASHED, END_COMPLETED]
