"""A job's progress as the orchestrator sees it, read from its job dir (trainer.jobdir owns the
layout) without downloading checkpoints: markers, attempts.jsonl, the LEASE, manifests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# attempts.jsonl end reasons (trainer/runner.py) that mean "stopped by a notice".
NOTICE_END_REASONS = frozenset({"notice-saved"})


@dataclass(frozen=True)
class Progress:
    done: dict[str, Any] | None
    failed: dict[str, Any] | None
    attempts: list[dict[str, Any]]
    lease: dict[str, Any] | None
    checkpoint_step: int
    checkpoint_unix: float | None

    @property
    def step(self) -> int:
        """Best known step: DONE's, else the live LEASE's, else the newest checkpoint's."""
        if self.done:
            return int(self.done.get("steps", 0))
        lease_step = int((self.lease or {}).get("step") or 0)
        return max(lease_step, self.checkpoint_step)

    @property
    def preemptions(self) -> int:
        return sum(1 for a in self.attempts if a.get("end_reason") in NOTICE_END_REASONS)

    @property
    def crashes(self) -> int:
        return sum(1 for a in self.attempts if a.get("end_reason") == "crashed")

    def running_seconds(self, now_unix: float) -> float:
        """VM time the attempts used (finished ones, plus the live one up to now)."""
        total = sum(
            max(0.0, (a.get("end_unix") or 0) - (a.get("start_unix") or 0)) for a in self.attempts
        )
        if self.lease and not self.done and self.lease.get("started_unix"):
            total += max(0.0, now_unix - float(self.lease["started_unix"]))
        return total


def open_job_dir(url: str) -> Any:
    from trainer.jobdir import JobDir

    return JobDir.open(url)


def read_progress(job_dir: Any) -> Progress:
    """Read ``job_dir`` (a trainer.jobdir.JobDir) cheaply."""
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
    )
