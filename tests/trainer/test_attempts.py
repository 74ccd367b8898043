"""Attempt numbering and counting (trainer.jobdir): the numbers startup.sh names logs with and
the runner records, and the one place attempts.jsonl is counted."""

from __future__ import annotations

import json
import time

from tests.trainer import helpers
from trainer import jobdir
from trainer.jobdir import (
    END_COMPLETED,
    END_CRASHED,
    END_NOTICE_SAVED,
    AttemptStats,
    JobDir,
    attempt_log_name,
    killed_attempt,
    next_attempt_number,
)


def test_next_attempt_counts_records_a_killed_lease_and_uploaded_logs():
    records = [{"attempt": 1}, {"attempt": 2}]
    assert next_attempt_number([], None) == 1
    assert next_attempt_number(records, None) == 3
    assert next_attempt_number(records, {"attempt": 3}) == 4  # killed: only its LEASE
    assert next_attempt_number(records, {"attempt": 2}) == 3
    # Died before taking the LEASE: only the log startup.sh uploaded says it ran.
    logs = [attempt_log_name(1), attempt_log_name(2), attempt_log_name(3), "notes.txt"]
    assert next_attempt_number(records, None, logs) == 4
    assert next_attempt_number([{"attempt": None}], {"attempt": "x"}, ["attempt-.log"]) == 1


def test_killed_attempt_is_a_lease_without_a_record():
    assert killed_attempt([{"attempt": 1}], None) is None
    assert killed_attempt([{"attempt": 1}], {"attempt": 1}) is None
    assert killed_attempt([{"attempt": 1}], {"attempt": 2}) == {"attempt": 2}


def test_attempt_stats_from_records():
    records = [
        {"attempt": 1, "start_unix": 100.0, "end_unix": 110.0, "resumed_from_step": 0,
         "end_step": 40, "end_reason": END_NOTICE_SAVED, "notice": "preempted",
         "notices_seen": ["maintenance", "preempted"]},
        {"attempt": 2, "start_unix": 120.0, "end_unix": 125.0, "resumed_from_step": 40,
         "end_step": 55, "end_reason": END_CRASHED, "notice": None},
        {"attempt": 3, "start_unix": 130.0, "end_unix": 140.0, "resumed_from_step": 50,
         "end_step": 100, "end_reason": END_COMPLETED, "notice": None, "notices_seen": []},
    ]  # fmt: skip
    assert AttemptStats.from_records(records) == AttemptStats(
        attempts=3,
        notices=2,
        preemptions=1,
        crashes=1,
        lost_steps=5,
        attempt_seconds=25.0,
        first_start_unix=100.0,
    )
    assert AttemptStats.from_records([]) == AttemptStats(0, 0, 0, 0, 0, 0.0, None)


def test_attempt_seconds_skip_a_record_missing_either_end():
    records = [
        {"attempt": 1, "start_unix": 1_700_000_000.0, "end_unix": None},
        {"attempt": 2, "start_unix": None, "end_unix": 1_700_000_100.0},
        {"attempt": 3, "start_unix": 1_700_000_200.0, "end_unix": 1_700_000_203.0},
    ]
    stats = AttemptStats.from_records(records)
    assert stats.attempt_seconds == 3.0
    assert stats.first_start_unix == 1_700_000_000.0


def test_next_attempt_cli_reads_no_checkpoint(tmp_path, monkeypatch, capsys):
    job_url = str(tmp_path / "job")
    job = JobDir.open(job_url)
    job.append_attempt({"attempt": 1, "end_reason": END_CRASHED})
    job.store.write("LEASE", json.dumps({"attempt": 2, "pid": 1}).encode())
    job.store.write("ckpt-5/manifest.json", b"{}")

    def no_checkpoint(*args, **kwargs):
        raise AssertionError("next-attempt must not read checkpoints")

    for name in ("checkpoint_steps", "read_manifest", "restore_latest", "latest_checkpoint"):
        monkeypatch.setattr(JobDir, name, no_checkpoint)
    assert jobdir.main(["next-attempt", job_url]) == 0
    assert capsys.readouterr().out == "3\n"


def test_the_runner_numbers_its_attempt_as_next_attempt_does(job_url, tmp_path):
    """An attempt that crashed before taking the LEASE left only its log: the next attempt
    still gets a new number, in startup.sh's log name and in the runner's own record."""
    job = JobDir.open(job_url)
    # An attempt record without end_unix (e.g. from an older trainer) adds nothing to the time.
    job.append_attempt(
        {"attempt": 1, "start_unix": time.time() - 5, "end_unix": None, "end_step": 0,
         "end_reason": END_CRASHED}
    )  # fmt: skip
    log_file = tmp_path / "attempt.log"
    log_file.write_text("Traceback (most recent call last): ...\n")
    job.upload_log(log_file, attempt_log_name(3))

    cli = helpers.subprocess.run(
        [helpers.sys.executable, "-m", "trainer.jobdir", "next-attempt", job_url],
        capture_output=True, text=True, timeout=helpers.WAIT_SECONDS,
        env=helpers.trainer_env(), cwd=helpers.REPO, check=False,
    )  # fmt: skip
    assert cli.returncode == 0 and cli.stdout == "4\n", cli.stderr

    result = helpers.run("sklearn_digits", job_url, "--train-steps", "20")
    assert result.returncode == 0, result.stderr
    assert [r["attempt"] for r in job.attempts()] == [1, 4]
    done = job.done()
    assert done["attempts"] == 2 and done["crashes"] == 1
    assert 0 <= done["attempt_seconds"] < 600
