"""The localgce daemon: `serve` in the foreground, `start` (daemonized), `stop`, `status`.

`serve` holds an exclusive lock on STATE_DIR/daemon.lock for its lifetime (one daemon per state
dir), makes the state dir private (0700), writes a new API token to STATE_DIR/token (0600), starts
fake-gcs-server and the compute endpoint on 127.0.0.1, reboots instances that were RUNNING, and
only then writes STATE_DIR/endpoints.json. SIGTERM/SIGINT stop every instance's processes,
fake-gcs-server, and remove endpoints.json. Every child process is recorded (procs.py) so that
the next start or stop ends what a daemon killed with SIGKILL left behind.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import fields
from pathlib import Path

from localgce import auth, procs
from localgce.app import build_router
from localgce.config import JSON_KNOBS, LIST_KNOBS, Knobs, knob_flag, knobs_json, snake
from localgce.httpserver import start_server
from localgce.lifecycle import Lifecycle, daemon_tag
from localgce.state import Store
from localgce.storage import start_storage
from localgce.storage_guard import store_policy
from trainer.lease import pid_alive  # the one liveness check; trainer never imports localgce

log = logging.getLogger("localgce")
ENDPOINTS_FILE = "endpoints.json"
LOCK_FILE = "daemon.lock"
LOG_FILE = "localgce.log"
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 60.0
HEALTH_TIMEOUT_SECONDS = 2.0
# A daemon whose state dir was deleted (rm -rf by a test) would otherwise run forever.
STATE_DIR_CHECK_SECONDS = 2.0


class DaemonError(RuntimeError):
    """A daemon could not be started or stopped; the message says what to do."""


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w") as fh:
        fh.write(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def serve(state_dir: Path, knobs: dict | None = None, ssh_enabled: bool = True) -> int:
    """Run in the foreground until SIGTERM/SIGINT. `knobs` (snake_case or camelCase names)
    override the saved ones."""
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Disks, shims (with their shutdown secrets), the token: nobody else's business.
    state_dir.chmod(0o700)
    lock = open(state_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held for the daemon's lifetime
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DaemonError(
            f"another localgce daemon is serving {state_dir}; stop it with "
            f"`python -m localgce stop --state-dir {state_dir}`"
        ) from None
    (state_dir / "git").mkdir(exist_ok=True)
    # A daemon killed with SIGKILL leaves its children behind: end them before starting new ones.
    swept = procs.sweep_children(state_dir)
    if swept:
        log.info("killed %d processes left by an earlier daemon: %s", len(swept), swept)
    procs.record_children_in(state_dir)
    token = auth.new_token()
    auth.write_token(state_dir, token)
    store = Store(state_dir)
    store.load()
    if knobs:
        with store.lock:
            store.knobs.update_from_json(knobs_json(knobs))
    with store.lock:
        store.commit()

    stop_event = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
    signal.signal(signal.SIGINT, lambda *_: stop_event.set())

    storage = start_storage(
        state_dir / "storage",
        log_path=state_dir / "fake-gcs-server.log",
        policy=store_policy(store),
    )
    endpoints = {"storage": storage.url, "pid": os.getpid(), "git": str(state_dir / "git")}
    lifecycle = Lifecycle(store, state_dir, storage.url, ssh_enabled=ssh_enabled)
    compute = None
    router = None
    try:
        router = build_router(store, lifecycle, endpoints)
        compute = start_server(auth.ApiGate(router.dispatch, store, token), name="compute")
        endpoints["compute"] = compute.url
        router.batch.delete_leftover_vms()  # Batch jobs do not outlive a daemon
        lifecycle.resume()
        _write_json_atomic(
            state_dir / ENDPOINTS_FILE,
            {
                "compute": compute.url,
                # Cloud Batch v1 is served on the same port: the URL for BatchServiceClient.
                "batch": compute.url,
                "storage": storage.url,
                "pid": os.getpid(),
                "git": endpoints["git"],
            },
        )
        log.info(
            "localgce serving %s (compute %s, storage %s)", state_dir, compute.url, storage.url
        )
        while not stop_event.wait(STATE_DIR_CHECK_SECONDS):
            if not _still_owns(state_dir, lock):
                log.warning("state dir %s was removed or replaced: stopping", state_dir)
                break
    finally:
        log.info("localgce stopping")
        (state_dir / ENDPOINTS_FILE).unlink(missing_ok=True)
        if router is not None and router.batch is not None:
            router.batch.close()
        lifecycle.close()
        if compute is not None:
            compute.stop()
        storage.stop()
        procs.sweep_children(state_dir)
        procs.record_children_in(None)
        lock.close()
    return 0


def _still_owns(state_dir: Path, lock) -> bool:
    try:
        return os.stat(state_dir / LOCK_FILE).st_ino == os.fstat(lock.fileno()).st_ino
    except FileNotFoundError:
        return False


# --- the controlling side: start / stop / status ------------------------------------------------
def read_endpoints(state_dir: Path) -> dict | None:
    try:
        return json.loads((Path(state_dir) / ENDPOINTS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None


def read_token(state_dir: Path) -> str | None:
    """The API token of the daemon serving `state_dir` (None before its first start)."""
    return auth.read_token(Path(state_dir))


def healthy(endpoints: dict, token: str | None = None) -> bool:
    """Does the daemon of `endpoints` answer? `token`: its API token (default: read from the
    state dir that holds endpoints["git"])."""
    if token is None:
        token = read_token(Path(endpoints.get("git", ".")).parent) or ""
    request = urllib.request.Request(  # noqa: S310 - our own loopback URL
        f"{endpoints.get('compute')}/localgce/v1/health",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(  # noqa: S310 - our own loopback URL
            request, timeout=HEALTH_TIMEOUT_SECONDS
        ) as resp:
            return resp.status == 200 and json.load(resp).get("pid") == endpoints.get("pid")
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return False


def status(state_dir: Path) -> dict | None:
    """The endpoints of a healthy daemon serving `state_dir`, or None."""
    endpoints = read_endpoints(state_dir)
    if (
        endpoints
        and pid_alive(endpoints.get("pid", 0))
        and healthy(endpoints, read_token(state_dir) or "")
    ):
        return endpoints
    return None


def knob_flags(knobs: dict) -> list[str]:
    """snake_case (`config.Knobs` fields) or camelCase knobs → `serve` flags."""
    known = {f.name for f in fields(Knobs)}
    flags = []
    for key, value in knobs.items():
        name = snake(key)
        if name not in known:
            raise DaemonError(f"unknown localgce knob {key!r}; known: {sorted(known)}")
        if name in LIST_KNOBS:
            value = ",".join(value)
        flags += [knob_flag(name), json.dumps(value) if name in JSON_KNOBS else str(value)]
    return flags


def start(
    state_dir: Path,
    knobs: dict | None = None,
    ssh_enabled: bool = True,
    timeout_seconds: float = START_TIMEOUT_SECONDS,
) -> dict:
    """Daemonize `serve` (new session, survives the caller); return its endpoints once listening."""
    state_dir = Path(state_dir).resolve()
    running = status(state_dir)
    if running:
        return running
    state_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "localgce",
        "serve",
        "--state-dir",
        str(state_dir),
        *knob_flags(knobs or {}),
    ]
    if not ssh_enabled:
        argv.append("--no-ssh")
    with open(state_dir / LOG_FILE, "ab") as log_file:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(state_dir),
        )
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        endpoints = read_endpoints(state_dir)
        if (
            endpoints
            and endpoints.get("pid") == process.pid
            and healthy(endpoints, read_token(state_dir) or "")
        ):
            return endpoints
        if process.poll() is not None:
            raise DaemonError(
                f"localgce exited with status {process.returncode} while starting; "
                f"see {state_dir / LOG_FILE}"
            )
        time.sleep(0.05)
    process.terminate()
    raise DaemonError(
        f"localgce did not start within {timeout_seconds:g} s; see {state_dir / LOG_FILE}"
    )


def stop(state_dir: Path, timeout_seconds: float = STOP_TIMEOUT_SECONDS) -> bool:
    """Stop the daemon serving `state_dir` and every instance process. False if none was running."""
    state_dir = Path(state_dir).resolve()
    endpoints = read_endpoints(state_dir)
    pid = (endpoints or {}).get("pid", 0)
    was_running = pid_alive(pid) and _is_localgce(pid)
    if was_running:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_seconds
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            # Its session holds fake-gcs-server too; instance processes have their own sessions.
            procs.signal_groups([pid], signal.SIGKILL)
    # Whatever happened to the daemon, no guest process of this state dir may survive it.
    tag = daemon_tag(state_dir)
    procs.kill_everything([], procs.marker_bytes(f"{tag}:"), prefix_only=True)
    if not pid_alive(pid):
        procs.sweep_children(state_dir)
    if not pid_alive(pid):
        (state_dir / ENDPOINTS_FILE).unlink(missing_ok=True)
    return was_running


def _is_localgce(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"localgce" in fh.read()
    except OSError:
        return False
