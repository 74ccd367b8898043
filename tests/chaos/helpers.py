"""What the chaos soak needs besides the kit itself: reading /proc for the kit's leftovers
(processes and listeners), freezing a process, and the fault draw."""

from __future__ import annotations

import os
import random
from pathlib import Path

# Faults the soak draws from, and what each does to the attempt that is running.
PREEMPT = "preempt"  # Spot preemption: the trainer saves a notice checkpoint; the VM restarts
KILL = "kill"  # SIGKILL of the trainer: startup.sh starts it again in the same boot
HANG = "hang"  # SIGSTOP of the trainer: the supervisor sees no heartbeat and restarts the VM
DAEMON = "daemon"  # localgce killed with SIGKILL and started again: every VM reboots
CTRL_C = "ctrl-c"  # SIGINT to the supervisor, then `invoke watch`: the trainer never notices
CORRUPT = "corrupt"  # bytes flipped in the newest checkpoint, then SIGKILL: resumes from an older
DROP = "drop"  # one Cloud Storage reply to the trainer lost on the way: it retries, carries on
FAULTS = (PREEMPT, KILL, HANG, DAEMON, CTRL_C, CORRUPT, DROP)
# Faults that end the attempt with a crash inside the same boot: startup.sh retries a crash
# `crash-retries` (2) times per boot, then writes FAILED, so a boot takes at most 2 of them.
CRASHES_IN_BOOT = frozenset({KILL, CORRUPT})
CRASHES_PER_BOOT = 2
# Faults after which the VM boots again (the per-boot crash count starts over).
REBOOTS = frozenset({PREEMPT, HANG, DAEMON})


def draw_faults(count: int, rng: random.Random) -> list[str]:
    """``count`` faults: every fault once in a random order when ``count`` allows (so that a
    default soak meets each of them), the rest drawn uniformly; a boot never takes more crashes
    than startup.sh retries (a draw that would is drawn again, from the same generator:
    replayable)."""
    plan: list[str] = []
    crashes = 0
    first = rng.sample(FAULTS, len(FAULTS)) if count >= len(FAULTS) else []
    while len(plan) < count:
        fault = first[len(plan)] if len(plan) < len(first) else rng.choice(FAULTS)
        if fault in CRASHES_IN_BOOT and crashes >= CRASHES_PER_BOOT:
            continue  # only a uniform draw can get here: the first pass has 2 in-boot crashes
        crashes = 0 if fault in REBOOTS else crashes + (fault in CRASHES_IN_BOOT)
        plan.append(fault)
    return plan


def process_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (R, S, T, Z, ...), or None when there is no process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return None


def processes_mentioning(text: str) -> list[str]:
    """Live (not zombie) processes other than this one whose command line or environment holds
    ``text``: every process of the kit started for a state dir carries its path in one of them
    (the daemon and fake-gcs-server on the command line, guests in HOME/TMPDIR/LOCALGCE_ROOT,
    the `invoke` processes in INVOKE_SURVIVAL_LOCAL_STATE_DIR)."""
    needle = text.encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                environ = fh.read()
        except OSError:
            continue
        if (needle in cmdline or needle in environ) and process_state(int(entry.name)) not in (
            None,
            "Z",
        ):
            shown = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {shown}")
    return found


def listening_ports() -> set[int]:
    """Every TCP port something listens on (IPv4 and IPv6), from /proc/net."""
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def leftover_temp_dirs(directory: Path) -> list[str]:
    """The kit's temporary files and dirs (``survival-*``) still in ``directory``."""
    return sorted(p.name for p in directory.glob("survival-*"))
