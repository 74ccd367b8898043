"""Single writer per job dir: the LEASE object.

A trainer takes the lease before it writes anything and refreshes ``heartbeat_unix`` from a
daemon thread. Another trainer may take over only when the lease is stale (no heartbeat for
``stale_seconds``) or its holder is this very host and its pid is gone (the process was killed
and the instance restarted the trainer). Every take-over and heartbeat is a conditional write
on the generation we read, so of two racing trainers exactly one wins.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from trainer.storage import ABSENT_GENERATION, PreconditionFailed, Store

log = logging.getLogger(__name__)

LEASE_NAME = "LEASE"
DEFAULT_STALE_SECONDS = 300.0


class LeaseHeld(Exception):
    """Another live writer holds the lease; the message names it."""


def pid_alive(pid: int) -> bool:
    """Is process `pid` running on this host? A zombie is not: it has exited, unreaped.

    Pids 0 and below name no one process (`kill(-1, 0)` would reach every process we may signal).
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False  # exited between the two checks
    except OSError:
        return True  # no /proc to ask (not Linux): kill() said it exists


def describe(lease: dict, now_unix: float) -> str:
    age = now_unix - float(lease.get("heartbeat_unix", 0))
    return (
        f"holder {lease.get('holder')!r} (pid {lease.get('pid')}, attempt {lease.get('attempt')}), "
        f"last heartbeat {age:.0f}s ago"
    )


@dataclass
class Lease:
    store: Store
    holder: str
    attempt: int
    stale_seconds: float = DEFAULT_STALE_SECONDS
    clock: Callable[[], float] = time.time
    pid: int = field(default_factory=os.getpid)
    extra: dict = field(default_factory=dict)
    generation: str | None = None
    started_unix: float = 0.0
    previous: dict | None = None  # the lease we took over (a killed attempt), if any
    lost: threading.Event = field(default_factory=threading.Event)

    def _body(self) -> bytes:
        body = {
            "holder": self.holder,
            "pid": self.pid,
            "attempt": self.attempt,
            "started_unix": self.started_unix,
            "heartbeat_unix": self.clock(),
            **self.extra,
        }
        return json.dumps(body, sort_keys=True).encode()

    def can_take(self, current: dict) -> bool:
        now = self.clock()
        if now - float(current.get("heartbeat_unix", 0)) >= self.stale_seconds:
            return True
        same_host = current.get("holder") == self.holder
        return same_host and not pid_alive(int(current.get("pid", -1)))

    def check(self) -> dict | None:
        """Raise LeaseHeld if another live writer holds it; return the current lease (or None)."""
        found = self.store.read_with_generation(LEASE_NAME)
        if found is None:
            return None
        try:
            current = json.loads(found[0])
        except ValueError:
            return None  # a torn or foreign LEASE cannot name a live holder: take it
        if not self.can_take(current):
            raise LeaseHeld(
                f"job dir {self.store.url} is held by {describe(current, self.clock())}; "
                f"another trainer is writing it (it goes stale after {self.stale_seconds:.0f}s)"
            )
        return current

    def acquire(self) -> None:
        found = self.store.read_with_generation(LEASE_NAME)
        expected = ABSENT_GENERATION
        if found is not None:
            expected = found[1]
            current = self.check()
            if current is not None:
                self.previous = current
                log.warning("taking over the lease from %s", describe(current, self.clock()))
        self.started_unix = self.clock()
        try:
            self.generation = self.store.write(LEASE_NAME, self._body(), if_generation=expected)
        except PreconditionFailed:
            raise LeaseHeld(
                f"job dir {self.store.url}: another trainer took the LEASE at the same moment"
            ) from None

    def heartbeat(self, **extra) -> bool:
        """Refresh the lease; False (and ``lost`` set) if someone else took it."""
        self.extra.update(extra)
        try:
            self.generation = self.store.write(
                LEASE_NAME, self._body(), if_generation=self.generation
            )
            return True
        except PreconditionFailed:
            self.lost.set()
            return False

    def release(self) -> None:
        try:
            self.store.delete(LEASE_NAME, if_generation=self.generation)
        except PreconditionFailed:
            log.warning("the LEASE was taken by another writer; leaving it alone")


class Heartbeat(threading.Thread):
    """Refreshes the lease every ``interval_seconds`` until stopped."""

    def __init__(self, lease: Lease, interval_seconds: float, progress: Callable[[], dict]):
        super().__init__(name="lease-heartbeat", daemon=True)
        self.lease = lease
        self.interval_seconds = interval_seconds
        self.progress = progress
        self._stop_event = threading.Event()
        self.lock = threading.Lock()  # held by the runner around its own heartbeats

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=self.interval_seconds + 30)

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_seconds):
            try:
                with self.lock:
                    if not self.lease.heartbeat(**self.progress()):
                        log.error("the LEASE was taken over by another writer")
                        return
            except Exception as error:
                log.warning("lease heartbeat failed (%s); will retry", error)
