"""A job's progress as the orchestrator sees it, read from its job dir (trainer.jobdir owns the
layout and counts the attempt records) without downloading checkpoints: markers,
attempts.jsonl, the LEASE, manifests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainer.jobdir import NOTICE_END_REASONS, AttemptStats, JobDir

# What supervisors did to the job's VM, one record each in the job dir's SUPERVISOR_EVENTS
# (trainer.jobdir owns the file; its hung-restart and guest-shutdown notes also name why an attempt
# stopped). Kept in the job dir, next to the attempt records, so every supervisor (and
# `invoke status`) counts the same restarts: a count in a supervisor's memory would be wrong for a
# second watcher or after a resumed `invoke watch`.
EVENT_RESTART = "restart"
EVENT_STOP = "stop"
EVENT_RUN = "run"

# NOTICE_END_REASONS is re-exported: survival code reads the end reasons from here.
__all__ = ["NOTICE_END_REASONS", "Progress", "open_job_dir", "read_progress", "record_event"]


@dataclass(frozen=True)
class Progress:
    done: dict[str, Any] | None
    failed: dict[str, Any] | None
    attempts: list[dict[str, Any]]
    lease: dict[str, Any] | None
    checkpoint_step: int
    checkpoint_unix: float | None
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def restarts(self) -> int:
        """VM restarts by supervisors over the job's life (from the job dir's event records)."""
        return sum(1 for e in self.events if e.get("event") == EVENT_RESTART)

    @property
    def stats(self) -> AttemptStats:
        return AttemptStats.from_records(self.attempts, self.events)

    @property
    def step(self) -> int:
        """Best known step: DONE's, else the live LEASE's, else the newest checkpoint's."""
        if self.done:
            return int(self.done.get("steps", 0))
        lease_step = int((self.lease or {}).get("step") or 0)
        return max(lease_step, self.checkpoint_step)

    @property
    def preemptions(self) -> int:
        """Attempts stopped by a Spot preemption (not by a user stop or a guest power-off)."""
        return self.stats.preempted

    @property
    def crashes(self) -> int:
        return self.stats.crashes

    def running_seconds(self, now_unix: float) -> float:
        """VM time the attempts used (finished ones, plus the live one up to now)."""
        total = self.stats.attempt_seconds
        if self.lease and not self.done and self.lease.get("started_unix"):
            total += max(0.0, now_unix - float(self.lease["started_unix"]))
        return total


def open_job_dir(url: str) -> JobDir:
    return JobDir.open(url)


def read_progress(job_dir: JobDir) -> Progress:
    """Read ``job_dir`` cheaply."""
    steps = job_dir.checkpoint_steps()
    manifest = None
    for step in steps:
        manifest = job_dir.read_manifest(step)
        if manifest is not None:
            break
    return Progress(
        done=job_dir.done(),
        failed=job_dir.failed(),
        attempts=job_dir.attempts(),
        lease=job_dir.lease(),
        checkpoint_step=int(manifest["step"]) if manifest else 0,
        checkpoint_unix=manifest.get("created_unix") if manifest else None,
        events=read_events(job_dir),
    )


def read_events(job_dir: JobDir) -> list[dict[str, Any]]:
    return job_dir.events()


def record_event(job_dir: JobDir, event: str, **fields: Any) -> None:
    """Append one event record (a conditional write, retried when another writer got in)."""
    job_dir.record_event(event, **fields)
