"""`invoke ssh-logs`: the trainer log over SSH (Fabric), else the serial console.

SSH goes to the instance's natIP with the configured user and key (localgce publishes
"127.0.0.1:PORT" as natIP for its per-instance sshd; GCE a plain IP, port 22). When SSH is not
reachable we say so and poll getSerialPortOutput instead, which shows the startup script's
output including the trainer's lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from survival.compute import Compute, InstanceInfo
from survival.errors import SshUnreachable

# The log path on the instance; on localgce sshd sets LOCALGCE_ROOT (the instance's disk dir).
# This is a constant command: nothing user-supplied is put into the remote shell line.
REMOTE_LOG = '"${LOCALGCE_ROOT:-}/var/log/survival/trainer.log"'
CONNECT_TIMEOUT_SECONDS = 10
TAIL_LINES = 200
SERIAL_POLL_SECONDS = 2.0


def tail_command(lines: int, follow: bool) -> str:
    return f"tail -n {int(lines)} {'-F ' if follow else ''}-- {REMOTE_LOG}"


def ssh_tail(
    info: InstanceInfo,
    user: str,
    key_path: Path,
    *,
    follow: bool,
    lines: int = TAIL_LINES,
    out: Callable[[str], None] = print,
    connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS,
) -> None:
    """Run tail on the trainer log through a Fabric Connection; SshUnreachable if we can't."""
    address = info.ssh_address
    if address is None:
        raise SshUnreachable(f"{info.name} has no external IP")
    import paramiko
    from fabric import Config, Connection

    # Never read the developer's ~/.ssh/config (or the system one): only what we pass counts.
    config = Config(overrides={"load_ssh_configs": False})
    host, port = address
    conn = Connection(
        host,
        user=user,
        port=port,
        config=config,
        connect_timeout=connect_timeout_seconds,
        connect_kwargs={
            "key_filename": [str(key_path)],
            "look_for_keys": False,
            "allow_agent": False,
            "banner_timeout": connect_timeout_seconds,
            "auth_timeout": connect_timeout_seconds,
        },
    )
    try:
        conn.open()
    except (TimeoutError, OSError, paramiko.SSHException) as err:
        raise SshUnreachable(f"{host}:{port}: {err}") from err
    try:
        result = conn.run(tail_command(lines, follow), hide=True, warn=True, pty=False,
                          out_stream=_LineWriter(out))  # fmt: skip
        if result.exited not in (0, None) and not result.stdout:
            out(f"(no trainer log yet on {info.name}: {result.stderr.strip()})")
    finally:
        conn.close()


class _LineWriter:
    """A file-like sink that hands complete lines to ``out``."""

    def __init__(self, out: Callable[[str], None]) -> None:
        self.out = out
        self.buffer = ""

    def write(self, text: str) -> int:
        self.buffer += text
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            self.out(line)
        return len(text)

    def flush(self) -> None:
        return None


def serial_tail(
    compute: Compute,
    info: InstanceInfo,
    *,
    follow: bool,
    out: Callable[[str], None] = print,
    poll_seconds: float = SERIAL_POLL_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
    keep_going: Callable[[], bool] = lambda: True,
) -> None:
    """Print serial port 1 output; with ``follow`` keep polling while ``keep_going()``."""
    start = 0
    while True:
        text, start = compute.serial_output(info.zone, info.name, start)
        for line in text.splitlines():
            out(line)
        if not follow or not keep_going():
            return
        sleep(poll_seconds)


def show_logs(
    compute: Compute,
    info: InstanceInfo,
    user: str,
    key_path: Path,
    *,
    follow: bool,
    out: Callable[[str], None] = print,
    connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS,
) -> str:
    """SSH first, serial console as the fallback; returns "ssh" or "serial"."""
    try:
        ssh_tail(info, user, key_path, follow=follow, out=out,
                 connect_timeout_seconds=connect_timeout_seconds)  # fmt: skip
        return "ssh"
    except SshUnreachable as err:
        out(f"ssh-logs: SSH to {info.name} is not reachable ({err}); falling back to the serial "
            "console (getSerialPortOutput)")  # fmt: skip
    serial_tail(compute, info, follow=follow, out=out)
    return "serial"
