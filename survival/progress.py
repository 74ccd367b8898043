"""A job's progress as the orchestrator sees it, read from its job dir (trainer.jobdir owns the
layout and counts the attempt records) without downloading checkpoints: markers,
attempts.jsonl, the LEASE, manifests."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from trainer.jobdir import NOTICE_END_REASONS, AttemptStats, JobDir
from trainer.storage import ABSENT_GENERATION, PreconditionFailed

# What supervisors did to the job's VM, one JSON line each ({"event": "restart", ...}). Kept in
# the job dir, next to the attempt records, so every supervisor (and `invoke status`) counts the
# same restarts: a count in a supervisor's memory would be wrong for a second watcher or after a
# resumed `invoke watch`.
SUPERVISOR_EVENTS = "supervisor.jsonl"
EVENT_RESTART = "restart"
EVENT_STOP = "stop"
EVENT_RUN = "run"
APPEND_RETRIES = 5

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
        return AttemptStats.from_records(self.attempts)

    @property
    def step(self) -> int:
        """Best known step: DONE's, else the live LEASE's, else the newest checkpoint's."""
        if self.done:
            return int(self.done.get("steps", 0))
        lease_step = int((self.lease or {}).get("step") or 0)
        return max(lease_step, self.checkpoint_step)

    @property
    def preemptions(self) -> int:
        return self.stats.preemptions

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
    data = job_dir.store.read(SUPERVISOR_EVENTS)
    events = []
    for line in (data or b"").decode(errors="replace").splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            events.append(value)
    return events


def record_event(job_dir: JobDir, event: str, **fields: Any) -> None:
    """Append one event record (a conditional write, retried when another writer got in)."""
    line = json.dumps({"event": event, "at_unix": time.time(), **fields}, sort_keys=True) + "\n"
    for _ in range(APPEND_RETRIES):
        found = job_dir.store.read_with_generation(SUPERVISOR_EVENTS)
        old, generation = found if found else (b"", ABSENT_GENERATION)
        try:
            job_dir.store.write(SUPERVISOR_EVENTS, old + line.encode(), if_generation=generation)
            return
        except PreconditionFailed:
            continue
    raise PreconditionFailed(f"{SUPERVISOR_EVENTS}: kept changing under {APPEND_RETRIES} tries")
