"""Acceptance 2: a preemption notice (SIGTERM or preempted=TRUE from a metadata server) saves the
step reached when it arrived; a maintenance notice saves and training goes on."""

from __future__ import annotations

import signal

import pytest

from tests.trainer import helpers
from trainer.jobdir import JobDir

LONG = ["--train-steps", "1000000", "--checkpoint-steps", "0", "--log-steps", "1"]


def _newest_manifest(job_url: str) -> dict:
    job = JobDir.open(job_url)
    return job.read_manifest(job.checkpoint_steps()[0])


@pytest.mark.slow
def test_preempted_true_saves_without_losing_steps(job_url, metadata_server):
    env = {"GCE_METADATA_HOST": metadata_server.host}
    trainer = helpers.Trainer("sklearn_digits", job_url, *LONG, env=env)
    try:
        seen = trainer.wait_for_step(30)
        metadata_server.set("instance/preempted", "TRUE")
        assert trainer.finish() == 75, trainer.text()
    finally:
        trainer.kill()

    attempt = helpers.records(job_url, "attempts.jsonl")[-1]
    assert attempt["end_reason"] == "notice-saved" and attempt["notice"] == "preempted"
    assert attempt["holder"] == "test-vm"  # instance/name from the metadata server
    manifest = _newest_manifest(job_url)
    # With --checkpoint-steps 0 the only checkpoint is the notice save: it holds every step
    # trained before the notice (≥ the step printed before the flip), and exactly notice_step.
    assert manifest["reason"] == "notice"
    assert manifest["step"] == attempt["notice_step"] == attempt["end_step"] >= seen
    # Long-polling, not busy polling: a handful of requests for the whole run.
    preempted_polls = [p for p in metadata_server.requests if "instance/preempted" in p]
    assert 1 <= len(preempted_polls) <= 5, preempted_polls
    assert all("wait_for_change=true" in p and "last_etag=" in p for p in preempted_polls)


@pytest.mark.slow
def test_sigterm_saves_the_step_it_arrived_at(job_url):
    trainer = helpers.Trainer("sklearn_digits", job_url, *LONG)
    try:
        seen = trainer.wait_for_step(25)
        trainer.signal(signal.SIGTERM)
        assert trainer.finish() == 75, trainer.text()
    finally:
        trainer.kill()
    attempt = helpers.records(job_url, "attempts.jsonl")[-1]
    assert attempt["notice"] == "sigterm"
    assert (
        _newest_manifest(job_url)["step"] == attempt["notice_step"] == attempt["end_step"] >= seen
    )
    assert attempt["save_seconds"] < 30  # fits the Spot shutdown window


@pytest.mark.slow
def test_maintenance_notice_saves_and_keeps_training(job_url, metadata_server):
    env = {"GCE_METADATA_HOST": metadata_server.host}
    trainer = helpers.Trainer("sklearn_digits", job_url, *LONG, env=env)
    try:
        trainer.wait_for_step(20)
        metadata_server.set("instance/maintenance-event", "TERMINATE_ON_HOST_MAINTENANCE")
        line = trainer.wait_for(lambda text: "saved (notice)" in text)
        saved_step = int(line.split("ckpt-")[1].split()[0])
        trainer.wait_for_step(saved_step + 10)  # still training after the save
        trainer.signal(signal.SIGTERM)
        assert trainer.finish() == 75, trainer.text()
    finally:
        trainer.kill()
    steps = JobDir.open(job_url).checkpoint_steps()
    assert saved_step in steps and steps[0] > saved_step
    attempt = helpers.records(job_url, "attempts.jsonl")[-1]
    assert attempt["notices_seen"] == ["maintenance", "sigterm"]
