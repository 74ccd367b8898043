"""survival.progress counts attempts with trainer.jobdir.AttemptStats, as the DONE summary does."""

from __future__ import annotations

from survival.progress import NOTICE_END_REASONS, Progress
from trainer.jobdir import END_COMPLETED, END_CRASHED, END_NOTICE_SAVED, AttemptStats

RECORDS = [
    {"attempt": 1, "start_unix": 1000.0, "end_unix": 1010.0, "end_reason": END_NOTICE_SAVED,
     "notice": "preempted", "notices_seen": ["preempted"], "end_step": 50,
     "resumed_from_step": 0},
    {"attempt": 2, "start_unix": 1020.0, "end_unix": 1025.0, "end_reason": END_CRASHED,
     "notice": None, "end_step": 70, "resumed_from_step": 50},
    # A record without start_unix has no known duration (it must not count as 1030 s).
    {"attempt": 3, "start_unix": None, "end_unix": 1030.0, "end_reason": END_NOTICE_SAVED,
     "notice": "sigterm", "notices_seen": ["maintenance", "sigterm"], "end_step": 80,
     "resumed_from_step": 60},
]  # fmt: skip


def _progress(records, lease=None, done=None) -> Progress:
    return Progress(
        done=done, failed=None, attempts=records, lease=lease, checkpoint_step=0,
        checkpoint_unix=None,
    )  # fmt: skip


def test_progress_counts_as_the_trainer_does():
    progress = _progress(RECORDS)
    assert progress.stats == AttemptStats.from_records(RECORDS)
    # Two attempts saved on a notice, but only one notice was a preemption: a SIGTERM without
    # `preempted` (a user stop, a daemon stop) is not counted as one.
    assert progress.stats.preemptions == 2 and progress.stats.preempted == 1
    assert progress.preemptions == 1 and progress.crashes == 1
    assert progress.stats.notices == 3 and progress.stats.lost_steps == 10
    assert frozenset({END_NOTICE_SAVED}) == NOTICE_END_REASONS
    assert END_COMPLETED not in NOTICE_END_REASONS


def test_running_seconds_counts_known_durations_and_the_live_attempt():
    assert _progress(RECORDS).running_seconds(now_unix=2000.0) == 15.0
    live = _progress(RECORDS, lease={"started_unix": 1990.0, "attempt": 4})
    assert live.running_seconds(now_unix=2000.0) == 25.0
    finished = _progress(RECORDS, lease={"started_unix": 1990.0}, done={"steps": 80})
    assert finished.running_seconds(now_unix=2000.0) == 15.0
