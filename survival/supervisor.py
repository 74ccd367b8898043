"""The supervisor: keeps a job's instance alive until the job dir says DONE (or FAILED).

Loop (every ``poll_seconds``): stop if the job was taken down (`invoke down`); stream new
serial-console lines; read the job's progress; DONE or FAILED → make sure the VM stops (it should
power itself off; after ``done_grace_seconds`` it is stopped, unless keep-alive), then summarise
or report the reason; instance TERMINATED without DONE → start it again, with exponential backoff
between restarts; RUNNING but the trainer's LEASE heartbeat has not moved for
``heartbeat_stale_seconds`` → the trainer is hung: stop the VM (the next poll starts it again, and
it resumes from the last checkpoint); a capacity error on start → recreate the instance in the
other zones of ``survival.zones`` (survival.placement); UNSUPPORTED_OPERATION on start (the Spot
VM was preempted while starting) → start it again in the same zone a few times, then move zones;
a regional quota used up → a zone in another configured region, else stop with the quota named.
A transient error (a 5xx, 429, a rate-limit 403, RESOURCE_NOT_READY, or no connection at all,
from Compute or the job dir's storage), or no zone with capacity → retry after a jittered
backoff, with one line per outage; a restart whose start failed that way stays one restart.
``--chaos`` preemptions are fired from the same loop. Clock, sleep and the jitter's random source
are injected.

Steady state (RUNNING, nothing to do) costs two Compute calls per poll: ``instances.get`` and
``getSerialPortOutput`` from the last offset; with the GCE poll interval of survival.cli that is
a few calls a minute per job (docs/gce-behaviour.md, "The supervisor's API rate").

Restarts are recorded in the job dir (survival.progress.record_event) and counted from there.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from survival.chaos import Chaos
from survival.compute import Compute, InstanceInfo
from survival.errors import (
    CapacityError,
    JobFailed,
    PreemptedWhileCreating,
    QuotaError,
    SurvivalError,
    TransientError,
    as_transient,
    region_of,
)
from survival.placement import SAME_ZONE_ATTEMPTS, SAME_ZONE_PAUSE_SECONDS, place, zones_from
from survival.progress import (
    EVENT_RESTART,
    Progress,
    read_progress,
    record_event,
)
from trainer.jobdir import EVENT_GUEST_SHUTDOWN, EVENT_HUNG_RESTART

POLL_SECONDS = 1.0
BACKOFF_INITIAL_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 120.0
# How long the guest gets to power itself off after DONE/FAILED before the supervisor stops it.
DONE_GRACE_SECONDS = 120.0
# No LEASE heartbeat for this long (the trainer beats every few seconds) means a hung trainer.
# Keep it at or above the trainer's LEASE stale limit (300 s): the restarted trainer can take
# the hung one's LEASE over only once it is stale.
HEARTBEAT_STALE_SECONDS = 300.0
# The system event GCE records when the guest OS powered the VM off (zoneOperations.list).
GUEST_TERMINATE = "compute.instances.guestTerminate"
RUNNING_STATES = frozenset({"PROVISIONING", "STAGING", "RUNNING"})
# Provisioning models whose VMs cannot be stopped, only deleted (flex-start: no stop or suspend).
DELETE_ONLY_MODELS = frozenset({"FLEX_START"})
STOPPED_STATES = frozenset({"TERMINATED", "STOPPED", "SUSPENDED"})


@dataclass
class Timing:
    poll_seconds: float = POLL_SECONDS
    backoff_initial_seconds: float = BACKOFF_INITIAL_SECONDS
    backoff_max_seconds: float = BACKOFF_MAX_SECONDS
    done_grace_seconds: float = DONE_GRACE_SECONDS
    heartbeat_stale_seconds: float = HEARTBEAT_STALE_SECONDS
    # UNSUPPORTED_OPERATION in one zone: tries there (create or start) before moving on.
    same_zone_attempts: int = SAME_ZONE_ATTEMPTS
    same_zone_pause_seconds: float = SAME_ZONE_PAUSE_SECONDS


@dataclass
class Outcome:
    progress: Progress
    zone: str
    restarts: int  # counted from the job dir: every supervisor's, over the job's life
    zone_moves: int
    chaos_fired: list[int] = field(default_factory=list)
    taken_down: bool = False  # stopped because of `invoke down`; progress is not DONE then


class Supervisor:
    """Watches one job. ``make_body(zone)`` builds the Instance body for a (re)create there.

    ``taken_down()`` returns the `invoke down` record (or None), checked every poll.
    ``serial`` is where the serial console was left (instance creationTimestamp, next offset)
    and ``on_serial`` is told every new position, so a resumed supervisor shows only new lines.
    """

    def __init__(
        self,
        compute: Compute,
        *,
        name: str,
        zone: str,
        zones: tuple[str, ...],
        job_dir: Any,
        make_body: Callable[[str], dict[str, Any]],
        max_restarts: int,
        out: Callable[[str], None] = print,
        chaos: Chaos | None = None,
        follow_serial: bool = True,
        timing: Timing | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        keep_alive: bool = False,
        taken_down: Callable[[], dict[str, Any] | None] = lambda: None,
        serial: tuple[str | None, int] = (None, 0),
        on_serial: Callable[[str | None, int], None] = lambda instance, offset: None,
        rng: random.Random | None = None,
        reconnect: Callable[[], tuple[Compute, Any] | None] = lambda: None,
    ) -> None:
        self.compute = compute
        self.name = name
        self.zone = zone
        self.zones = zones
        self.job_dir = job_dir
        self.make_body = make_body
        self.max_restarts = max_restarts
        self.out = out
        self.chaos = chaos or Chaos([])
        self.follow_serial = follow_serial
        self.timing = timing or Timing()
        self.clock = clock
        self.sleep = sleep
        self.keep_alive = keep_alive
        self.taken_down = taken_down
        self.on_serial = on_serial
        self.reconnect = reconnect
        # Jitter spreads the retries of many supervisors after a shared outage; not a secret.
        self.rng = rng or random.Random()  # noqa: S311
        self.restarts = 0  # by this supervisor; the reported count comes from the job dir
        self.zone_moves = 0
        self.chaos_fired: list[int] = []
        self.last_status: str | None = None
        self._serial_instance, self._serial_next = serial
        self._backoff_seconds = self.timing.backoff_initial_seconds
        self._not_before = 0.0
        self._outage = False
        # The LEASE heartbeat last seen, when (our clock) it last moved, and the boot it is of.
        self._beat: Any = None
        self._beat_since: float | None = None
        self._beat_boot: str | None = None
        # A restart whose start failed transiently is retried as the same restart.
        self._restart_pending = False
        self._preempted_starts = 0

    # --- pieces of one poll ----------------------------------------------------------------
    def _say(self, line: str) -> None:
        self.out(f"supervisor: {line}")

    def _stream_serial(self) -> None:
        if not self.follow_serial:
            return
        try:
            text, following = self.compute.serial_output(self.zone, self.name, self._serial_next)
        except SurvivalError:
            return
        if following != self._serial_next:
            self._serial_next = following
            self.on_serial(self._serial_instance, following)
        for line in text.splitlines():
            self.out(f"[{self.name}] {line}")

    def _progress(self) -> Progress:
        try:
            return read_progress(self.job_dir)
        except Exception as err:
            transient = as_transient(err, f"job dir {getattr(self.job_dir, 'url', '')}")
            if transient is None:
                raise
            raise transient from err

    def _record(self, event: str, **fields: Any) -> None:
        try:
            record_event(self.job_dir, event, name=self.name, zone=self.zone, **fields)
        except Exception as err:
            transient = as_transient(err, "job dir")
            if transient is None:
                raise
            raise transient from err

    def _backoff(self, jitter: bool = False) -> None:
        delay = self._backoff_seconds
        if jitter:
            delay *= 0.5 + 0.5 * self.rng.random()
        self._not_before = self.clock() + delay
        self._backoff_seconds = min(self._backoff_seconds * 2, self.timing.backoff_max_seconds)

    def _reset_heartbeat(self) -> None:
        self._beat, self._beat_since = None, None

    def _create_somewhere(self, zones: tuple[str, ...]) -> None:
        """Create the instance in the first of ``zones`` with capacity (NoCapacityError, a
        TransientError, when none has any: the loop backs off and tries again)."""
        zone = place(
            self.compute,
            zones,
            self.make_body,
            self._say,
            same_zone_attempts=self.timing.same_zone_attempts,
            same_zone_pause_seconds=self.timing.same_zone_pause_seconds,
            # The loop retries transient errors itself, with its backoff and one line an outage.
            transient_attempts=1,
            sleep=self.sleep,
        )
        if zone != self.zone:
            self.zone_moves += 1
        # A new instance has a new serial console: show it from its start.
        self._serial_instance, self._serial_next = None, 0
        self.on_serial(None, 0)
        self.zone = zone
        self._reset_heartbeat()
        self._restart_pending = False
        self._say(f"created {self.name} in {zone}")

    def _begin_restart(self, why: str) -> None:
        if self.restarts >= self.max_restarts:
            raise JobFailed(
                f"{self.name}: gave up after {self.restarts} restarts "
                f"(survival.max_restarts); resume with `invoke watch {self.name}`"
            )
        self.restarts += 1
        self._say(f"{why}; restart {self.restarts}")
        # Counted as it begins, like the line above: a start that fails with a capacity error
        # turns into a create elsewhere, and one that fails transiently (rate limit,
        # RESOURCE_NOT_READY, an outage) is tried again: both are still this restart.
        self._record(EVENT_RESTART)
        self._restart_pending = True
        self._preempted_starts = 0

    def _restart(self) -> None:
        if not self._restart_pending:
            self._begin_restart(f"{self.name} is TERMINATED without DONE")
        self._reset_heartbeat()
        try:
            self.compute.start_instance(self.zone, self.name)
        except PreemptedWhileCreating as err:
            self._preempted_starts += 1
            if self._preempted_starts < self.timing.same_zone_attempts:
                self._say(
                    f"{self.zone}: {err.code} (the Spot VM was preempted while starting); "
                    f"starting it again ({self._preempted_starts + 1}/"
                    f"{self.timing.same_zone_attempts})"
                )
                return
            self._say(f"{self.zone}: {err.code} {self._preempted_starts} times; moving zones")
            self._move_zones(self._others_first())
        except CapacityError as err:
            self._say(f"{self.zone} is out of capacity ({err.code}); moving zones")
            self._move_zones(self._others_first())
        except QuotaError as err:
            # Another zone of this region never helps; a zone of another region may.
            if err.region is None:
                raise
            elsewhere = tuple(z for z in self.zones if region_of(z) != err.region)
            if not elsewhere:
                raise
            self._say(f"{err.metric} quota of {err.region} is used up; trying {elsewhere[0]}")
            self._move_zones(elsewhere)
        self._restart_pending = False

    def _others_first(self) -> tuple[str, ...]:
        """The other zones first; this one last, in case capacity came back meanwhile."""
        order = zones_from(self.zone, self.zones)
        return order[1:] + order[:1]

    def _move_zones(self, order: tuple[str, ...]) -> None:
        """Delete the instance here and create it in the first of ``order`` that can host it."""
        self.compute.delete_instance(self.zone, self.name)
        self._create_somewhere(order)

    def _maybe_chaos(self, progress: Progress, status: str) -> None:
        if status != "RUNNING" or progress.done or not self.chaos.due(progress.lease):
            return
        target = self.chaos.fired(progress.lease or {})
        self.chaos_fired.append(target)
        self.out(
            f"chaos: preempting {self.name} at step {progress.step} (target {target}; "
            f"{self.chaos.remaining} left)"
        )
        self.compute.preempt_instance(self.zone, self.name)

    def _check_heartbeat(self, progress: Progress, info: InstanceInfo) -> None:
        """Stop the VM when the trainer's heartbeat has not moved for heartbeat_stale_seconds of
        our own clock (the VM's clock is never compared with ours); the next poll starts it."""
        now = self.clock()
        beat = (progress.lease or {}).get("heartbeat_unix")
        boot = info.last_start_timestamp
        if self._beat_since is None or beat != self._beat or boot != self._beat_boot:
            self._beat, self._beat_since, self._beat_boot = beat, now, boot
            return
        silent = now - self._beat_since
        if silent < self.timing.heartbeat_stale_seconds:
            return
        step, saved = progress.step, progress.checkpoint_step
        self._say(
            f"{self.name}: no trainer heartbeat for {silent:.0f}s (hung at step {step}); "
            f"restarting the VM (stop, start): it resumes from step {saved}, "
            f"{max(0, step - saved)} steps lost"
        )
        # The hung-restart note is what makes the attempt's stop cause "hung" in the job dir.
        attempt = (progress.lease or {}).get("attempt")
        self._record(EVENT_HUNG_RESTART, attempt=attempt, step=step, checkpoint_step=saved)
        self._reset_heartbeat()
        self._power_off(info)

    def _note_guest_shutdown(self, info: InstanceInfo, progress: Progress) -> None:
        """A VM the guest OS powered off (someone ran `poweroff` in it) is not a preemption:
        the trainer only saw a SIGTERM. GCE lists the power-off as a system event; note it in
        the job dir, naming the attempt, so the stop causes say "guest-shutdown"."""
        instance_id = str(info.raw.get("id") or "")
        if not instance_id:
            return
        since = _parse_time(info.last_start_timestamp)
        events = self.compute.system_events(self.zone, instance_id)
        newest = next(
            (
                kind
                for kind, when in events
                if since is None or (_parse_time(when) or since) >= since
            ),
            None,
        )
        if newest != GUEST_TERMINATE:
            return
        lease = progress.lease or {}
        attempt = lease.get("attempt") or (
            progress.attempts[-1].get("attempt") if progress.attempts else None
        )
        self._say(f"{self.name} was powered off from inside the guest (attempt {attempt})")
        self._record(EVENT_GUEST_SHUTDOWN, attempt=attempt, step=progress.step)

    def _power_off(self, info: InstanceInfo) -> None:
        """Stop the VM; one that cannot be stopped (flex-start) is deleted. Either way the next
        poll brings the job back (a start, or a create), from its last checkpoint."""
        if info.provisioning_model in DELETE_ONLY_MODELS:
            self.compute.delete_instance(self.zone, self.name)
        else:
            self.compute.stop_instance(self.zone, self.name)

    def _ensure_stopped(self, what: str) -> None:
        """After DONE/FAILED the guest powers itself off. Give it done_grace_seconds; then stop
        it ourselves (unless keep-alive), so a VM whose startup script died stops billing."""
        try:
            deadline = self.clock() + self.timing.done_grace_seconds
            while True:
                info = self.compute.get_instance(self.zone, self.name)
                status = info.status if info else None
                if status is None or status in STOPPED_STATES:
                    return
                if self.keep_alive and status == "RUNNING":
                    self._say(f"{self.name} stays RUNNING (keep-alive): `invoke down {self.name}`")
                    return
                if self.clock() >= deadline:
                    break
                self.sleep(self.timing.poll_seconds)
            if status not in RUNNING_STATES:
                self._say(f"{self.name} is still {status} {self.timing.done_grace_seconds:.0f}s "
                          f"after {what}; check it with `invoke status`")  # fmt: skip
                return
            self._say(
                f"{self.name} is still {status} {self.timing.done_grace_seconds:.0f}s after "
                f"{what}; stopping it"
            )
            self._power_off(info)
        except TransientError as err:
            self._say(f"could not make sure {self.name} stopped ({err}): see `invoke status`")

    def _stop_for_down(self, down: dict[str, Any]) -> Outcome:
        self._say(
            f"{self.name} was taken down (`invoke down`); not supervising it any more "
            f"(`invoke watch {self.name}` brings it back)"
        )
        progress = self._progress()
        return Outcome(
            progress, self.zone, progress.restarts, self.zone_moves, self.chaos_fired, True
        )

    def _reconnect(self) -> None:
        """After a transient error: the endpoints may have moved for good (a restarted localgce
        listens on new ports, with a new API token), so retrying the old clients would never
        work. ``reconnect()`` returns new (compute, job dir) clients when they did move."""
        fresh = self.reconnect()
        if fresh is not None:
            self.compute, self.job_dir = fresh
            self._say("the endpoints moved (localgce restarted?); reconnected")

    # --- the loop --------------------------------------------------------------------------
    def run(self) -> Outcome:
        while True:
            if self._outage and self.clock() < self._not_before:
                self.sleep(self.timing.poll_seconds)
                continue
            try:
                outcome = self._poll()
            except TransientError as err:
                if not self._outage:
                    # One line per outage: the retries that follow are silent until one works.
                    self._outage = True
                    self._say(f"{err}; retrying with backoff")
                self._reconnect()
                self._backoff(jitter=True)
                outcome = None
            if outcome is not None:
                return outcome
            self.sleep(self.timing.poll_seconds)

    def _poll(self) -> Outcome | None:
        down = self.taken_down()
        if down is not None:
            return self._stop_for_down(down)
        self._stream_serial()
        progress = self._progress()
        if progress.done:
            self._stream_serial()
            self._ensure_stopped("DONE")
            progress = self._progress()
            return Outcome(
                progress, self.zone, progress.restarts, self.zone_moves, self.chaos_fired
            )
        if progress.failed:
            self._ensure_stopped("FAILED")
            raise JobFailed(f"{self.name}: FAILED: {progress.failed.get('reason')}")
        if self.clock() >= self._not_before:
            self._step(progress)
            if self._outage:
                self._outage = False
                self._backoff_seconds = self.timing.backoff_initial_seconds
        return None

    def _step(self, progress: Progress) -> None:
        info = self.compute.get_instance(self.zone, self.name)
        self.last_status = info.status if info else None
        if info is None:
            # `invoke down` deletes the instance right after recording itself: look again
            # before creating one, so a supervisor never brings back what was taken down.
            if self.taken_down() is not None:
                return
            # Deleted at the end of its run duration (flex-start, DELETE) or by hand: bringing
            # it back is a restart, counted and bounded like a start.
            if not self._restart_pending:
                self._begin_restart(f"{self.name} does not exist in {self.zone}; creating it")
            self._create_somewhere(zones_from(self.zone, self.zones))
            return
        if info.creation_timestamp and info.creation_timestamp != self._serial_instance:
            if self._serial_instance is not None:
                # Recreated since the offset was saved: its console starts again at 0.
                self._serial_next = 0
            self._serial_instance = info.creation_timestamp
            self.on_serial(self._serial_instance, self._serial_next)
        if info.status in STOPPED_STATES:
            # DONE is written before the trainer powers off: read it again before restarting.
            if self._progress().done:
                return
            if not self._restart_pending:
                self._note_guest_shutdown(info, progress)
            self._restart()
            self._backoff()
            return
        if info.status == "RUNNING":
            # Up again (a start whose reply was lost may have worked): the restart is over.
            self._restart_pending = False
            self._backoff_seconds = self.timing.backoff_initial_seconds
            self._check_heartbeat(progress, info)
        else:
            self._reset_heartbeat()
        self._maybe_chaos(progress, info.status)


def _parse_time(text: str) -> datetime | None:
    """An RFC 3339 timestamp of the API (any offset: GCE answers in US Pacific time)."""
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
