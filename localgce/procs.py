"""Finding and ending an instance's processes.

Every guest process gets `LOCALGCE_GUEST=<daemon tag>:<instance id>:<boot>` in its environment and
starts in a process group we record. A process that leaves its group (setsid, a daemonizing tool)
keeps the variable, so scanning /proc for the group *or* the variable finds everything a boot
started. Zombies are skipped: they are already dead and only wait to be reaped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable

MARKER_VAR = "LOCALGCE_GUEST"


def marker_bytes(value: str) -> bytes:
    return f"{MARKER_VAR}={value}".encode()


def _environ_has(pid: int, marker: bytes, prefix_only: bool) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            env = fh.read()
    except OSError:
        return False
    needle = marker if prefix_only else marker + b"\0"
    return env.startswith(needle) or (b"\0" + needle) in env


def find(pgids: Iterable[int], marker: bytes, prefix_only: bool = False) -> list[int]:
    """Live pids in any of `pgids` or whose environment holds `marker` (`prefix_only`: marker is
    a prefix of the variable's value, used to sweep every instance of one daemon)."""
    groups = set(pgids)
    me = os.getpid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] in (b"Z", b"X"):
            continue
        if int(fields[2]) in groups or _environ_has(pid, marker, prefix_only):
            found.append(pid)
    return found


def signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def signal_groups(pgids: Iterable[int], sig: int) -> None:
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def wait_gone(
    pgids: Iterable[int],
    marker: bytes,
    timeout_seconds: float,
    prefix_only: bool = False,
    max_poll_seconds: float = 0.25,
) -> list[int]:
    """Wait until nothing is left (→ []) or the timeout passes (→ the pids still alive)."""
    groups = list(pgids)
    deadline = time.monotonic() + timeout_seconds
    poll = 0.02
    while True:
        alive = find(groups, marker, prefix_only)
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
        poll = min(poll * 1.5, max_poll_seconds)


def kill_everything(pgids: Iterable[int], marker: bytes, prefix_only: bool = False) -> None:
    """SIGKILL until nothing is left (a forking process can race one round)."""
    groups = list(pgids)
    for _ in range(20):
        signal_groups(groups, signal.SIGKILL)
        alive = find(groups, marker, prefix_only)
        if not alive:
            return
        signal_all(alive, signal.SIGKILL)
        time.sleep(0.01)
