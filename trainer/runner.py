"""The framework-agnostic training loop: checkpoints, notices, the lease and the records.

Lifecycle of one attempt (one trainer process):
  1. Parse flags (typed hyperparameters from the example), install the SIGTERM handler.
  2. DONE in the job dir → exit 0 at once. Restore the newest checkpoint that verifies (a bad one
     is skipped with a warning); hyperparameters differing from it → exit 64, nothing written.
  3. Number the attempt as `python -m trainer.jobdir next-attempt` does for startup.sh's log
     name, take the LEASE (exit 73 if another live writer holds it); a daemon thread refreshes it.
     If a metadata server answers, daemon threads long-poll preempted / maintenance-event.
  4. Loop until --train-steps: one step, metrics at a cadence, a periodic checkpoint every
     --checkpoint-steps. With --async-checkpoints a periodic save only snapshots the state
     (Task.snapshot) and one background thread writes it, manifest last, while training goes
     on; at most one is in flight, and a save that falls due meanwhile waits for it. Between
     steps the loop checks the notice flag: SIGTERM or preempted → classify the stop cause
     (preempted, host maintenance, a plain stop), cancel an in-flight save of an older step,
     save (reason "notice") and exit 75; maintenance → the same save, and keep training.
  5. At --train-steps: final checkpoint, export, DONE, attempt record, release the LEASE.
A SIGKILLed attempt leaves its LEASE behind; the next attempt records it as "crashed".
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer import exitcodes, gce
from trainer.hparams import HParamError, add_flags, differences, resolve
from trainer.jobdir import (
    END_COMPLETED,
    END_CRASHED,
    END_NOTICE_SAVED,
    STOP_CRASHED,
    AttemptStats,
    JobDir,
    killed_attempt,
    killed_attempt_record,
    next_attempt_number,
    stop_cause,
)
from trainer.lease import DEFAULT_STALE_SECONDS, Heartbeat, Lease, LeaseHeld
from trainer.scratch import Scratch
from trainer.storage import (
    JobDirDenied,
    JobDirFull,
    JobDirMissing,
    JobDirUnusable,
    StoreError,
    open_store,
    unusable_from_os_error,
)
from trainer.task import Task

log = logging.getLogger("trainer")

SLOW_CHECKPOINT_ENV = "SURVIVAL_TEST_SLOW_CHECKPOINT_SECONDS"  # test hook: widen the write window
# Test hook: the save reasons (comma-separated, e.g. "periodic") the slow hook applies to; all
# when unset.
SLOW_CHECKPOINT_REASONS_ENV = "SURVIVAL_TEST_SLOW_CHECKPOINT_REASONS"
STOPPING_NOTICES = ("sigterm", "preempted")
# How stale the LEASE's step (the lost-step estimate of a killed attempt) may be. Cloud Storage
# allows about one write per second to one object, so 2 s leaves headroom.
HEARTBEAT_MAX_SECONDS = 2.0
# How often a loop waiting for an in-flight background save looks for a stopping notice.
SAVE_WAIT_POLL_SECONDS = 0.05


class SaveCancelled(Exception):
    """A background save was cancelled before its manifest: nothing of it was committed."""


@dataclass
class PendingSave:
    """The one periodic save in flight in the background (``--async-checkpoints``)."""

    step: int
    metrics_rows: list[dict]  # the metrics up to ``step``, flushed once it is committed
    metrics_keep_up_to: int | None
    snapshot_monotonic: float
    thread: threading.Thread | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False
    error: BaseException | None = None


NEVER = threading.Event()  # the cancel event of a synchronous save: never set


class Stop(Exception):
    """Ends the attempt with an exit code after the records are written."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code


def unusable_job_dir(error: BaseException, job_url: str) -> Stop | None:
    """The Stop for an error that says the job dir cannot be used (missing bucket, read-only or
    denied, full): retrying would fail the same way, so it is not a crash. None otherwise."""
    if isinstance(error, OSError) and not isinstance(error, JobDirUnusable):
        error = unusable_from_os_error(error, f"job dir {job_url}") or error
    if isinstance(error, JobDirMissing):
        return Stop(exitcodes.JOB_DIR_MISSING, str(error))
    if isinstance(error, JobDirDenied):
        return Stop(exitcodes.JOB_DIR_DENIED, str(error))
    if isinstance(error, JobDirFull):
        return Stop(exitcodes.JOB_DIR_FULL, str(error))
    return None


def build_parser(task_cls: type[Task], prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=(task_cls.__doc__ or "").strip())
    parser.add_argument(
        "--job-dir",
        default=os.environ.get("AIP_CHECKPOINT_DIR"),
        help="local path or gs://bucket/prefix (default: $AIP_CHECKPOINT_DIR)",
    )
    parser.add_argument(
        "--export-dir",
        default=os.environ.get("AIP_MODEL_DIR"),
        help="where the final model goes (default: $AIP_MODEL_DIR, else JOB_DIR/export)",
    )
    parser.add_argument(
        "--train-steps",
        type=int,
        default=task_cls.default_train_steps,
        help=f"train UP TO this many steps in total (default {task_cls.default_train_steps})",
    )
    parser.add_argument(
        "--checkpoint-steps",
        type=int,
        default=task_cls.default_checkpoint_steps,
        help="periodic checkpoint every K steps; 0: only notice and final saves "
        f"(default {task_cls.default_checkpoint_steps}, ≤2%% overhead, see bench/)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds init and data order (default 0)")
    parser.add_argument(
        "--data-dir", default=None, help="DATA_DIR/digits.npz (X, y); default: bundled digits"
    )
    parser.add_argument(
        "--keep-checkpoints", type=int, default=3, help="newest checkpoints kept (default 3)"
    )
    parser.add_argument(
        "--lease-stale-seconds",
        type=float,
        default=float(os.environ.get("SURVIVAL_LEASE_STALE_SECONDS", DEFAULT_STALE_SECONDS)),
        help="a LEASE without heartbeat for this long may be taken over "
        f"(default $SURVIVAL_LEASE_STALE_SECONDS or {DEFAULT_STALE_SECONDS:.0f})",
    )
    parser.add_argument(
        "--metrics-steps", type=int, default=10, help="metrics.jsonl cadence (default 10)"
    )
    parser.add_argument(
        "--log-steps", type=int, default=100, help="progress line cadence (default 100)"
    )
    default_async = task_cls.default_async_checkpoints
    parser.add_argument(
        "--async-checkpoints",
        action=argparse.BooleanOptionalAction,
        default=default_async,
        help="periodic saves snapshot the state and write it in one background thread while "
        "training goes on; notice and final saves stay synchronous "
        f"(default {'on' if default_async else 'off'} for this example, see bench/)",
    )
    add_flags(parser, task_cls.hparams)
    return parser


@dataclass
class Attempt:
    """This process's attempt: built in ``Runner.run`` once the LEASE is held, passed down."""

    number: int
    lease: Lease
    killed: dict | None  # LEASE of a previous attempt that died without a record
    heartbeat: Heartbeat  # started once the task is built and restored
    resumed_from_step: int | None = None
    loop_seconds: float | None = None  # set once the loop reaches --train-steps
    loop_cpu_seconds: float | None = None

    @property
    def started_unix(self) -> float:
        return self.lease.started_unix


class Runner:
    def __init__(self, task_cls: type[Task], args: argparse.Namespace, hparams: dict) -> None:
        self.task_cls = task_cls
        self.args = args
        self.hparams = hparams
        self.job = JobDir.open(args.job_dir)
        self.step = 0
        self.reached_step = 0  # the step count once the step in progress (if any) finishes
        self.notice_kind: str | None = None
        self.notice_step: int | None = None
        self.notices_seen: list[str] = []
        self.on_gce = False
        self.stop_cause: str | None = None  # why the attempt is stopping, once a notice came
        self._notice_lock = threading.Lock()
        self.metrics_buffer: list[dict] = []
        self.metrics_keep_up_to: int | None = None
        self.last_saved_step: int | None = None
        self.save_seconds: list[float] = []
        self.periodic_save_seconds: list[float] = []
        # Time the training loop stood still for each periodic save: all of it when saving
        # synchronously; the snapshot and any wait for the previous save when asynchronous.
        self.periodic_blocking_seconds: list[float] = []
        self.pending: PendingSave | None = None  # the background save in flight, if any
        self.save_waits = 0  # periodic saves that fell due while another was in flight
        self.save_wait_seconds = 0.0
        self.saves_cancelled = 0
        self.restore_seconds: float | None = None
        self.steps_run = 0  # steps this attempt ran, and the time they took (saves excluded)
        self.step_seconds_total = 0.0
        self.overlap_steps = 0  # ... of which while a background save was in flight
        self.overlap_seconds = 0.0

    # ----- notices -------------------------------------------------------------------------
    def on_notice(self, kind: str) -> None:
        """Called from the signal handler or a watcher thread: only records the notice."""
        with self._notice_lock:
            if self.notice_kind in STOPPING_NOTICES:
                return  # already stopping; a second notice changes nothing
            self.notice_kind = kind
            # The step in progress is finished before saving, so it counts as reached.
            self.notice_step = self.reached_step

    def _take_notice(self) -> str | None:
        with self._notice_lock:
            kind, self.notice_kind = self.notice_kind, None
            if kind is not None and self.notice_step is not None:
                # Claimed a step but noticed before running it: nothing beyond self.step.
                self.notice_step = min(self.notice_step, self.step)
            if kind in STOPPING_NOTICES:
                self.notice_kind = kind  # stays set: later notices are ignored
            return kind

    # ----- checkpoints ---------------------------------------------------------------------
    def _manifest_fields(self, attempt: Attempt, task: Task, reason: str) -> dict:
        return {
            "reason": reason,
            "hparams": self.hparams,
            "seed": self.args.seed,
            "framework": self.task_cls.framework,
            "versions": {"python": sys.version.split()[0], **task.versions()},
            "created_unix": time.time(),
            "attempt": attempt.number,
        }

    def _take_metrics(self) -> tuple[list[dict], int | None]:
        """The buffered metrics rows (all up to the current step), handed to the save of this
        step: they are flushed with its checkpoint, so metrics.jsonl matches the saved
        trajectory."""
        rows, keep = self.metrics_buffer, self.metrics_keep_up_to
        self.metrics_buffer, self.metrics_keep_up_to = [], None
        return rows, keep

    def _commit(
        self,
        attempt: Attempt,
        step: int,
        fill,
        fields: dict,
        metrics: tuple[list[dict], int | None],
        cancel: threading.Event,
    ) -> None:
        """Write ckpt-<step> (manifest last), then flush its metrics, prune, and heartbeat the
        LEASE with the step saved. Raises SaveCancelled, before the manifest, once ``cancel``
        is set. Runs in the main thread, or in the background thread for an async save."""
        reasons = os.environ.get(SLOW_CHECKPOINT_REASONS_ENV, "")
        slow = not reasons or fields["reason"] in reasons.split(",")
        slow_seconds = float(os.environ.get(SLOW_CHECKPOINT_ENV, "0") or 0) if slow else 0.0

        def check_cancel() -> None:
            if cancel.is_set():
                raise SaveCancelled(f"ckpt-{step}")

        def before_manifest() -> None:
            if slow_seconds > 0:
                log.info("checkpoint ckpt-%d: files written, manifest pending (test hook)", step)
                cancel.wait(slow_seconds)  # a cancel ends the wait
            check_cancel()

        self.job.write_checkpoint(step, fill, fields, before_manifest, check_cancel)
        self.last_saved_step = step
        rows, keep = metrics
        if rows or keep is not None:
            self.job.write_metrics(rows, keep)
        self.job.prune_checkpoints(self.args.keep_checkpoints)
        with attempt.heartbeat.lock:
            attempt.lease.heartbeat(step=max(self.step, step), saved_step=step)

    def save(self, attempt: Attempt, task: Task, reason: str) -> None:
        """A synchronous save of the current step. An in-flight background save is first
        waited for (final save, or one of this very step) or cancelled (a notice: the older
        step it holds is superseded), so there is never a second writer."""
        self._settle_background(cancel=reason == "notice")
        if self.last_saved_step == self.step:
            return
        started = time.monotonic()
        fields = self._manifest_fields(attempt, task, reason)
        self._commit(attempt, self.step, task.save, fields, self._take_metrics(), NEVER)
        seconds = time.monotonic() - started
        self.save_seconds.append(seconds)
        if reason == "periodic":
            self.periodic_save_seconds.append(seconds)
            self.periodic_blocking_seconds.append(seconds)
        log.info("checkpoint ckpt-%d saved (%s) in %.3fs", self.step, reason, seconds)

    def save_periodic(self, attempt: Attempt, task: Task) -> None:
        if not self.args.async_checkpoints:
            self.save(attempt, task, "periodic")
            return
        started = time.monotonic()
        pending = self.pending
        if pending is not None and pending.thread.is_alive():
            self.save_waits += 1
            log.warning(
                "periodic save due at step %d while ckpt-%d is in flight: waiting for it",
                self.step,
                pending.step,
            )
            while not self._join(pending, SAVE_WAIT_POLL_SECONDS):
                if self.notice_kind in STOPPING_NOTICES:
                    break  # the notice save, next, takes this step
            self.save_wait_seconds += time.monotonic() - started
            if pending.thread.is_alive():
                return
        self._collect_background()
        if self.last_saved_step == self.step:
            return
        metrics = self._take_metrics()
        fields = self._manifest_fields(attempt, task, "periodic")
        write = task.snapshot()
        pending = PendingSave(self.step, *metrics, snapshot_monotonic=time.monotonic())
        pending.thread = threading.Thread(
            target=self._write_in_background,
            args=(attempt, pending, write, fields),
            name="checkpoint-writer",
            daemon=True,
        )
        self.pending = pending
        pending.thread.start()
        blocking = time.monotonic() - started
        self.periodic_blocking_seconds.append(blocking)
        log.info(
            "checkpoint ckpt-%d: snapshot in %.3fs, writing in the background", self.step, blocking
        )

    def _write_in_background(self, attempt: Attempt, pending: PendingSave, write, fields) -> None:
        metrics = (pending.metrics_rows, pending.metrics_keep_up_to)
        try:
            self._commit(attempt, pending.step, write, fields, metrics, pending.cancel)
        except SaveCancelled:
            pending.cancelled = True
            return
        except BaseException as error:  # handed to the training loop, which stops on it
            pending.error = error
            return
        seconds = time.monotonic() - pending.snapshot_monotonic
        self.save_seconds.append(seconds)
        self.periodic_save_seconds.append(seconds)
        log.info(
            "checkpoint ckpt-%d saved (periodic, in the background) in %.3fs", pending.step, seconds
        )

    @staticmethod
    def _join(pending: PendingSave, timeout: float | None = None) -> bool:
        pending.thread.join(timeout)
        return not pending.thread.is_alive()

    def _collect_background(self) -> None:
        """Forget a finished background save; raise its error, if it failed. A cancelled
        save's metrics rows go back to the buffer, for the save that replaces it."""
        pending = self.pending
        if pending is None or pending.thread.is_alive():
            return
        self.pending = None
        if pending.cancelled:
            self.saves_cancelled += 1
            self.metrics_buffer = pending.metrics_rows + self.metrics_buffer
            keep, current = pending.metrics_keep_up_to, self.metrics_keep_up_to
            if keep is not None:
                self.metrics_keep_up_to = keep if current is None else min(keep, current)
            log.warning("checkpoint ckpt-%d cancelled before its manifest", pending.step)
        if pending.error is not None:
            raise pending.error

    def _settle_background(self, cancel: bool) -> None:
        """Wait for the in-flight background save, or cancel it (``cancel``, unless it holds
        the current step), and collect it. Afterwards no other writer is running."""
        pending = self.pending
        if pending is None:
            return
        if pending.thread.is_alive():
            if cancel and pending.step != self.step:
                log.warning(
                    "cancelling the in-flight save of ckpt-%d: step %d supersedes it",
                    pending.step,
                    self.step,
                )
                pending.cancel.set()
            else:
                log.info("waiting for the in-flight save of ckpt-%d", pending.step)
            self._join(pending)
        self._collect_background()

    def _stop_background(self) -> None:
        """On the way out of a failed attempt: cancel and join the background save."""
        pending = self.pending
        if pending is not None and pending.thread.is_alive():
            pending.cancel.set()
            self._join(pending)

    # ----- the attempt ---------------------------------------------------------------------
    def check_config(self, manifest: dict | None) -> None:
        if manifest is None:
            return
        saved = {**manifest.get("hparams", {}), "seed": manifest.get("seed")}
        saved["framework"] = manifest.get("framework")
        wanted = {**self.hparams, "seed": self.args.seed, "framework": self.task_cls.framework}
        diff = differences(saved, wanted)
        if diff:
            raise Stop(
                exitcodes.CONFIG,
                f"hyperparameters differ from job {self.job.url} (checkpoint step "
                f"{manifest['step']}):\n  "
                + "\n  ".join(diff)
                + "\nuse a new --job-dir, or rerun with the job's values",
            )

    def record_killed_attempt(self, killed: dict) -> None:
        """Append the record of an attempt that died without one, from the LEASE it left and
        its other reports. Runs before this attempt's first metrics flush, which drops the
        killed attempt's rows past the step resumed from."""
        number = killed.get("attempt")
        log_text = None
        if isinstance(number, int) and number > 0:
            try:
                log_text = self.job.attempt_log(number)
            except StoreError:
                raise
            except Exception as error:  # the log only sharpens the figure; go on without it
                log.warning("cannot read the log of attempt %s (%s)", number, error)
        self.job.append_attempt(killed_attempt_record(killed, self.job.metrics(), log_text))

    def classify_stop(self, attempt: Attempt, kind: str) -> str:
        """Why this attempt is stopping, from the evidence at hand when the notice is taken
        (before the save), and put into the LEASE so that a record written from it, if the
        save is cut short by a kill, still says why."""
        if kind == "preempted":
            preempted, maintenance = True, False
        elif self.on_gce:
            preempted, maintenance = gce.stop_evidence()
        else:
            preempted, maintenance = False, False  # off GCE only a user or a process stops us
        self.stop_cause = stop_cause(kind, self.notices_seen, preempted, maintenance)
        with attempt.heartbeat.lock:
            attempt.lease.extra["stop_cause"] = self.stop_cause
        return self.stop_cause

    def run(self) -> int:
        args = self.args
        if self.job.done() is not None:
            log.info("job %s is already DONE; nothing to do", self.job.url)
            print(f"job {self.job.url} is already DONE", flush=True)
            return exitcodes.OK

        # Restores, checks and temporary files go to this trainer's own scratch dir in the
        # job's staging area; those of killed trainers are removed here.
        with Scratch(self.job.store.scratch_root()) as scratch:
            restore_started = time.monotonic()
            manifest = self.job.restore_latest(scratch / "restore")
            self.restore_seconds = time.monotonic() - restore_started
            self.check_config(manifest)

            recorded = self.job.attempts()
            previous = self.job.lease()
            # Numbered as `python -m trainer.jobdir next-attempt` numbers it for startup.sh, so
            # this attempt's record and its uploaded log carry the same number.
            number = next_attempt_number(recorded, previous, self.job.attempt_log_names())
            on_gce = self.on_gce = gce.probe()
            lease = Lease(
                self.job.store,
                holder=gce.holder_name(on_gce),
                attempt=number,
                stale_seconds=args.lease_stale_seconds,
                extra={"step": manifest["step"] if manifest else 0},
            )
            lease.acquire()  # raises LeaseHeld → 73
            interval = max(0.2, min(HEARTBEAT_MAX_SECONDS, args.lease_stale_seconds / 4))
            attempt = Attempt(
                number,
                lease,
                killed=killed_attempt(recorded, previous),
                heartbeat=Heartbeat(lease, interval, lambda: {"step": self.step}),
            )
            try:
                return self._run_with_lease(attempt, manifest, on_gce)
            except Stop:
                raise
            except Exception as error:
                stop = unusable_job_dir(error, self.job.url)
                if stop is None:
                    log.error("training crashed:\n%s", traceback.format_exc())
                # The job dir may refuse these writes too (that is what went wrong): try.
                with contextlib.suppress(Exception):
                    self._record(attempt, END_CRASHED, None)
                with contextlib.suppress(Exception):
                    self._release(attempt)
                if stop is not None:
                    raise stop from None
                return exitcodes.CRASHED

    def _run_with_lease(self, attempt: Attempt, manifest: dict | None, on_gce: bool) -> int:
        args = self.args
        if attempt.killed is not None:
            self.record_killed_attempt(attempt.killed)
        self.job.store.sweep_staging()
        task = self.task_cls(self.hparams, args.seed, args.data_dir)
        if manifest is not None:
            restore_started = time.monotonic()
            task.restore(Path(manifest["local_path"]))
            self.restore_seconds = (self.restore_seconds or 0.0) + (
                time.monotonic() - restore_started
            )
            self.step = self.reached_step = int(manifest["step"])
            self.last_saved_step = self.step
            log.info("resumed from ckpt-%d (%s)", self.step, manifest.get("reason"))
        else:
            log.info("starting from step 0")
        attempt.resumed_from_step = self.step
        self.metrics_keep_up_to = self.step
        attempt.lease.extra.update(step=self.step, resumed_from_step=self.step)

        with attempt.heartbeat.lock:
            attempt.lease.heartbeat()
        attempt.heartbeat.start()
        watchers = gce.start_watchers(self.on_notice) if on_gce else []
        if on_gce:
            log.info("watching metadata %s for preemption and maintenance", gce.metadata_host())
        try:
            return self._loop(attempt, task)
        finally:
            self._stop_background()  # before any record is written: one writer at a time
            for watcher in watchers:
                watcher.stop()

    def _loop(self, attempt: Attempt, task: Task) -> int:
        args = self.args
        loop_started = time.monotonic()
        loop_cpu_started = time.process_time()  # CPU time: less sensitive to a busy machine
        while True:
            self._collect_background()  # raises the error of a failed background save
            if attempt.lease.lost.is_set():
                raise Stop(exitcodes.LEASE_HELD, "another writer took over the LEASE; stopping")
            kind = self._take_notice()
            if kind is not None:
                self.notices_seen.append(kind)
                log.warning("notice %r at step %d: saving now", kind, self.step)
                if kind in STOPPING_NOTICES:
                    started = time.monotonic()
                    log.warning("stop cause: %s", self.classify_stop(attempt, kind))
                    self.save(attempt, task, "notice")
                    save_seconds = time.monotonic() - started
                    self._record(attempt, END_NOTICE_SAVED, kind, save_seconds=save_seconds)
                    self._release(attempt)
                    log.warning(
                        "saved ckpt-%d after %r in %.3fs; exiting", self.step, kind, save_seconds
                    )
                    return exitcodes.NOTICE_SAVED
                self.save(attempt, task, "notice")  # maintenance: save, keep training
            if self.step >= args.train_steps:
                break
            # Claim the step, then look again: a notice that arrived in between is handled
            # before the step runs, so the saved step always equals notice_step.
            self.reached_step = self.step + 1
            if self.notice_kind is not None:
                self.reached_step = self.step
                continue
            overlapping = self.pending is not None and self.pending.thread.is_alive()
            step_started = time.monotonic()
            metrics = task.train_step(self.step)
            step_seconds = time.monotonic() - step_started
            self.step_seconds_total += step_seconds
            self.steps_run += 1
            if overlapping:  # how much a background write slows the steps beside it
                self.overlap_steps += 1
                self.overlap_seconds += step_seconds
            self.step += 1
            if args.metrics_steps and self.step % args.metrics_steps == 0:
                self.metrics_buffer.append(
                    {"step": self.step, **metrics, "unix": time.time(), "attempt": attempt.number}
                )
            if args.log_steps and self.step % args.log_steps == 0:
                log.info("step %d loss %.6f", self.step, metrics.get("loss", float("nan")))
            if (
                args.checkpoint_steps
                and self.step % args.checkpoint_steps == 0
                and self.step < args.train_steps
            ):
                self.save_periodic(attempt, task)
        attempt.loop_seconds = time.monotonic() - loop_started
        attempt.loop_cpu_seconds = time.process_time() - loop_cpu_started
        self.save(attempt, task, "final")
        self.finish(attempt, task)
        return exitcodes.OK

    def finish(self, attempt: Attempt, task: Task) -> None:
        with tempfile.TemporaryDirectory(prefix="survival-export-") as tmp:
            task.export(Path(tmp))
            if self.args.export_dir:
                store = open_store(self.args.export_dir)
                for path in sorted(Path(tmp).rglob("*")):
                    if path.is_file():
                        store.upload(path, path.relative_to(tmp).as_posix())
                exported = store.url
            else:
                exported = self.job.export_dir(Path(tmp))
        record = self._record(attempt, END_COMPLETED, None)
        records = self.job.attempts()
        stats = AttemptStats.from_records(records, self.job.events())
        checkpoint_waits = sum(int(r.get("save_waits") or 0) for r in records)
        metrics = self.job.metrics()
        first_start = stats.first_start_unix or record["start_unix"]
        summary = {
            "steps": self.step,
            "wall_seconds": round(time.time() - first_start, 3),
            "attempt_seconds": round(stats.attempt_seconds, 3),
            "attempts": stats.attempts,
            "notices": stats.notices,
            "lost_steps": stats.lost_steps,
            "lost_steps_lower_bound": stats.lost_steps_lower_bound,
            "crashes": stats.crashes,
            "preempted": stats.preempted,
            "stop_causes": stats.stop_causes,
            # Periodic saves that fell due while the previous one was still being written.
            "checkpoint_waits": checkpoint_waits,
            "framework": self.task_cls.framework,
            "exported": exported,
            "seed": self.args.seed,
            "hparams": self.hparams,
            "final_metrics": metrics[-1] if metrics else None,
            "finished_unix": time.time(),
        }
        self.job.write_done(summary)
        self._release(attempt)
        log.info(
            "DONE: %d steps, %d attempts, lost steps %s, checkpoint waits %d, exported to %s",
            self.step,
            stats.attempts,
            stats.lost_steps_text,
            checkpoint_waits,
            exported,
        )

    def _record(self, attempt: Attempt, end_reason: str, notice: str | None, **extra: Any) -> dict:
        record = {
            "attempt": attempt.number,
            "start_unix": attempt.started_unix,
            "end_unix": time.time(),
            "resumed_from_step": attempt.resumed_from_step,
            "end_step": self.last_saved_step if end_reason != END_CRASHED else self.step,
            "end_reason": end_reason,
            # This process knows the step it reached: never a lower bound.
            "end_step_lower_bound": False,
            "stop_cause": None if end_reason == END_COMPLETED else self.stop_cause or STOP_CRASHED,
            "notice": notice,
            "notice_step": self.notice_step if notice else None,
            "notices_seen": list(self.notices_seen),
            "holder": attempt.lease.holder,
            "pid": os.getpid(),
            "loop_seconds": attempt.loop_seconds,
            "loop_cpu_seconds": attempt.loop_cpu_seconds,
            "checkpoint_saves": len(self.save_seconds),
            "checkpoint_seconds_total": round(sum(self.save_seconds), 4),
            "periodic_saves": len(self.periodic_save_seconds),
            "periodic_save_seconds": round(sum(self.periodic_save_seconds), 4),
            "async_checkpoints": self.args.async_checkpoints,
            "periodic_save_blocking_seconds": round(sum(self.periodic_blocking_seconds), 4),
            "save_waits": self.save_waits,
            "save_wait_seconds": round(self.save_wait_seconds, 4),
            "saves_cancelled": self.saves_cancelled,
            "steps_run": self.steps_run,
            "step_seconds_total": round(self.step_seconds_total, 4),
            "background_overlap_steps": self.overlap_steps,
            "background_overlap_seconds": round(self.overlap_seconds, 4),
            "restore_seconds": (
                None if self.restore_seconds is None else round(self.restore_seconds, 4)
            ),
            **extra,
        }
        self.job.append_attempt(record)
        return record

    def _release(self, attempt: Attempt) -> None:
        # Not alive when the attempt crashed before starting it.
        if attempt.heartbeat.is_alive():
            attempt.heartbeat.stop()
        attempt.lease.release()


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("absl").setLevel(logging.WARNING)  # TF's checkpoint chatter


def _module_name(task_cls: type[Task]) -> str:
    """The dotted name users type after `python -m` (run that way, the module is `__main__`)."""
    module = sys.modules.get(task_cls.__module__)
    spec = getattr(module, "__spec__", None)
    return spec.name if spec is not None else task_cls.__module__


def main(task_cls: type[Task], argv: list[str] | None = None, prog: str | None = None) -> int:
    """Entry point for an example module: ``sys.exit(main(MyTask))``."""
    parser = build_parser(task_cls, prog or f"python -m {_module_name(task_cls)}")
    args = parser.parse_args(argv)
    if not args.job_dir:
        parser.error("--job-dir is required (or set AIP_CHECKPOINT_DIR)")
    for flag in ("train_steps", "checkpoint_steps", "metrics_steps", "log_steps"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag.replace('_', '-')} must be ≥ 0")
    if args.keep_checkpoints < 1:
        parser.error("--keep-checkpoints must be ≥ 1")
    try:
        hparams = resolve(task_cls.hparams, args)
    except HParamError as error:
        parser.error(str(error))
    _configure_logging()
    try:
        runner = Runner(task_cls, args, hparams)
    except StoreError as error:
        parser.error(str(error))
    # Installed before the (slow) framework import and restore, so an early SIGTERM counts.
    signal.signal(signal.SIGTERM, lambda signum, frame: runner.on_notice("sigterm"))
    try:
        return runner.run()
    except LeaseHeld as error:
        print(f"error: {error}", file=sys.stderr)
        return exitcodes.LEASE_HELD
    except Stop as stop:
        print(f"error: {stop}", file=sys.stderr)
        return stop.code
    except (OSError, StoreError) as error:
        # Before the LEASE (or the release) the job dir may turn out unusable: one line, the
        # code that says which way, never a retried "crash".
        stop = unusable_job_dir(error, runner.job.url)
        if stop is None:
            raise
        print(f"error: {stop}", file=sys.stderr)
        return stop.code
