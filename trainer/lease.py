"""Single writer per job dir: the LEASE object.

A trainer takes the lease before it writes anything and refreshes ``heartbeat_unix`` from a
daemon thread. Another trainer may take over only when the lease is stale (no heartbeat for
``stale_seconds``) or its holder is this very host, in this very boot, and its process is gone
(the process was killed and the instance restarted the trainer). A process is named by its pid,
the boot id and its start time, so a pid the kernel has since given to an unrelated process
does not keep a dead holder alive. On another host, or another boot of it, only the heartbeat
age decides. Every take-over and heartbeat is a conditional write on the generation we read, so
of two racing trainers exactly one wins.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
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


BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str | None:
    """This boot's id (Linux), or None where there is none to read."""
    try:
        with open(BOOT_ID_PATH) as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def process_start_ticks(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat), or
    None when there is no such process or no /proc to ask."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            # Field 2 (the command) may hold spaces and parentheses: split after its last ")".
            fields = fh.read().rsplit(b")", 1)[1].split()
        return int(fields[19])  # fields[0] is field 3
    except (OSError, IndexError, ValueError):
        return None


def process_identity(pid: int | None = None) -> dict:
    """``{boot_id, pid_start}`` naming process ``pid`` (default: this one) beyond its pid."""
    pid = os.getpid() if pid is None else pid
    identity = {"boot_id": boot_id(), "pid_start": process_start_ticks(pid)}
    return {key: value for key, value in identity.items() if value is not None}


def process_alive(pid: int, start_ticks: int | None) -> bool:
    """Is the process that was ``pid`` with that start time still running? Without a start
    time (a record written where /proc was missing), only the pid can say."""
    if not pid_alive(pid):
        return False
    if start_ticks is None:
        return True
    current = process_start_ticks(pid)
    return current is None or current == int(start_ticks)


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

    identity: dict = field(default_factory=dict)  # boot id and start time of `pid`

    def __post_init__(self) -> None:
        if not self.identity:
            self.identity = process_identity(self.pid)

    def _body(self) -> bytes:
        body = {
            "holder": self.holder,
            "pid": self.pid,
            "attempt": self.attempt,
            "started_unix": self.started_unix,
            "heartbeat_unix": self.clock(),
            **self.identity,
            **self.extra,
            # Unique per write: a write whose reply was lost is recognised as ours on re-read.
            "nonce": secrets.token_hex(8),
        }
        return json.dumps(body, sort_keys=True).encode()

    def can_take(self, current: dict) -> bool:
        now = self.clock()
        try:
            age = now - float(current.get("heartbeat_unix", 0))
            pid = int(current.get("pid", -1))
        except (TypeError, ValueError):
            return True  # a malformed LEASE cannot name a live holder
        if age >= self.stale_seconds:
            return True
        if current.get("holder") != self.holder:
            return False
        their_boot = current.get("boot_id")
        if their_boot is None:
            # Written without a boot id (an older trainer, or no /proc): the pid is all there is.
            return not pid_alive(pid)
        if their_boot != self.identity.get("boot_id"):
            # Another boot, or another machine answering to the same name: the pid means
            # nothing here, so only the heartbeat age can free the lease.
            return False
        try:
            start = None if current.get("pid_start") is None else int(current["pid_start"])
        except (TypeError, ValueError):
            start = None
        return not process_alive(pid, start)

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
