"""End to end on localgce: a Spot preemption notice and a flex-start run duration, through the
real `invoke train`, startup script and trainer (the emulator fixture of test_e2e_localgce)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.survival import test_e2e_localgce as e2e
from tests.survival.test_e2e_localgce import REPO, _download, invoke
from tests.trainer.helpers import assert_same_arrays, export_arrays

pytestmark = pytest.mark.slow
# The same module-scoped emulator fixture (a daemon of this module's own).
cloud = e2e.cloud


def _attempts(cloud, name: str, tmp_path) -> list[dict]:
    target = tmp_path / f"{name}-attempts.jsonl"
    _download(cloud["env"], f"gs://survival-jobs/jobs/{name}/attempts.jsonl", target)
    return [json.loads(line) for line in target.read_text().splitlines() if line.strip()]


def test_spot_notice_lets_the_trainer_save_before_sigterm(cloud, tmp_path):
    # 10 s of notice: the trainer's save on `preempted` (well under a second) ends long before
    # the soft-off.
    env = {**cloud["env"], "INVOKE_SURVIVAL_PREEMPTION_NOTICE_SECONDS": "10"}
    result = invoke(
        {**cloud, "env": env}, "train", "--branch", "exp1", "--example", "sklearn_digits",
        "--name", "e2e-notice", "--chaos", "1", "--train-steps", "4000", "--checkpoint-steps", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert out.count("chaos: preempting e2e-notice") == 1
    summary = out[out.index("job e2e-notice: DONE") :]
    assert "lost steps   0" in summary and "preemptions  1" in summary

    first = _attempts(cloud, "e2e-notice", tmp_path)[0]
    # The notice that stopped attempt 1 was `preempted`, and no SIGTERM ever reached it.
    assert first["notice"] == "preempted" and first["notices_seen"] == ["preempted"]
    assert first["end_reason"] == "notice-saved"
    # The guest's own order: the trainer had saved and exited before the ACPI soft-off.
    exited = out.index("attempt 1: trainer exited with 75")
    assert out.index("Preemption notice: 10 s") < exited < out.index("Preemption: ACPI soft-off")


PACED_FAMILY = "survival-paced"
PACED_CHECKPOINT_SECONDS = 2
# The wrapper's environment reaches the trainer: each periodic save waits PACED_CHECKPOINT_SECONDS
# before its manifest (the trainer's test hook), so the job takes a known minimum time.
PACED_PYTHON = """#!/bin/sh
export SURVIVAL_TEST_SLOW_CHECKPOINT_SECONDS={seconds}
export SURVIVAL_TEST_SLOW_CHECKPOINT_REASONS=periodic
exec {python} "$@"
"""


@pytest.fixture(scope="module")
def paced_family(cloud) -> str:
    """An image family whose Python paces the trainer's periodic saves."""
    from google.cloud import compute_v1

    from localgce.client import compute_client_options
    from survival.config import LOCAL_PROJECT

    python = cloud["state"] / "paced-image" / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(PACED_PYTHON.format(seconds=PACED_CHECKPOINT_SECONDS, python=sys.executable))
    python.chmod(0o755)
    (python.parent / "python3").symlink_to("python")  # the name startup.sh looks for
    image = compute_v1.Image(
        name="paced", family=PACED_FAMILY,
        raw_disk=compute_v1.RawDisk(source=str(python.parents[2])),
    )  # fmt: skip
    images = compute_v1.ImagesClient(**compute_client_options(cloud["endpoints"]))
    images.insert(project=LOCAL_PROJECT, image_resource=image).result(timeout=120)
    return PACED_FAMILY


def test_flex_start_job_outlives_its_run_duration_and_matches_an_uninterrupted_run(
    cloud, paced_family, tmp_path, monkeypatch
):
    steps, checkpoint_steps = "5000", "500"
    # 0.004 h = 14.4 s per VM, less its boot. 9 paced periodic saves keep the job busy for at
    # least 18 s, whatever the machine's speed: the first VM is deleted at its limit mid-run.
    env = {**cloud["env"], "INVOKE_SURVIVAL_IMAGE_FAMILY": paced_family}
    result = invoke(
        {**cloud, "env": env}, "train", "--branch", "exp1", "--example", "sklearn_digits",
        "--name", "e2e-flex", "--provisioning", "flex-start", "--max-run-hours", "0.004",
        "--train-steps", steps, "--checkpoint-steps", checkpoint_steps,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "train: created e2e-flex in" in out and "(flex-start," in out
    # Deleted at the end of its run duration, then created again: at least two VMs.
    assert out.count("e2e-flex does not exist in") >= 1
    summary = out[out.index("job e2e-flex: DONE") :]
    assert "lost steps   0" in summary

    records = _attempts(cloud, "e2e-flex", tmp_path)
    assert len(records) >= 2
    assert all(r["end_reason"] in ("notice-saved", "completed") for r in records), records

    local = tmp_path / "local-job"
    subprocess.run(
        [sys.executable, "-m", "trainer.examples.sklearn_digits", "--job-dir", str(local),
         "--train-steps", steps, "--checkpoint-steps", checkpoint_steps, "--seed", "0",
         "--hparams-json", "{}"],
        cwd=REPO, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    for key in ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.setenv(key, cloud["env"][key])
    assert_same_arrays(
        export_arrays("gs://survival-jobs/jobs/e2e-flex", "sklearn"),
        export_arrays(str(local), "sklearn"),
    )
