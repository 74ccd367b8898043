"""The job directory (layout in docs/architecture.md) and a shell-safe CLI for startup.sh.

    python -m trainer.jobdir is-done URL
    python -m trainer.jobdir status URL
    python -m trainer.jobdir next-attempt URL
    python -m trainer.jobdir mark-failed URL --reason TEXT [--attempt N]
    python -m trainer.jobdir upload-log URL FILE --name NAME

Values travel as argv only; nothing is ever handed to a shell.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import posixpath
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.storage import ABSENT_GENERATION, PreconditionFailed, Store, StoreError, open_store

log = logging.getLogger(__name__)

DONE = "DONE"
FAILED = "FAILED"
LEASE = "LEASE"
ATTEMPTS = "attempts.jsonl"
METRICS = "metrics.jsonl"
MANIFEST = "manifest.json"
CKPT_PREFIX = "ckpt-"
EXPORT_DIR = "export"
LOGS_DIR = "logs"
# The orchestrator's notes about the job (restarts, stops, hung restarts), one JSON object a line
# with an "event" key. survival.progress appends its own kinds; the kinds below are the ones that
# say why an attempt stopped, which only the orchestrator can see.
SUPERVISOR_EVENTS = "supervisor.jsonl"
# {"event": "hung-restart", "attempt": N, "at_unix": T, ...}: attempt N's heartbeat went stale and
# the orchestrator stopped the VM to restart it.
EVENT_HUNG_RESTART = "hung-restart"
# {"event": "guest-shutdown", "attempt": N, "at_unix": T, ...}: the VM powered itself off under
# attempt N (GCE shows it as a guest-initiated stop). Inside the guest such a power-off looks like
# an API stop (ACPI soft-off, SIGTERM, preempted FALSE), so only the orchestrator can tell.
EVENT_GUEST_SHUTDOWN = "guest-shutdown"
EVENT_APPEND_RETRIES = 5

# attempts.jsonl end_reason values: how an attempt ended.
END_COMPLETED = "completed"  # reached --train-steps; DONE written
END_NOTICE_SAVED = "notice-saved"  # saved on a preemption/shutdown notice, exited 75
END_CRASHED = "crashed"  # an exception, or killed (recorded by the next attempt from its LEASE)
# End reasons that mean "stopped by a notice" (saved and exited 75, whatever sent the notice).
NOTICE_END_REASONS = frozenset({END_NOTICE_SAVED})

# attempts.jsonl stop_cause values: why an attempt stopped (None: it completed). end_reason says
# how it ended; a preempted attempt killed inside its save is end_reason crashed, cause preempted.
STOP_PREEMPTED = "preempted"  # instance/preempted read TRUE (a Spot/preemptible preemption)
STOP_HOST_MAINTENANCE = "host-maintenance"  # maintenance-event TERMINATE_ON_HOST_MAINTENANCE
STOP_USER = "stopped"  # SIGTERM with preempted FALSE: an API stop/delete, or SIGTERM off GCE
STOP_CRASHED = "crashed"  # an exception, or killed with no notice before it
STOP_GUEST_SHUTDOWN = "guest-shutdown"  # from an EVENT_GUEST_SHUTDOWN note
STOP_HUNG = "hung"  # from an EVENT_HUNG_RESTART note
STOP_UNKNOWN = "unknown"  # SIGTERM whose evidence could not be read (or a record from before)
STOP_CAUSES = (
    STOP_PREEMPTED,
    STOP_HOST_MAINTENANCE,
    STOP_USER,
    STOP_CRASHED,
    STOP_GUEST_SHUTDOWN,
    STOP_HUNG,
    STOP_UNKNOWN,
)
# Causes the trainer itself saw; an orchestrator's guest-shutdown note does not override them.
_SEEN_CAUSES = frozenset({STOP_PREEMPTED, STOP_HOST_MAINTENANCE})

# Lines of a trainer log that name a step it reached (the runner's progress and save lines).
_LOG_STEP = re.compile(rb"(?:\bstep ([0-9]+) loss\b|\bcheckpoint ckpt-([0-9]+) saved\b)")

_ATTEMPT_LOG = re.compile(r"attempt-([0-9]+)\.log")


def attempt_log_name(attempt: int) -> str:
    """The name startup.sh uploads an attempt's log under, in JOB_DIR/logs/."""
    return f"attempt-{attempt}.log"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_file_problem(rel: Any, entry: Any) -> str | None:
    """Why a manifest ``files`` entry is unusable, or None. Names come from the job dir, which
    anyone who can write the bucket controls: only a relative, normalised path inside the
    checkpoint (and never the manifest itself) may become a local file name."""
    if not isinstance(rel, str) or not rel:
        return f"file name {rel!r} is not a non-empty string"
    if (
        rel.startswith("/")
        or "\\" in rel
        or "\0" in rel
        or posixpath.normpath(rel) != rel
        or ".." in rel.split("/")
    ):
        return f"file name {rel!r} is not a relative, normalised path inside the checkpoint"
    if rel == MANIFEST:
        return f"file name {rel!r} names the manifest itself"
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        return f"file {rel!r} has no sha256"
    return None


def _json_or_none(data: bytes | None, what: str) -> dict | None:
    if data is None:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        log.warning("%s is not valid JSON; ignoring it", what)
        return None
    return value if isinstance(value, dict) else None


def _jsonl(data: bytes | None) -> list[dict]:
    records = []
    for line in (data or b"").decode(errors="replace").splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                log.warning("skipping a malformed line in a .jsonl file")
    return records


def _dumps(value: Any) -> bytes:
    return (json.dumps(value, sort_keys=True) + "\n").encode()


def _attempt_number(value: Any) -> int:
    """An attempt number from a record or a LEASE; 0 when absent or malformed."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def killed_attempt(records: list[dict], lease: dict | None) -> dict | None:
    """The LEASE left by an attempt that has no record (it was killed), or None."""
    if not lease:
        return None
    number = _attempt_number(lease.get("attempt"))
    if number in {_attempt_number(r.get("attempt")) for r in records}:
        return None
    return lease


def next_attempt_number(
    records: list[dict], lease: dict | None, log_names: Iterable[str] = ()
) -> int:
    """One past every attempt the job dir shows a trace of: its record, the LEASE a killed
    attempt left, or the log startup.sh uploaded for an attempt that died before either (so a
    retry never reuses, and overwrites, a crashed attempt's log)."""
    numbers = [_attempt_number(r.get("attempt")) for r in records]
    if lease:
        numbers.append(_attempt_number(lease.get("attempt")))
    for name in log_names:
        match = _ATTEMPT_LOG.fullmatch(name.rpartition("/")[2])
        if match:
            numbers.append(int(match.group(1)))
    return max(numbers, default=0) + 1


def stop_cause(
    notice: str | None, notices_seen: Iterable[str], preempted: bool | None, maintenance: bool
) -> str:
    """Why an attempt got its stopping notice (``notice``: "preempted" or "sigterm"), from the
    evidence: the notices seen before it, instance/preempted as read when it came (False off GCE,
    where only a user or a process sends SIGTERM; None: could not be read), and whether
    maintenance-event read TERMINATE_ON_HOST_MAINTENANCE."""
    if notice == "preempted" or preempted:
        return STOP_PREEMPTED
    if maintenance or "maintenance" in notices_seen:
        return STOP_HOST_MAINTENANCE
    return STOP_UNKNOWN if preempted is None else STOP_USER


def record_stop_cause(record: dict) -> str | None:
    """A record's stop cause: its ``stop_cause``, or for a record written before that field
    existed what its end reason and notice say. None for a completed attempt."""
    if "stop_cause" in record:
        return record["stop_cause"]
    reason = record.get("end_reason")
    if reason == END_COMPLETED:
        return None
    if reason == END_CRASHED:
        return STOP_CRASHED
    # A notice save: only a "preempted" notice proves a preemption; a SIGTERM may have been any
    # stop at all.
    return STOP_PREEMPTED if record.get("notice") == "preempted" else STOP_UNKNOWN


def end_step_is_lower_bound(record: dict) -> bool:
    """Is the record's end_step only a lower bound? True for an attempt that was killed: its
    record comes from what it last reported, which may lag the step it reached. A record from
    before the flag existed is a killed one when it has no pid (the process wrote none)."""
    if "end_step_lower_bound" in record:
        return bool(record["end_step_lower_bound"])
    return record.get("end_reason") == END_CRASHED and "pid" not in record


def steps_in_log(text: bytes | None) -> list[int]:
    """Steps an attempt's log says it reached (progress lines and checkpoint saves)."""
    return [int(a or b) for a, b in _LOG_STEP.findall(text or b"")]


def killed_attempt_record(
    lease: dict, metrics: Iterable[dict] = (), log_text: bytes | None = None
) -> dict:
    """The record of an attempt that died without writing one. Its end step is the furthest it
    is known to have reached: the LEASE's last heartbeat, its own metrics.jsonl rows, its uploaded
    log. A lower bound all the same: whatever it did after its last report is unknown."""
    number = _attempt_number(lease.get("attempt"))
    sources: dict[str, int] = {}
    if lease.get("step") is not None:
        sources["lease"] = int(lease["step"])
    rows = [
        int(r["step"])
        for r in metrics
        if _attempt_number(r.get("attempt")) == number and isinstance(r.get("step"), int)
    ]
    if rows:
        sources["metrics"] = max(rows)
    logged = steps_in_log(log_text)
    if logged:
        sources["log"] = max(logged)
    return {
        "attempt": lease.get("attempt"),
        "start_unix": lease.get("started_unix"),
        "end_unix": lease.get("heartbeat_unix"),
        "resumed_from_step": lease.get("resumed_from_step"),
        "end_step": max(sources.values(), default=None),
        "end_step_lower_bound": True,
        "end_step_sources": sources,
        "end_reason": END_CRASHED,
        # A notice that came before the kill (e.g. a preemption whose save outlasted the
        # window) is in the LEASE: that is why it stopped.
        "stop_cause": lease.get("stop_cause") or STOP_CRASHED,
        "notice": None,
        "holder": lease.get("holder"),
        "note": "no record: the process was killed; end_* from its last reports",
    }


def lost_steps(records: list[dict]) -> int:
    """Steps trained but not saved before an attempt ended (a lower bound for killed attempts)."""
    return _lost_steps(records)[0]


def _lost_steps(records: list[dict]) -> tuple[int, bool]:
    """(steps lost between each attempt and the step the next one resumed from, whether that
    is only a lower bound because a killed attempt's end step is)."""
    lost, lower_bound = 0, False
    for before, after in itertools.pairwise(records):
        end_step = before.get("end_step")
        resumed = after.get("resumed_from_step")
        if end_step is not None and resumed is not None:
            lost += max(0, int(end_step) - int(resumed))
            lower_bound = lower_bound or end_step_is_lower_bound(before)
    return lost, lower_bound


def stop_causes(records: list[dict], events: Iterable[dict] = ()) -> dict[str, int]:
    """Stopped attempts by cause (completed attempts are not stops). The orchestrator's notes
    name attempts it saw hang (overrides all) or power themselves off (overrides what the
    trainer could not tell apart: a plain stop or a kill)."""
    noted: dict[int, str] = {}
    for event in events:
        kind = event.get("event")
        number = _attempt_number(event.get("attempt"))
        if number and kind == EVENT_HUNG_RESTART:
            noted[number] = STOP_HUNG
        elif number and kind == EVENT_GUEST_SHUTDOWN:
            noted.setdefault(number, STOP_GUEST_SHUTDOWN)
    counts: dict[str, int] = {}
    for record in records:
        cause = record_stop_cause(record)
        note = noted.get(_attempt_number(record.get("attempt")))
        if note == STOP_HUNG or (
            note is not None and cause is not None and cause not in _SEEN_CAUSES
        ):
            cause = note
        if cause is not None:
            counts[cause] = counts.get(cause, 0) + 1
    return counts


@dataclass(frozen=True)
class AttemptStats:
    """What attempts.jsonl says about a job: the one place its records are counted (the DONE
    summary, ``jobdir status`` and the orchestrator all read these)."""

    attempts: int  # attempts with a record
    notices: int  # every notice seen, maintenance included
    # Attempts that ended by saving on a stopping notice, whatever sent it (a preemption, an API
    # stop, a guest power-off): ``preempted`` counts real preemptions.
    preemptions: int
    crashes: int
    lost_steps: int
    attempt_seconds: float  # time the recorded attempts ran
    first_start_unix: float | None
    # The fields below are details derived from the same records: they stay out of ==, so stats
    # with the same counts compare as they did before these fields existed.
    # Stopped attempts by cause (STOP_* → count; completed attempts are not stops).
    stop_causes: dict[str, int] = field(default_factory=dict, compare=False)
    preempted: int = field(default=0, compare=False)  # stop_causes[STOP_PREEMPTED]
    # lost_steps is only a lower bound: a killed attempt's last report may lag its last step.
    lost_steps_lower_bound: bool = field(default=False, compare=False)

    @property
    def lost_steps_text(self) -> str:
        """``≥ N`` when the figure is a lower bound, else ``N``: how every summary prints it."""
        return f"≥ {self.lost_steps}" if self.lost_steps_lower_bound else str(self.lost_steps)

    @classmethod
    def from_records(cls, records: list[dict], events: Iterable[dict] = ()) -> AttemptStats:
        """``events``: the orchestrator's notes (JobDir.events()), which name hung attempts."""
        seconds = 0.0
        for record in records:
            start, end = record.get("start_unix"), record.get("end_unix")
            # A record missing either end has no known duration: counting the other end alone
            # would add (or subtract) a whole Unix timestamp.
            if start is not None and end is not None:
                seconds += max(0.0, float(end) - float(start))
        starts = [float(r["start_unix"]) for r in records if r.get("start_unix")]
        lost, lower_bound = _lost_steps(records)
        causes = stop_causes(records, events)
        return cls(
            attempts=len(records),
            notices=sum(
                len(r.get("notices_seen") or ([r["notice"]] if r.get("notice") else []))
                for r in records
            ),
            preemptions=sum(1 for r in records if r.get("end_reason") in NOTICE_END_REASONS),
            crashes=sum(1 for r in records if r.get("end_reason") == END_CRASHED),
            lost_steps=lost,
            attempt_seconds=seconds,
            first_start_unix=min(starts, default=None),
            stop_causes=causes,
            preempted=causes.get(STOP_PREEMPTED, 0),
            lost_steps_lower_bound=lower_bound,
        )


class JobDir:
    """Reads and writes one job dir through a Store (local path or gs://)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.url = store.url
        # Steps whose checkpoint this process verified (True) or found bad (False); a
        # checkpoint's files never change once its manifest is visible.
        self._valid: dict[int, bool] = {}

    @classmethod
    def open(cls, url: str) -> JobDir:
        return cls(open_store(url))

    # ----- markers and records -------------------------------------------------------------
    def done(self) -> dict | None:
        return _json_or_none(self.store.read(DONE), DONE)

    def failed(self) -> dict | None:
        return _json_or_none(self.store.read(FAILED), FAILED)

    def lease(self) -> dict | None:
        return _json_or_none(self.store.read(LEASE), LEASE)

    def attempts(self) -> list[dict]:
        return _jsonl(self.store.read(ATTEMPTS))

    def metrics(self) -> list[dict]:
        return _jsonl(self.store.read(METRICS))

    def events(self) -> list[dict]:
        """The orchestrator's notes (SUPERVISOR_EVENTS), oldest first."""
        return [e for e in _jsonl(self.store.read(SUPERVISOR_EVENTS)) if isinstance(e, dict)]

    def record_event(self, event: str, **fields: Any) -> dict:
        """Append one note to SUPERVISOR_EVENTS, e.g. ``record_event(EVENT_HUNG_RESTART,
        attempt=N)``. Several watchers may write it: each append is conditional on the
        generation read, and retried when another got in first."""
        note = {**fields, "event": event, "at_unix": fields.get("at_unix", time.time())}
        for _ in range(EVENT_APPEND_RETRIES):
            found = self.store.read_with_generation(SUPERVISOR_EVENTS)
            old, generation = found if found else (b"", ABSENT_GENERATION)
            try:
                self.store.write(SUPERVISOR_EVENTS, old + _dumps(note), if_generation=generation)
                return note
            except PreconditionFailed:
                continue
        raise PreconditionFailed(
            f"{SUPERVISOR_EVENTS}: kept changing under {EVENT_APPEND_RETRIES} tries"
        )

    def attempt_log(self, attempt: int) -> bytes | None:
        """The log startup.sh uploaded for an attempt, if any."""
        return self.store.read(f"{LOGS_DIR}/{attempt_log_name(attempt)}")

    def attempt_log_names(self) -> list[str]:
        return [name.rpartition("/")[2] for name in self.store.list(f"{LOGS_DIR}/")]

    def next_attempt(self) -> int:
        """The number the next attempt takes; reads records, LEASE and log names, no checkpoint."""
        return next_attempt_number(self.attempts(), self.lease(), self.attempt_log_names())

    def write_done(self, summary: dict) -> None:
        self.store.write(DONE, _dumps(summary))

    def write_failed(self, reason: str, attempt: int | None = None) -> None:
        self.store.write(
            FAILED, _dumps({"reason": reason, "attempt": attempt, "at_unix": time.time()})
        )

    def upload_log(self, local_path: str | Path, name: str) -> None:
        if "/" in name or name in ("", ".", ".."):
            raise StoreError(f"bad log name {name!r}: use a plain file name like attempt-3.log")
        self.store.upload(Path(local_path), f"{LOGS_DIR}/{name}")

    def append_attempt(self, record: dict) -> None:
        # One writer (the LEASE holder); a rewrite keeps every write a single atomic object.
        found = self.store.read_with_generation(ATTEMPTS)
        old, generation = found if found else (b"", "0")
        self.store.write(ATTEMPTS, old + _dumps(record), if_generation=generation)

    def write_metrics(self, records: list[dict], keep_up_to_step: int | None) -> None:
        """Append records; with keep_up_to_step drop older lines past it (after a fallback)."""
        kept = self.metrics()
        if keep_up_to_step is not None:
            kept = [r for r in kept if r.get("step", 0) <= keep_up_to_step]
        self.store.write(METRICS, b"".join(_dumps(r) for r in kept + records))

    # ----- checkpoints ---------------------------------------------------------------------
    def checkpoint_steps(self) -> list[int]:
        """Steps of every ckpt-<step>/ present (valid or not), newest first."""
        steps = []
        for name in self.store.list_dirs(CKPT_PREFIX):
            suffix = name[len(CKPT_PREFIX) :]
            if suffix.isdigit():
                steps.append(int(suffix))
        return sorted(steps, reverse=True)

    def read_manifest(self, step: int) -> dict | None:
        return _json_or_none(
            self.store.read(f"{CKPT_PREFIX}{step}/{MANIFEST}"), f"{CKPT_PREFIX}{step}/{MANIFEST}"
        )

    def _fetch_verified(self, step: int, local_dir: Path) -> dict | None:
        """Download ckpt-<step> into local_dir (a fresh staging dir) and check it; the manifest,
        or None (+ warning). Every file name is checked before a byte is written."""
        name = f"{CKPT_PREFIX}{step}"
        manifest = self.read_manifest(step)
        if manifest is None or not isinstance(manifest.get("files"), dict):
            log.warning("checkpoint %s has no valid manifest.json; skipping it", name)
            return None
        files = manifest["files"]
        for rel, expected in files.items():
            problem = manifest_file_problem(rel, expected)
            if problem is not None:
                log.warning("checkpoint %s: %s; skipping it", name, problem)
                return None
        root = local_dir.resolve()
        for rel, expected in sorted(files.items()):
            target = local_dir / rel
            if not target.resolve().is_relative_to(root):  # e.g. through a symlink: never
                log.warning("checkpoint %s: %s leaves the staging dir; skipping it", name, rel)
                return None
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.store.download(f"{name}/{rel}", target)
            except OSError as error:  # missing or unreadable (gs:// NotFound arrives as this too)
                log.warning("checkpoint %s: cannot read %s (%s); skipping it", name, rel, error)
                return None
            if sha256_file(target) != expected.get("sha256"):
                log.warning("checkpoint %s: checksum mismatch in %s; skipping it", name, rel)
                return None
        return manifest

    def _verify_into(self, step: int, local_dir: Path) -> dict | None:
        manifest = self._fetch_verified(step, local_dir)
        self._valid[step] = manifest is not None
        return manifest

    def restore_latest(self, local_dir: Path) -> dict | None:
        """Fetch the newest checkpoint that verifies into a new staging dir under local_dir; its
        manifest (``local_path`` names that dir), or None. Nothing unverified is left there."""
        local_dir.mkdir(parents=True, exist_ok=True)
        for step in self.checkpoint_steps():
            candidate = Path(tempfile.mkdtemp(prefix=f"ckpt-{step}-", dir=local_dir))
            manifest = self._verify_into(step, candidate)
            if manifest is not None:
                manifest["local_path"] = str(candidate)
                return manifest
            shutil.rmtree(candidate, ignore_errors=True)
        return None

    def checkpoint_valid(self, step: int) -> bool | None:
        """Does ckpt-<step> verify (manifest and checksums)? Checked once per process; None
        when it could not be read to the end (e.g. a network error), so nothing is decided."""
        if step not in self._valid:
            try:
                with tempfile.TemporaryDirectory(prefix="survival-verify-") as tmp:
                    self._verify_into(step, Path(tmp))
            except StoreError:
                raise
            except Exception as error:
                log.warning("cannot check %s%d (%s); keeping it", CKPT_PREFIX, step, error)
                return None
        return self._valid[step]

    def latest_checkpoint(self) -> dict | None:
        """Manifest of the newest VALID checkpoint (checksums verified), or None."""
        with tempfile.TemporaryDirectory(prefix="survival-verify-") as tmp:
            manifest = self.restore_latest(Path(tmp))
        if manifest is not None:
            manifest.pop("local_path", None)
        return manifest

    def write_checkpoint(
        self,
        step: int,
        fill: Callable[[Path], None],
        manifest_fields: dict,
        before_manifest: Callable[[], None] = lambda: None,
        before_each: Callable[[], None] = lambda: None,
    ) -> dict:
        """Save ckpt-<step>/: ``fill(dir)`` writes the files, the manifest becomes visible last.
        ``before_each`` runs once the files are written and before each is published: an
        exception from it (a cancelled background save) leaves no manifest behind."""
        with self.store.staging_dir() as staging:
            fill(staging)
            before_each()
            files = {
                p.relative_to(staging).as_posix(): {
                    "sha256": sha256_file(p),
                    "bytes": p.stat().st_size,
                }
                for p in sorted(staging.rglob("*"))
                if p.is_file()
            }
            manifest = {**manifest_fields, "step": step, "files": files}
            (staging / MANIFEST).write_bytes(_dumps(manifest))
            self._valid.pop(step, None)
            self.store.publish_dir(
                staging, f"{CKPT_PREFIX}{step}", MANIFEST, before_manifest, before_each
            )
            self._valid[step] = True
        return manifest

    def prune_checkpoints(self, keep: int) -> None:
        """Keep the newest ``keep`` checkpoints that verify; delete every other one (a corrupt
        or partial checkpoint can never be restored, so it must not take a kept slot)."""
        kept = 0
        for step in self.checkpoint_steps():
            valid = self.checkpoint_valid(step) if kept < keep else None
            if valid:
                kept += 1
            elif valid is False or kept >= keep:
                self.store.delete_tree(f"{CKPT_PREFIX}{step}", first=MANIFEST)
                self._valid.pop(step, None)

    def export_dir(self, local_dir: Path) -> str:
        """Upload every file of local_dir to export/; returns the export URL."""
        for path in sorted(Path(local_dir).rglob("*")):
            if path.is_file():
                self.store.upload(path, f"{EXPORT_DIR}/{path.relative_to(local_dir).as_posix()}")
        return f"{self.url}/{EXPORT_DIR}"

    # ----- summaries -----------------------------------------------------------------------
    def status(self) -> dict:
        done = self.done()
        failed = self.failed()
        stats = AttemptStats.from_records(self.attempts())
        latest = self.latest_checkpoint()
        return {
            "done": done is not None,
            "failed": failed is not None,
            "failed_reason": failed.get("reason") if failed else None,
            "step": int(latest["step"]) if latest else 0,
            "attempts": stats.attempts,
            "notices": stats.notices,
            "last_checkpoint_unix": latest.get("created_unix") if latest else None,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.jobdir", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    is_done = sub.add_parser("is-done", help="exit 0 if the job has a DONE marker, 1 if not")
    is_done.add_argument("url")
    status = sub.add_parser("status", help="print the job's status as one JSON object")
    status.add_argument("url")
    next_attempt = sub.add_parser(
        "next-attempt",
        help="print the number the next attempt takes (the runner numbers its attempt the same "
        "way); reads no checkpoint",
    )
    next_attempt.add_argument("url")
    failed = sub.add_parser("mark-failed", help="write the FAILED marker")
    failed.add_argument("url")
    failed.add_argument("--reason", required=True)
    failed.add_argument("--attempt", type=int, default=None)
    upload = sub.add_parser("upload-log", help="copy a log file to JOB_DIR/logs/NAME")
    upload.add_argument("url")
    upload.add_argument("file")
    upload.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    try:
        job = JobDir.open(args.url)
        if args.command == "is-done":
            return 0 if job.done() is not None else 1
        if args.command == "status":
            print(json.dumps(job.status(), sort_keys=True))
        elif args.command == "next-attempt":
            print(job.next_attempt())
        elif args.command == "mark-failed":
            job.write_failed(args.reason, args.attempt)
        elif args.command == "upload-log":
            if not Path(args.file).is_file():
                print(f"error: log file {args.file} does not exist", file=sys.stderr)
                return 2
            job.upload_log(args.file, args.name)
    except StoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
