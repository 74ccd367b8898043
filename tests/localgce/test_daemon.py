"""The daemon: CLI start/status/stop, endpoints.json, one daemon per state dir, restarts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from google.cloud import compute_v1
from lgtest import PROJECT, ZONE, instance_resource, wait_for

from localgce import daemon
from localgce.client import NotRunning, compute_client_options, load_endpoints
from trainer.lease import pid_alive


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "localgce", *args],
        capture_output=True, text=True, timeout=120, check=check,
    )  # fmt: skip


@pytest.mark.slow
def test_cli_start_status_stop_and_state_survives_restart(tmp_path):
    state_dir = tmp_path / "state"
    with pytest.raises(NotRunning):
        load_endpoints(state_dir)
    started = json.loads(cli("start", "--state-dir", str(state_dir), "--no-ssh").stdout)
    try:
        on_disk = json.loads((state_dir / "endpoints.json").read_text())
        assert on_disk == started
        assert set(started) == {"compute", "batch", "storage", "pid", "git"}
        assert started["batch"] == started["compute"]  # Batch v1 is served on the same port
        assert started["compute"].startswith("http://127.0.0.1:")
        assert started["storage"].startswith("http://127.0.0.1:")
        assert os.path.isdir(started["git"])
        assert json.loads(cli("status", "--state-dir", str(state_dir)).stdout) == started
        # A second daemon on the same state dir refuses to run (and says how to stop the first).
        second = cli("serve", "--state-dir", str(state_dir), check=False)
        assert second.returncode == 1 and "localgce stop" in second.stderr

        opts = compute_client_options(started)
        instances = compute_v1.InstancesClient(**opts)
        image_dir = tmp_path / "image"
        image_dir.mkdir()
        os.symlink(sys.prefix, image_dir / "venv")
        compute_v1.ImagesClient(**opts).insert(
            project=PROJECT,
            image_resource=compute_v1.Image(
                name="img", raw_disk=compute_v1.RawDisk(source=str(image_dir))
            ),
        ).result()
        startup = 'echo "boot on disk $(ls "$LOCALGCE_ROOT" | wc -l)"\nsleep 600\n'
        instances.insert(
            project=PROJECT,
            zone=ZONE,
            instance_resource=instance_resource(
                "survivor", f"projects/{PROJECT}/global/images/img", startup=startup
            ),
        ).result()
        before = instances.get(project=PROJECT, zone=ZONE, instance="survivor")

        def serial():
            return instances.get_serial_port_output(
                project=PROJECT, zone=ZONE, instance="survivor"
            ).contents

        wait_for(lambda: "startup-script: boot on disk" in serial(), what="first boot")

        assert cli("stop", "--state-dir", str(state_dir)).stdout.strip() == "stopped"
        assert not (state_dir / "endpoints.json").exists()
        assert cli("status", "--state-dir", str(state_dir), check=False).returncode == 1

        restarted = json.loads(cli("start", "--state-dir", str(state_dir), "--no-ssh").stdout)
        assert restarted["pid"] != started["pid"]
        instances = compute_v1.InstancesClient(**compute_client_options(restarted))
        after = instances.get(project=PROJECT, zone=ZONE, instance="survivor")
        assert after.id == before.id
        assert after.metadata.fingerprint == before.metadata.fingerprint
        assert after.status == "RUNNING"  # booted again, as after a host restart
        wait_for(lambda: serial().count("startup-script: boot on disk") == 2, what="second boot")
    finally:
        daemon.stop(state_dir)


def test_daemon_stops_itself_when_its_state_dir_is_removed(tmp_path):
    import shutil

    state_dir = tmp_path / "doomed"
    started = json.loads(cli("start", "--state-dir", str(state_dir), "--no-ssh").stdout)
    try:
        shutil.rmtree(state_dir)
        wait_for(lambda: not pid_alive(started["pid"]), what="the orphaned daemon to exit")
    finally:
        daemon.stop(state_dir)
