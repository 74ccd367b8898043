"""The supervisor: keeps a job's instance alive until the job dir says DONE (or FAILED).

Loop (every ``poll_seconds``): stream new serial-console lines; read the job's progress; DONE →
stop and summarise; FAILED → stop with the reason; instance TERMINATED without DONE → start it
again, with exponential backoff between restarts; a capacity error on start → recreate the
instance in the other zones of ``survival.zones`` (survival.placement); a transient API error, or
no zone with capacity → retry after the backoff. ``--chaos`` preemptions are fired from the same
loop. Clock and sleep are injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from survival.chaos import Chaos
from survival.compute import Compute
from survival.errors import CapacityError, JobFailed, SurvivalError, TransientError
from survival.placement import place, zones_from
from survival.progress import Progress, read_progress

POLL_SECONDS = 1.0
BACKOFF_INITIAL_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 120.0
RUNNING_STATES = frozenset({"PROVISIONING", "STAGING", "RUNNING"})
STOPPED_STATES = frozenset({"TERMINATED", "STOPPED", "SUSPENDED"})


@dataclass
class Timing:
    poll_seconds: float = POLL_SECONDS
    backoff_initial_seconds: float = BACKOFF_INITIAL_SECONDS
    backoff_max_seconds: float = BACKOFF_MAX_SECONDS


@dataclass
class Outcome:
    progress: Progress
    zone: str
    restarts: int
    zone_moves: int
    chaos_fired: list[int] = field(default_factory=list)


class Supervisor:
    """Watches one job. ``make_body(zone)`` builds the Instance body for a (re)create there."""

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
        self.restarts = 0
        self.zone_moves = 0
        self.chaos_fired: list[int] = []
        self._serial_next = 0
        self._backoff_seconds = self.timing.backoff_initial_seconds
        self._not_before = 0.0

    # --- pieces of one poll ----------------------------------------------------------------
    def _stream_serial(self) -> None:
        if not self.follow_serial:
            return
        try:
            text, self._serial_next = self.compute.serial_output(
                self.zone, self.name, self._serial_next
            )
        except SurvivalError:
            return
        for line in text.splitlines():
            self.out(f"[{self.name}] {line}")

    def _backoff(self) -> None:
        self._not_before = self.clock() + self._backoff_seconds
        self._backoff_seconds = min(self._backoff_seconds * 2, self.timing.backoff_max_seconds)

    def _create_somewhere(self, zones: tuple[str, ...]) -> None:
        """Create the instance in the first of ``zones`` with capacity (NoCapacityError, a
        TransientError, when none has any: the loop backs off and tries again)."""
        zone = place(
            self.compute, zones, self.make_body, lambda line: self.out(f"supervisor: {line}")
        )
        if zone != self.zone:
            self.zone_moves += 1
            self._serial_next = 0
        self.zone = zone
        self.out(f"supervisor: created {self.name} in {zone}")

    def _restart(self) -> None:
        if self.restarts >= self.max_restarts:
            raise JobFailed(
                f"{self.name}: gave up after {self.restarts} restarts (survival.max_restarts); "
                f"resume with `invoke watch {self.name}`"
            )
        self.restarts += 1
        self.out(f"supervisor: {self.name} is TERMINATED without DONE; restart {self.restarts}")
        try:
            self.compute.start_instance(self.zone, self.name)
        except CapacityError as err:
            self.out(f"supervisor: {self.zone} is out of capacity ({err.code}); moving zones")
            self.compute.delete_instance(self.zone, self.name)
            # The other zones first; the full one last, in case capacity came back meanwhile.
            order = zones_from(self.zone, self.zones)
            self._create_somewhere(order[1:] + order[:1])

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

    # --- the loop --------------------------------------------------------------------------
    def run(self) -> Outcome:
        while True:
            self._stream_serial()
            progress = read_progress(self.job_dir)
            if progress.done:
                self._stream_serial()
                return Outcome(
                    progress, self.zone, self.restarts, self.zone_moves, self.chaos_fired
                )
            if progress.failed:
                raise JobFailed(f"{self.name}: FAILED: {progress.failed.get('reason')}")
            if self.clock() >= self._not_before:
                try:
                    self._step(progress)
                except TransientError as err:
                    self.out(f"supervisor: {err}; retrying in {self._backoff_seconds:.0f}s")
                    self._backoff()
            self.sleep(self.timing.poll_seconds)

    def _step(self, progress: Progress) -> None:
        info = self.compute.get_instance(self.zone, self.name)
        if info is None:
            self.out(f"supervisor: {self.name} does not exist in {self.zone}; creating it")
            self._create_somewhere(zones_from(self.zone, self.zones))
            return
        if info.status in STOPPED_STATES:
            # DONE is written before the trainer powers off: read it again before restarting.
            if read_progress(self.job_dir).done:
                return
            self._restart()
            self._backoff()
            return
        if info.status == "RUNNING":
            self._backoff_seconds = self.timing.backoff_initial_seconds
        self._maybe_chaos(progress, info.status)
