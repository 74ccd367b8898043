"""Why each attempt stopped (stop causes from the evidence, not every notice save counted as a
preemption) and honest lost steps (a killed attempt's furthest report, flagged a lower bound)."""

from __future__ import annotations

import json
import signal
import socket
import time

import pytest
from polling import wait_for

from tests.trainer import helpers
from trainer import gce
from trainer.jobdir import (
    END_COMPLETED,
    END_CRASHED,
    END_NOTICE_SAVED,
    EVENT_GUEST_SHUTDOWN,
    EVENT_HUNG_RESTART,
    STOP_CRASHED,
    STOP_GUEST_SHUTDOWN,
    STOP_HOST_MAINTENANCE,
    STOP_HUNG,
    STOP_PREEMPTED,
    STOP_UNKNOWN,
    STOP_USER,
    AttemptStats,
    JobDir,
    attempt_log_name,
    killed_attempt_record,
    stop_cause,
)

LONG = ["--train-steps", "1000000", "--checkpoint-steps", "0", "--log-steps", "1"]


def test_stop_cause_from_the_evidence():
    # A preempted notice, or preempted TRUE read when the SIGTERM came: a preemption.
    assert stop_cause("preempted", [], True, False) == STOP_PREEMPTED
    assert stop_cause("sigterm", [], True, False) == STOP_PREEMPTED
    # Host maintenance: the key read at the SIGTERM, or the notice seen earlier.
    assert stop_cause("sigterm", [], False, True) == STOP_HOST_MAINTENANCE
    assert stop_cause("sigterm", ["maintenance"], False, False) == STOP_HOST_MAINTENANCE
    # SIGTERM with preempted FALSE: an API stop/delete (or off GCE, a user).
    assert stop_cause("sigterm", [], False, False) == STOP_USER
    # The evidence could not be read: not guessed.
    assert stop_cause("sigterm", [], None, False) == STOP_UNKNOWN


def _record(attempt, reason, **fields):
    return {"attempt": attempt, "end_reason": reason, "pid": 1, "resumed_from_step": 0,
            "end_step": 0, **fields}  # fmt: skip


def test_stop_causes_count_each_cause_and_only_real_preemptions_as_preempted():
    records = [
        _record(1, END_NOTICE_SAVED, notice="preempted", stop_cause=STOP_PREEMPTED),
        _record(2, END_NOTICE_SAVED, notice="sigterm", stop_cause=STOP_USER),  # invoke down
        _record(3, END_NOTICE_SAVED, notice="sigterm", stop_cause=STOP_HOST_MAINTENANCE),
        _record(4, END_CRASHED, stop_cause=STOP_CRASHED),
        # Preempted, then killed inside the save: ended crashed, stopped by the preemption.
        _record(5, END_CRASHED, stop_cause=STOP_PREEMPTED),
        _record(6, END_NOTICE_SAVED, notice="sigterm", stop_cause=STOP_USER),
        _record(7, END_CRASHED, stop_cause=STOP_CRASHED),
        _record(8, END_NOTICE_SAVED, notice="sigterm", stop_cause=STOP_PREEMPTED),
        _record(9, END_COMPLETED, stop_cause=None),
    ]
    events = [
        {"event": "restart", "at_unix": 1.0},  # the supervisor's other notes count for nothing
        {"event": EVENT_GUEST_SHUTDOWN, "attempt": 6},  # the VM powered itself off
        {"event": EVENT_HUNG_RESTART, "attempt": 7},  # heartbeat went stale
        {"event": EVENT_GUEST_SHUTDOWN, "attempt": 8},  # the trainer saw preempted TRUE: kept
    ]
    stats = AttemptStats.from_records(records, events)
    assert stats.stop_causes == {
        STOP_PREEMPTED: 3,
        STOP_USER: 1,
        STOP_HOST_MAINTENANCE: 1,
        STOP_CRASHED: 1,
        STOP_GUEST_SHUTDOWN: 1,
        STOP_HUNG: 1,
    }
    assert stats.preempted == 3
    assert stats.preemptions == 5  # notice saves, whatever sent the notice (the old count)
    assert stats.crashes == 3
    # Without the notes the trainer's own evidence stands.
    assert AttemptStats.from_records(records).stop_causes[STOP_USER] == 2


def test_records_from_before_stop_causes_claim_no_preemption_they_cannot_prove():
    records = [
        {"attempt": 1, "end_reason": END_NOTICE_SAVED, "notice": "preempted"},
        {"attempt": 2, "end_reason": END_NOTICE_SAVED, "notice": "sigterm"},
        {"attempt": 3, "end_reason": END_CRASHED, "notice": None},
        {"attempt": 4, "end_reason": END_COMPLETED, "notice": None},
    ]
    stats = AttemptStats.from_records(records)
    assert stats.stop_causes == {STOP_PREEMPTED: 1, STOP_UNKNOWN: 1, STOP_CRASHED: 1}
    assert stats.preempted == 1 and stats.preemptions == 2


def test_hung_restart_notes_are_appended_and_read_back(tmp_path):
    job = JobDir.open(str(tmp_path / "job"))
    assert job.events() == []
    job.record_event(EVENT_HUNG_RESTART, attempt=3, step=120, checkpoint_step=100, at_unix=5.0)
    job.record_event(EVENT_GUEST_SHUTDOWN, attempt=4, at_unix=6.0)
    assert job.events() == [
        {"event": EVENT_HUNG_RESTART, "attempt": 3, "step": 120, "checkpoint_step": 100,
         "at_unix": 5.0},
        {"event": EVENT_GUEST_SHUTDOWN, "attempt": 4, "at_unix": 6.0},
    ]  # fmt: skip
    job.append_attempt(_record(3, END_CRASHED, stop_cause=STOP_CRASHED))
    assert AttemptStats.from_records(job.attempts(), job.events()).stop_causes == {STOP_HUNG: 1}


def test_lost_steps_are_exact_after_notice_saves_and_a_lower_bound_after_a_kill():
    saved = [
        _record(1, END_NOTICE_SAVED, end_step=40, end_step_lower_bound=False),
        _record(2, END_COMPLETED, resumed_from_step=40, end_step=100),
    ]
    stats = AttemptStats.from_records(saved)
    assert (stats.lost_steps, stats.lost_steps_lower_bound, stats.lost_steps_text) == (
        0,
        False,
        "0",
    )
    killed = [
        {"attempt": 1, "end_reason": END_CRASHED, "resumed_from_step": 4000, "end_step": 4400,
         "end_step_lower_bound": True},
        _record(2, END_COMPLETED, resumed_from_step=4000, end_step=5000),
    ]  # fmt: skip
    stats = AttemptStats.from_records(killed)
    assert (stats.lost_steps, stats.lost_steps_lower_bound) == (400, True)
    assert stats.lost_steps_text == "≥ 400"
    # A killed attempt's record from before the flag (no pid: the process wrote none).
    legacy = [{"attempt": 1, "end_reason": END_CRASHED, "end_step": 10}, killed[1] | {"attempt": 2}]
    assert AttemptStats.from_records(legacy).lost_steps_lower_bound is True


def test_a_killed_attempt_record_takes_its_furthest_report():
    lease = {"attempt": 2, "step": 4160, "resumed_from_step": 4000, "started_unix": 10.0,
             "heartbeat_unix": 20.0, "holder": "vm", "stop_cause": STOP_PREEMPTED}  # fmt: skip
    metrics = [{"step": 4300, "attempt": 2}, {"step": 4900, "attempt": 1}]
    log_text = (
        b"2024 INFO trainer: checkpoint ckpt-4200 saved (periodic) in 0.1s\n"
        b"2024 INFO trainer: step 4400 loss 0.25\n"
    )
    record = killed_attempt_record(lease, metrics, log_text)
    assert record["end_step"] == 4400 and record["end_step_lower_bound"] is True
    assert record["end_step_sources"] == {"lease": 4160, "metrics": 4300, "log": 4400}
    # Its notice came before the kill: the stop is still the preemption.
    assert record["end_reason"] == END_CRASHED and record["stop_cause"] == STOP_PREEMPTED
    assert killed_attempt_record({"attempt": 3, "step": 7})["stop_cause"] == STOP_CRASHED


def test_stop_evidence_reads_the_metadata_keys(metadata_server, monkeypatch):
    monkeypatch.setenv("GCE_METADATA_HOST", metadata_server.host)
    assert gce.stop_evidence() == (False, False)
    metadata_server.set("instance/maintenance-event", "TERMINATE_ON_HOST_MAINTENANCE")
    assert gce.stop_evidence() == (False, True)
    metadata_server.set("instance/preempted", "TRUE")
    assert gce.stop_evidence() == (True, True)
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")  # nothing answers
    assert gce.stop_evidence(timeout_seconds=0.5) == (None, False)


def _killed_lease(attempt: int, step: int, resumed_from_step: int) -> bytes:
    """The LEASE of a trainer on another VM that was killed long ago (so it is stale)."""
    old = time.time() - 3600
    return json.dumps({
        "holder": "other-vm", "pid": 12345, "boot_id": "another-boot", "pid_start": 1,
        "attempt": attempt, "started_unix": old - 60, "heartbeat_unix": old, "step": step,
        "resumed_from_step": resumed_from_step, "nonce": "n",
    }).encode()  # fmt: skip


@pytest.mark.slow
def test_a_killed_attempt_counts_the_later_step_of_its_metrics_as_a_lower_bound(tmp_path):
    """Its LEASE's last heartbeat says step 10, but its metrics.jsonl rows reach step 40: the
    next attempt resumes from step 0, so at least 40 steps were lost, not 10."""
    job_url = str(tmp_path / "job")
    job = JobDir.open(job_url)
    job.store.write("LEASE", _killed_lease(attempt=1, step=10, resumed_from_step=0))
    job.store.write(
        "metrics.jsonl",
        b"".join(json.dumps({"step": s, "loss": 1.0, "attempt": 1}).encode() + b"\n"
                 for s in (20, 30, 40)),
    )  # fmt: skip

    result = helpers.run("sklearn_digits", job_url, "--train-steps", "60")
    assert result.returncode == 0, result.stderr

    killed, finished = job.attempts()
    assert killed["attempt"] == 1 and killed["end_reason"] == END_CRASHED
    assert killed["end_step"] == 40 and killed["end_step_lower_bound"] is True
    assert killed["stop_cause"] == STOP_CRASHED
    assert finished["resumed_from_step"] == 0 and finished["end_step_lower_bound"] is False
    done = job.done()
    assert done["lost_steps"] == 40 and done["lost_steps_lower_bound"] is True
    assert done["stop_causes"] == {STOP_CRASHED: 1} and done["preempted"] == 0
    assert "lost steps ≥ 40" in result.stderr


@pytest.mark.slow
def test_sigterm_on_gce_with_preempted_false_is_a_stop_not_a_preemption(tmp_path, metadata_server):
    job_url = str(tmp_path / "job")
    env = {"GCE_METADATA_HOST": metadata_server.host}
    trainer = helpers.Trainer("sklearn_digits", job_url, *LONG, env=env)
    try:
        trainer.wait_for_step(10)
        trainer.signal(signal.SIGTERM)  # an API stop: ACPI soft-off, preempted stays FALSE
        assert trainer.finish() == 75, trainer.text()
    finally:
        trainer.kill()
    record = helpers.records(job_url, "attempts.jsonl")[-1]
    assert record["end_reason"] == END_NOTICE_SAVED and record["notice"] == "sigterm"
    assert record["stop_cause"] == STOP_USER
    stats = AttemptStats.from_records(JobDir.open(job_url).attempts())
    assert stats.preempted == 0 and stats.preemptions == 1


@pytest.mark.slow
def test_sigterm_after_preempted_true_is_a_preemption(tmp_path, metadata_server):
    """GCE sets preempted TRUE, then the soft-off: whichever reaches the trainer first, the
    attempt stopped for a preemption."""
    job_url = str(tmp_path / "job")
    env = {"GCE_METADATA_HOST": metadata_server.host}
    trainer = helpers.Trainer("sklearn_digits", job_url, *LONG, env=env)
    try:
        trainer.wait_for_step(10)
        metadata_server.set("instance/preempted", "TRUE")
        trainer.signal(signal.SIGTERM)
        assert trainer.finish() == 75, trainer.text()
    finally:
        trainer.kill()
    record = helpers.records(job_url, "attempts.jsonl")[-1]
    assert record["stop_cause"] == STOP_PREEMPTED
    assert AttemptStats.from_records(JobDir.open(job_url).attempts()).preempted == 1


@pytest.mark.slow
def test_a_stop_cut_short_by_a_kill_keeps_its_cause(tmp_path):
    """SIGTERM, then SIGKILL while the notice save is still being written (the window closed):
    the next attempt records it crashed, and stopped by the user, from the LEASE."""
    job_url = str(tmp_path / "job")
    job = JobDir.open(job_url)
    trainer = helpers.Trainer(
        "sklearn_digits", job_url, *LONG, "--lease-stale-seconds", "2",
        env={"SURVIVAL_TEST_SLOW_CHECKPOINT_SECONDS": "60"},
    )  # fmt: skip
    try:
        trainer.wait_for_step(10)
        trainer.signal(signal.SIGTERM)
        trainer.wait_for(lambda line: "manifest pending (test hook)" in line)
        wait_for(lambda: (job.lease() or {}).get("stop_cause"), what="the cause in the LEASE")
        trainer.kill()
    finally:
        trainer.kill()
    result = helpers.run("sklearn_digits", job_url, "--train-steps", "20")
    assert result.returncode == 0, result.stderr
    killed = job.attempts()[0]
    assert killed["end_reason"] == END_CRASHED and killed["stop_cause"] == STOP_USER
    assert killed["holder"] == socket.gethostname()
    assert job.done()["stop_causes"] == {STOP_USER: 1}


def test_the_uploaded_log_of_a_killed_attempt_is_read(tmp_path):
    job = JobDir.open(str(tmp_path / "job"))
    log_file = tmp_path / "a.log"
    log_file.write_text("x INFO trainer: step 700 loss 0.1\n")
    job.upload_log(log_file, attempt_log_name(2))
    assert job.attempt_log(2) == log_file.read_bytes()
    assert job.attempt_log(3) is None
