"""A per-instance sshd on 127.0.0.1, accepting the keys in `ssh-keys` metadata like GCE's agent.

Keys come from the instance's `ssh-keys` (and legacy `sshKeys`) plus the project's, unless the
instance sets `block-project-ssh-keys=TRUE`. Lines are `user:ssh-ed25519 AAAA... comment`; only
users that exist here are given keys (GCE's agent creates users, we cannot), and when the daemon
is not root sshd runs unprivileged so only the current user can log in. Key lines are validated
(a key type, then base64) so metadata can never inject authorized_keys options such as command=.
The port is published as natIP "127.0.0.1:PORT" (emulator-only, see docs/localgce.md).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from localgce import procs
from localgce.httpserver import LOOPBACK

READY_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 3.0
START_ATTEMPTS = 3
USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
KEY_RE = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ssh-dss|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com"
    r"|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/=]+( [^\n\r]*)?$"
)


def sshd_binary() -> str | None:
    """The sshd to run, or None when openssh-server is not installed (then: no SSH)."""
    found = shutil.which("sshd") or "/usr/sbin/sshd"
    return found if os.access(found, os.X_OK) else None


def parse_ssh_keys(
    instance_attrs: dict[str, str], project_attrs: dict[str, str]
) -> dict[str, list[str]]:
    """user → authorized key lines, from metadata, with GCE's precedence rules."""
    values = [instance_attrs.get("ssh-keys", ""), instance_attrs.get("sshKeys", "")]
    if instance_attrs.get("block-project-ssh-keys", "").upper() != "TRUE":
        values += [project_attrs.get("ssh-keys", ""), project_attrs.get("sshKeys", "")]
    keys: dict[str, list[str]] = {}
    for value in values:
        for line in value.splitlines():
            user, sep, key = line.strip().partition(":")
            key = key.strip()
            if sep and USER_RE.match(user) and KEY_RE.match(key) and key not in keys.get(user, []):
                keys.setdefault(user, []).append(key)
    return keys


def _allowed_users(users) -> list[str]:
    if os.geteuid() != 0:
        me = getpass.getuser()
        return [u for u in users if u == me]
    allowed = []
    for user in users:
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        allowed.append(user)
    return allowed


def write_authorized_keys(ssh_dir: Path, keys: dict[str, list[str]]) -> None:
    """One file per user under ssh_dir/authorized_keys/, replaced atomically (sshd rereads them)."""
    target = ssh_dir / "authorized_keys"
    target.mkdir(parents=True, exist_ok=True)
    wanted = set(_allowed_users(keys))
    for existing in target.iterdir():
        if existing.name not in wanted and not existing.name.startswith("."):
            existing.unlink()
    for user in wanted:
        tmp = target / f".{user}.tmp"
        tmp.write_text("".join(f"{k}\n" for k in keys[user]))
        tmp.chmod(0o600)
        os.replace(tmp, target / user)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _quote(value: str) -> str:
    if any(c in value for c in '"\n\r'):
        raise ValueError(f"cannot put {value!r} in an sshd config")
    return f'"{value}"'


@dataclass
class Sshd:
    process: subprocess.Popen
    port: int

    @classmethod
    def start(cls, ssh_dir: Path, env: dict[str, str], session_env: dict[str, str]) -> Sshd:
        binary = sshd_binary()
        if binary is None:
            raise RuntimeError("sshd is not installed")
        ssh_dir.mkdir(parents=True, exist_ok=True)
        host_key = ssh_dir / "ssh_host_ed25519_key"
        if not host_key.exists():
            subprocess.run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "localgce",
                    "-f",
                    str(host_key),
                ],
                check=True,
                stdin=subprocess.DEVNULL,
                capture_output=True,
            )
        (ssh_dir / "authorized_keys").mkdir(exist_ok=True)
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        last_error = ""
        for _ in range(START_ATTEMPTS):
            port = _free_port()
            config = ssh_dir / "sshd_config"
            setenv = " ".join(f"{k}={_quote(v)}" for k, v in session_env.items())
            config.write_text(
                "\n".join(
                    [
                        f"Port {port}",
                        f"ListenAddress {LOOPBACK}",
                        f"HostKey {host_key}",
                        f"AuthorizedKeysFile {ssh_dir / 'authorized_keys'}/%u",
                        "PidFile none",
                        "UsePAM no",
                        "StrictModes no",
                        "PasswordAuthentication no",
                        "KbdInteractiveAuthentication no",
                        "PermitRootLogin prohibit-password",
                        "PrintMotd no",
                        "AllowTcpForwarding no",
                        "X11Forwarding no",
                        "Subsystem sftp internal-sftp",
                        f"SetEnv {setenv}",
                        "",
                    ]
                )
            )
            with open(ssh_dir / "sshd.log", "ab") as log:
                process = subprocess.Popen(
                    [binary, "-D", "-e", "-f", str(config)],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            procs.track(process.pid)
            if _wait_listening(process, port):
                return cls(process=process, port=port)
            _end(process)
            last_error = f"sshd exited with {process.returncode}; see {ssh_dir / 'sshd.log'}"
        raise RuntimeError(last_error)

    def stop(self) -> None:
        _end(self.process)


def _wait_listening(process: subprocess.Popen, port: int) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def _end(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        procs.untrack(process.pid)
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    procs.untrack(process.pid)
