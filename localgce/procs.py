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
from pathlib import Path

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


# --- every child the daemon starts, recorded in the state dir -----------------------------------
# fake-gcs-server and sshd do not carry the guest marker in a form /proc shows (sshd rewrites its
# environment block for its process title), so a daemon killed with SIGKILL would leave them
# listening. Each child is recorded as CHILDREN_DIR/<pid> holding its start time (field 22 of
# /proc/PID/stat, in clock ticks since boot): a sweep kills only a process whose pid *and* start
# time match, never an unrelated process that reused the pid.
CHILDREN_DIR = "children"
_children_dir: Path | None = None


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat, or None if there is no such (live) process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields[0] is field 3 (state); zombies are already dead.
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def record_children_in(state_dir: Path | None) -> None:
    """From now on `track` records children under `state_dir` (None: stop recording)."""
    global _children_dir
    _children_dir = None if state_dir is None else Path(state_dir) / CHILDREN_DIR
    if _children_dir is not None:
        _children_dir.mkdir(mode=0o700, exist_ok=True)


def track(pid: int) -> None:
    """Record a child just started (no-op outside a daemon)."""
    directory = _children_dir
    started = start_time(pid)
    if directory is None or started is None:
        return
    tmp = directory / f".{pid}.tmp"
    tmp.write_text(f"{started}\n")
    os.replace(tmp, directory / str(pid))


def untrack(pid: int) -> None:
    """The child was reaped: forget it."""
    if _children_dir is not None:
        (_children_dir / str(pid)).unlink(missing_ok=True)


def sweep_children(state_dir: Path) -> list[int]:
    """SIGKILL every recorded child of any daemon of `state_dir` that still runs (with its process
    group when it leads one); forget all records. Returns the pids killed."""
    directory = Path(state_dir) / CHILDREN_DIR
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    killed = []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            recorded = int(Path(entry.path).read_text().strip())
        except (OSError, ValueError):
            recorded = None
        if recorded is not None and start_time(pid) == recorded:
            with contextlib.suppress(OSError):
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        Path(entry.path).unlink(missing_ok=True)
    return killed
