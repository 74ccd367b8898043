"""Acceptance 3, 4, 5 (and 6: each with a local and a gs:// job dir): corrupt checkpoints are
skipped, the LEASE keeps a single writer, changed hyperparameters change nothing."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from tests.trainer import helpers
from tests.trainer.conftest import RUNS
from trainer.jobdir import JobDir

SK = RUNS["sklearn_digits"]
SK_ARGS = ["--train-steps", str(SK["steps"]), "--checkpoint-steps", str(SK["ckpt"]), "--seed", "7"]


def _corrupt(job_url: str, step: int, how: str) -> None:
    store = JobDir.open(job_url).store
    if how == "no-manifest":
        store.delete(f"ckpt-{step}/manifest.json")
        return
    name = f"ckpt-{step}/model.skops"
    data = store.read(name)
    if how == "truncate":
        data = data[: len(data) // 2]
    else:
        middle = len(data) // 2
        data = data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]
    store.write(name, data)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncate", "flip-byte"])  # no manifest: see test_chaos
def test_corrupt_newest_checkpoint_falls_back(job_url, how, reference):
    helpers.start_and_stop_after_checkpoint("sklearn_digits", job_url, 60, *SK_ARGS)
    steps = JobDir.open(job_url).checkpoint_steps()
    newest, previous = steps[0], steps[1]
    _corrupt(job_url, newest, how)

    result = helpers.run("sklearn_digits", job_url, *SK_ARGS)
    assert result.returncode == 0, result.stderr
    assert f"checkpoint ckpt-{newest}" in result.stderr and "skipping it" in result.stderr
    assert f"resumed from ckpt-{previous}" in result.stderr
    helpers.assert_same_arrays(
        helpers.export_arrays(job_url, "sklearn"), reference("sklearn_digits")
    )


@pytest.mark.slow
def test_live_lease_holder_blocks_a_second_trainer(job_url):
    first = helpers.Trainer(
        "sklearn_digits",
        job_url,
        "--train-steps",
        "1000000",
        "--checkpoint-steps",
        "0",
        "--log-steps",
        "1",
    )
    try:
        first.wait_for_step(1)
        second = helpers.run("sklearn_digits", job_url, "--train-steps", "50")
        assert second.returncode == 73
        assert f"holder '{socket.gethostname()}' (pid {first.process.pid}" in second.stderr
    finally:
        first.kill()


def _write_lease(job_url: str, age_seconds: float) -> None:
    now = time.time()
    lease = {
        "holder": "other-vm",
        "pid": 4242,
        "attempt": 1,
        "step": 0,
        "started_unix": now - age_seconds,
        "heartbeat_unix": now - age_seconds,
    }
    JobDir.open(job_url).store.write("LEASE", json.dumps(lease).encode())


@pytest.mark.slow
def test_foreign_lease_blocks_until_stale(job_url):
    _write_lease(job_url, age_seconds=5)
    held = helpers.run(
        "sklearn_digits", job_url, "--train-steps", "30", "--lease-stale-seconds", "3600"
    )
    assert held.returncode == 73
    assert "holder 'other-vm' (pid 4242" in held.stderr
    assert JobDir.open(job_url).done() is None

    stale = helpers.run(
        "sklearn_digits", job_url, "--train-steps", "30", "--lease-stale-seconds", "2"
    )
    assert stale.returncode == 0, stale.stderr
    assert "taking over the lease" in stale.stderr
    attempts = helpers.records(job_url, "attempts.jsonl")
    assert [a["end_reason"] for a in attempts] == ["crashed", "completed"]
    assert attempts[0]["holder"] == "other-vm"
    assert JobDir.open(job_url).lease() is None  # released at the end


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--learning-rate", "0.5", "--batch-size", "16"],
            [
                "learning_rate: job has 0.01, this run asks for 0.5",
                "batch_size: job has 32, this run asks for 16",
            ],
        ),
        (
            ["--hparams-json", '{"alpha": 0.1}', "--seed", "8"],
            [
                "alpha: job has 0.0001, this run asks for 0.1",
                "seed: job has 7, this run asks for 8",
            ],
        ),
    ],
)
def test_changed_hparams_fail_and_change_nothing(job_url, flags, expected):
    helpers.start_and_stop_after_checkpoint("sklearn_digits", job_url, 20, *SK_ARGS)
    before = helpers.snapshot(job_url)
    args = [a for a in SK_ARGS if a not in ("--seed", "7")] + flags
    if "--seed" not in flags:
        args += ["--seed", "7"]
    result = helpers.run("sklearn_digits", job_url, *args)
    assert result.returncode == 64, result.stderr
    for line in expected:
        assert line in result.stderr
    assert helpers.snapshot(job_url) == before


@pytest.mark.slow
def test_done_job_exits_zero_at_once(job_url):
    assert helpers.run("sklearn_digits", job_url, "--train-steps", "20").returncode == 0
    before = helpers.snapshot(job_url)
    again = helpers.run("sklearn_digits", job_url, "--train-steps", "40")
    assert again.returncode == 0 and "already DONE" in again.stdout
    assert helpers.snapshot(job_url) == before
    done = JobDir.open(job_url).done()
    for key in (
        "steps",
        "wall_seconds",
        "attempts",
        "notices",
        "lost_steps",
        "framework",
        "exported",
    ):
        assert key in done
    assert done["steps"] == 20 and done["exported"].endswith("/export")


def test_vertex_environment_variables(tmp_path):
    env = {"AIP_CHECKPOINT_DIR": str(tmp_path / "ckpt"), "AIP_MODEL_DIR": str(tmp_path / "model")}
    result = helpers.subprocess.run(
        [helpers.sys.executable, "-m", "trainer.examples.sklearn_digits", "--train-steps", "10"],
        env=helpers.trainer_env(env),
        capture_output=True,
        text=True,
        timeout=helpers.WAIT_SECONDS,
        cwd=helpers.REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "model" / "model.skops").is_file()
    assert json.loads((tmp_path / "ckpt" / "DONE").read_text())["exported"] == str(
        tmp_path / "model"
    )
    assert os.path.isdir(tmp_path / "ckpt" / "ckpt-10")
