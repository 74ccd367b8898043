"""The guest side of an instance: its environment, its shutdown shims and its script runner.

Lifecycle of one boot (driven by lifecycle.Lifecycle):
  boot      → `GuestAgent.start()` runs the startup scripts in a thread, one process group each,
              output to serial port 1 in the legacy runner's line format (docs/gce-behaviour.md,
              "Startup and shutdown scripts").
  shutdown  → `GuestAgent.run_shutdown_scripts()` starts the shutdown scripts (own group), then the
              caller SIGTERMs everything else of the boot, waits for the grace window (or until all
              is gone) and SIGKILLs the rest (procs.py).
Scripts come from metadata (user input): they are written to a file and executed, never passed to
a shell as a command string. Script URLs are fetched from the storage emulator (gs://) or from
loopback only.
"""

from __future__ import annotations

import getpass
import logging
import os
import subprocess
import sys
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from localgce import procs
from localgce.serial import SerialPort

log = logging.getLogger("localgce.guest")
RUNNER_IDENT = "google_metadata_script_runner"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FETCH_TIMEOUT_SECONDS = 30.0
# After a script exits, how long to let its last output lines reach the serial port.
OUTPUT_DRAIN_SECONDS = 0.5
SHIM_NAMES = ("shutdown", "poweroff", "halt", "reboot")
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}

_SHIM = '''#!{python} -I
"""localgce guest shim for `{name}`: asks the emulator to power this instance off (or reboot).

It never touches the host: the instance's metadata server runs the guest-initiated shutdown path.
"""
import os, sys, urllib.request
args = sys.argv[1:]
if "-c" in args:  # shutdown -c: nothing is scheduled, nothing to cancel
    sys.exit(0)
name = os.path.basename(sys.argv[0])
action = "reboot" if name == "reboot" or "-r" in args or "--reboot" in args else "poweroff"
request = urllib.request.Request(
    "{metadata_url}/localgce/v1/guest/shutdown?action=" + action,
    data=b"", method="POST",
    headers={{"Metadata-Flavor": "Google", "X-Localgce-Shutdown-Secret": "{secret}"}},
)
urllib.request.urlopen(request, timeout=30).read()
print("localgce: " + action + " requested; the instance is going down", file=sys.stderr)
'''


def write_shims(bin_dir: Path, metadata_url: str, secret: str) -> None:
    """(Re)write the guest's shutdown/poweroff/halt/reboot shims for this boot's metadata URL.
    They hold the boot's shutdown secret, so they are the owner's alone (0700, never wider)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in SHIM_NAMES:
        path = bin_dir / name
        tmp = bin_dir / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
        with open(fd, "w") as fh:
            fh.write(
                _SHIM.format(
                    python=sys.executable, name=name, metadata_url=metadata_url, secret=secret
                )
            )
        os.replace(tmp, path)


def guest_env(
    *,
    disk: Path,
    bin_dir: Path,
    image_dir: str | None,
    metadata_hostport: str,
    storage_url: str,
    project: str,
    marker: str,
) -> dict[str, str]:
    """A clean environment, as on a fresh VM: nothing leaks in from the daemon's environment."""
    user = getpass.getuser()
    home = disk / "root" if os.geteuid() == 0 else disk / "home" / user
    home.mkdir(parents=True, exist_ok=True)
    tmp = disk / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    path = [str(bin_dir)]
    env = {
        "HOME": str(home),
        "USER": user,
        "LOGNAME": user,
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "TMPDIR": str(tmp),
        "GCE_METADATA_HOST": metadata_hostport,
        "GCE_METADATA_IP": metadata_hostport,
        "GCE_METADATA_MTLS_MODE": "none",
        "STORAGE_EMULATOR_HOST": storage_url,
        "GOOGLE_CLOUD_PROJECT": project,
        "LOCALGCE_ROOT": str(disk),
        "LOCALGCE_GUEST_BIN": str(bin_dir),
        "LOCALGCE_GUEST": marker,
    }
    if image_dir:
        venv = Path(image_dir) / "venv"
        path.append(str(venv / "bin"))
        env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = ":".join([*path, SYSTEM_PATH])
    return env


def _fetch(url: str, storage_url: str) -> bytes:
    """gs://bucket/object through the storage emulator; http(s) only to loopback."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "gs":
        obj = urllib.parse.quote(parsed.path.lstrip("/"), safe="")
        target = f"{storage_url}/storage/v1/b/{parsed.netloc}/o/{obj}?alt=media"
    elif parsed.scheme in ("http", "https") and parsed.hostname in ("storage.googleapis.com",):
        bucket, _, obj = parsed.path.lstrip("/").partition("/")
        target = (
            f"{storage_url}/storage/v1/b/{bucket}/o/{urllib.parse.quote(obj, safe='')}?alt=media"
        )
    elif parsed.scheme in ("http", "https") and parsed.hostname in LOOPBACK_HOSTS:
        target = url
    else:
        raise ValueError(
            f"refusing to fetch {url!r}: localgce fetches gs:// and loopback URLs only"
        )
    with urllib.request.urlopen(target, timeout=FETCH_TIMEOUT_SECONDS) as resp:  # noqa: S310
        return resp.read()


def script_argv(text: str, script: Path) -> list[str]:
    """The runner's `/bin/bash -c <file>`: a shebang picks the interpreter, else bash runs it.

    We apply the shebang ourselves (as the kernel would: the interpreter, at most one argument,
    then the file) instead of exec'ing the file we just wrote. Exec'ing it races with other
    threads' forks, which can briefly hold the file's write descriptor: ETXTBSY ("Text file
    busy") under load, seen with 30 instances booting at once.
    """
    body = text.lstrip()
    if not body.startswith("#!"):
        return ["/bin/bash", str(script)]
    interpreter_line = body.splitlines()[0][2:].strip()
    if not interpreter_line:
        return ["/bin/bash", str(script)]
    return [*interpreter_line.split(None, 1), str(script)]


class GuestAgent:
    """Runs one boot's metadata scripts. `attributes()` returns (instance, project) attributes."""

    def __init__(
        self,
        *,
        host: str,
        disk: Path,
        env: dict[str, str],
        shutdown_env: dict[str, str],
        serial: SerialPort,
        storage_url: str,
        attributes: Callable[[], tuple[dict[str, str], dict[str, str]]],
        on_group: Callable[[int], None],
    ):
        self.host = host
        self.disk = disk
        self.env = env
        self.shutdown_env = shutdown_env
        self.serial = serial
        self.storage_url = storage_url
        self.attributes = attributes
        self.on_group = on_group
        self.startup_groups: list[int] = []
        self.shutdown_groups: list[int] = []
        self.startup_done = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def _line(self, text: str) -> None:
        self.serial.line(self.host, RUNNER_IDENT, os.getpid(), text)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run_startup, name=f"guest-agent-{self.host}", daemon=True
        )
        self._thread.start()

    def join(self, timeout_seconds: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_seconds)

    def stop_running_more(self) -> None:
        """The shutdown path began: start no further startup script."""
        self._stopping.set()

    def _run_startup(self) -> None:
        try:
            self._run_kind("startup", self.startup_groups, self.env)
        except Exception:
            log.exception("startup scripts of %s failed", self.host)
        finally:
            self.startup_done.set()

    def run_shutdown_scripts(self) -> threading.Thread:
        thread = threading.Thread(
            target=self._run_kind,
            args=("shutdown", self.shutdown_groups, self.shutdown_env),
            name=f"guest-shutdown-{self.host}",
            daemon=True,
        )
        thread.start()
        return thread

    def _scripts(self, kind: str) -> list[tuple[str, str]]:
        """Wanted keys from instance attributes; only if none, project's (docs/gce-behaviour.md,
        "Startup and shutdown scripts")."""
        wanted = (f"{kind}-script", f"{kind}-script-url")
        instance_attrs, project_attrs = self.attributes()
        source = instance_attrs if any(k in instance_attrs for k in wanted) else project_attrs
        return [(key, source[key]) for key in wanted if key in source]

    def _run_kind(self, kind: str, groups: list[int], env: dict[str, str]) -> None:
        self._line(f"Starting {kind} scripts (version localgce).")
        scripts = self._scripts(kind)
        if not scripts:
            self._line(f"No {kind} scripts to run.")
        for key, value in scripts:
            if kind == "startup" and self._stopping.is_set():
                break
            self._line(f"Found {key} in metadata.")
            if key.endswith("-url"):
                try:
                    value = _fetch(value.strip(), self.storage_url).decode(errors="replace")
                except Exception as exc:
                    self._line(f"{key}: failed to download {value.strip()!r}: {exc}")
                    continue
            script_name = key.removesuffix("-url")
            status = self._run_script(script_name, value, groups, env)
            self._line(f"{script_name} exit status {status}")
        self._line(f"Finished running {kind} scripts.")

    def _run_script(self, name: str, text: str, groups: list[int], env: dict[str, str]) -> int:
        run_dir = self.disk / "run" / "google-metadata-scripts"
        run_dir.mkdir(parents=True, exist_ok=True)
        script_dir = Path(tempfile.mkdtemp(prefix="metadata-scripts", dir=run_dir))
        script = script_dir / name
        script.write_text(text.lstrip())
        script.chmod(0o755)
        argv = script_argv(text, script)
        proc = subprocess.Popen(
            argv,
            cwd=self.disk,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.track(proc.pid)
        groups.append(proc.pid)
        self.on_group(proc.pid)
        reader = threading.Thread(
            target=self._pump, args=(proc, name), name=f"serial-{self.host}", daemon=True
        )
        reader.start()
        status = proc.wait()
        procs.untrack(proc.pid)
        reader.join(timeout=OUTPUT_DRAIN_SECONDS)
        return status

    def _pump(self, proc: subprocess.Popen, name: str) -> None:
        for raw in proc.stdout:
            self._line(f"{name}: {raw.decode(errors='replace').rstrip()}")
        proc.stdout.close()
