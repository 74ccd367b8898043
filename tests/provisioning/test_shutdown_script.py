"""startup/shutdown.sh on its own: the pid-file path that delivers SIGTERM to the trainer.

On current guest agents the startup-scripts unit runs with KillMode=process, so startup.sh's TERM
trap may never fire. Here no startup.sh runs at all: the "trainer" is an unrelated process whose
pid is only in run/survival/trainer.pid, so a signal it receives can only come from shutdown.sh.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from polling import wait_for

from tests.provisioning.helpers import REPO, SCRIPT_TIMEOUT_SECONDS

SHUTDOWN = REPO / "startup" / "shutdown.sh"
SPOT_WINDOW_SECONDS = 30
# What the script runner's start and systemd's stop of the remaining units need, at least.
MIN_MARGIN_SECONDS = 8
READY_TIMEOUT_SECONDS = 30

# A stand-in trainer: on SIGTERM it records the notice checkpoint and exits 75, as the real
# trainer does; with IGNORE it ignores SIGTERM (a trainer stuck in a long step).
TRAINER = """
import signal, sys
from pathlib import Path
saved, ready, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
def on_term(signum, frame):
    saved.write_text("notice checkpoint\\n")
    sys.exit(75)
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "IGNORE" else on_term)
ready.write_text("ready\\n")
while True:
    signal.pause()
"""


@pytest.fixture
def vm_root(tmp_path: Path) -> Path:
    root = tmp_path / "disk"
    (root / "run/survival").mkdir(parents=True)
    (root / "var/log/survival").mkdir(parents=True)
    return root


def start_trainer(vm_root: Path, mode: str) -> tuple[subprocess.Popen, Path]:
    saved, ready = vm_root / "saved", vm_root / "ready"
    # Its own session: not a child of any script shutdown.sh could reach through a process group.
    proc = subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(saved), str(ready), mode], start_new_session=True
    )
    wait_for(ready.exists, READY_TIMEOUT_SECONDS, "the stand-in trainer to install its handler")
    (vm_root / "run/survival/trainer.pid").write_text(f"{proc.pid}\n")
    return proc, saved


def run_shutdown(vm_root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LOCALGCE_ROOT"}
    env["LOCALGCE_ROOT"] = str(vm_root)
    return subprocess.run(
        ["bash", str(SHUTDOWN), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=SCRIPT_TIMEOUT_SECONDS,
        check=False,
    )


def test_pid_file_path_delivers_sigterm_and_waits_for_the_notice_checkpoint(vm_root):
    proc, saved = start_trainer(vm_root, "SAVE")
    try:
        result = run_shutdown(vm_root, "10")
        assert result.returncode == 0, result.stderr
        # shutdown.sh returned only after the trainer had saved and exited.
        assert proc.poll() == 75
        assert saved.read_text() == "notice checkpoint\n"
        log = (vm_root / "var/log/survival/startup.log").read_text()
        assert f"asking trainer {proc.pid} to save a notice checkpoint" in log
        assert f"trainer {proc.pid} stopped; its notice checkpoint is saved" in log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_trainer_that_does_not_stop_is_left_when_the_wait_ends(vm_root):
    proc, saved = start_trainer(vm_root, "IGNORE")
    try:
        result = run_shutdown(vm_root, "1")
        assert result.returncode == 0, result.stderr
        assert proc.poll() is None and not saved.exists()
        assert f"trainer {proc.pid} still running after 1s; the VM stops anyway" in result.stderr
    finally:
        proc.kill()
        proc.wait()


def test_no_pid_file_means_nothing_to_save(vm_root):
    result = run_shutdown(vm_root, "1")
    assert result.returncode == 0, result.stderr
    assert "no trainer running; nothing to save" in result.stderr


def test_the_default_wait_leaves_margin_in_the_spot_window():
    match = re.search(r"^readonly SHUTDOWN_WAIT_SECONDS=([0-9]+)$", SHUTDOWN.read_text(), re.M)
    assert match, "SHUTDOWN_WAIT_SECONDS is not a plain constant in shutdown.sh"
    assert int(match.group(1)) <= SPOT_WINDOW_SECONDS - MIN_MARGIN_SECONDS
