"""The Batch task runner (startup/batch-runner.sh, sent as script.text after startup.sh): its
settings come from SURVIVAL_* environment variables or, for a sweep task, from sweep.json by
BATCH_TASK_INDEX, and are validated by startup.sh's own checks; the exit status is the task's.

As in test_startup_bundle.py, the runner runs as on a VM minus the VM: a fake metadata server
holds the service account's token, the job dirs and bundle are on fake-gcs-server, and
LOCALGCE_ROOT keeps every path inside a temp dir. The script run is exactly the text
survival/batch_engine.py sends to Batch."""

# ruff: noqa: F811 - the fixtures are imported from test_startup_bundle.py

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from survival.batch_engine import env_name, runner_script
from tests.trainer import helpers
from tests.trainer.fake_metadata import FakeMetadataServer
from tests.trainer.test_startup_bundle import (  # noqa: F401
    BUCKET,
    MODULE,
    STORAGE_SCOPE,
    TOKEN,
    _upload,
    bucket,
    code,
    vm_root,
)
from trainer.jobdir import JobDir

pytestmark = pytest.mark.slow


def _run(vm_root: Path, env: dict[str, str]) -> tuple[int, str]:
    metadata = FakeMetadataServer(
        {
            "instance/attributes/": "",
            "instance/service-accounts/default/token": json.dumps(
                {"access_token": TOKEN, "expires_in": 3599, "token_type": "Bearer"}
            ),
            "instance/service-accounts/default/scopes": f"{STORAGE_SCOPE}\n",
            "project/project-id": "test-project",
        }
    )
    disk = vm_root / "disk"
    image_python = disk / "opt/survival/venv/bin/python"
    image_python.parent.mkdir(parents=True, exist_ok=True)
    image_python.write_text(f'#!/bin/sh\nexec "{helpers.sys.executable}" "$@"\n')
    image_python.chmod(0o755)
    script = vm_root / "runnable-0.sh"
    script.write_text(runner_script())
    full_env = helpers.trainer_env(
        {"GCE_METADATA_HOST": metadata.host, "LOCALGCE_ROOT": str(disk), **env}
    )
    metadata.start()
    try:
        result = subprocess.run(
            ["bash", str(script)], env=full_env, cwd=vm_root, capture_output=True, text=True,
            timeout=helpers.WAIT_SECONDS, check=False,
        )  # fmt: skip
    finally:
        metadata.stop()
    return result.returncode, result.stdout + result.stderr


def _settings(bundle: str, commit: str, **extra: str) -> dict[str, str]:
    values = {
        "trainer-bundle": bundle,
        "trainer-branch": "exp",
        "trainer-commit": commit,
        "trainer-module": MODULE,
        "train-steps": "5",
        "checkpoint-steps": "0",
        **extra,
    }
    return {env_name(key): value for key, value in values.items()}


def test_settings_come_from_the_task_environment(bucket, code, vm_root):
    job_url = f"gs://{BUCKET}/job-{uuid.uuid4().hex[:8]}"
    url = _upload(bucket, code["bundles"]["good"], code["good"])

    rc, output = _run(vm_root, {
        **_settings(url, code["good"], **{"job-dir": job_url,
                                          "hparams": '{"learning_rate": 0.05}'}),
        "BATCH_TASK_INDEX": "0",
    })  # fmt: skip

    assert rc == 0, output
    assert "the task ends here" in output and "powering off" not in output
    done = JobDir.open(job_url).done()
    assert done["steps"] == 5 and done["hparams"]["learning_rate"] == 0.05


def test_a_sweep_task_trains_the_point_of_its_index(bucket, code, vm_root):
    url = _upload(bucket, code["bundles"]["good"], code["good"])
    sweep = f"t-{uuid.uuid4().hex[:8]}/sweeps/s1"
    spec = {key: value for key, value in _settings(url, code["good"]).items()}
    sweep_json = {
        "spec": {key: spec[env_name(key)] for key in (
            "trainer-bundle", "trainer-branch", "trainer-commit", "trainer-module",
            "train-steps", "checkpoint-steps")},
        "points": [{"hparams": {"learning_rate": 0.01}}, {"hparams": {"learning_rate": 0.03}},
                   {"hparams": {"learning_rate": 0.1}}],
    }  # fmt: skip
    bucket.blob(f"{sweep}/sweep.json").upload_from_string(json.dumps(sweep_json))

    # A job over points 2 and 0 only (a resumed sweep): its task 0 trains point 2.
    rc, output = _run(vm_root, {
        "SURVIVAL_SWEEP": f"gs://{BUCKET}/{sweep}/sweep.json",
        "SURVIVAL_SWEEP_POINTS": "2,0",
        "BATCH_TASK_INDEX": "0",
    })  # fmt: skip

    assert rc == 0, output
    assert "task 0 of the sweep runs point 2" in output
    done = JobDir.open(f"gs://{BUCKET}/{sweep}/points/2").done()
    assert done["steps"] == 5 and done["hparams"]["learning_rate"] == 0.1
    assert JobDir.open(f"gs://{BUCKET}/{sweep}/points/0").done() is None


@pytest.mark.parametrize(
    ("key", "template"),
    [
        ("trainer-branch", "exp;touch {marker}"),
        ("trainer-branch", "$(touch {marker})"),
        ("hparams", '{{"x": "$(touch {marker})"}}'),
        ("trainer-module", "trainer.examples.sklearn_digits'; touch {marker}; '"),
    ],
)
def test_hostile_task_variables_fail_the_task_cleanly(bucket, code, vm_root, key, template):
    job_url = f"gs://{BUCKET}/job-{uuid.uuid4().hex[:8]}"
    marker = vm_root / "injected"
    settings = _settings(
        f"gs://{BUCKET}/code/{code['good']}.bundle", code["good"], **{"job-dir": job_url}
    )
    settings[env_name(key)] = template.format(marker=marker)

    rc, output = _run(vm_root, settings)

    assert rc == 1, output
    assert not marker.exists()
    reason = JobDir.open(job_url).failed()["reason"]
    assert reason.startswith("validation error: ") and key in reason, reason


def test_a_sweep_url_outside_the_pattern_is_refused_before_any_download(vm_root):
    sweep = f"gs://{BUCKET}/x/$(id)/sweep.json"
    rc, output = _run(vm_root, {"SURVIVAL_SWEEP": sweep, "BATCH_TASK_INDEX": "0"})

    assert rc == 1, output
    assert "SURVIVAL_SWEEP must be a gs://BUCKET/.../sweep.json object" in output
