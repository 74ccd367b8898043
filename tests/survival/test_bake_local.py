"""Acceptance 2: a real local bake through `invoke bake-image --backend local`, then a VM from it.

Runs the venv's invoke as a subprocess (Packer 1.6.6, the null builder, shell-local steps: the
Python environment into a new image directory, cleanup, verify, registration with localgce), then
boots an instance from the image family and reads its startup script's serial output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.cloud import compute_v1
from polling import wait_for

from localgce import daemon
from localgce.client import compute_client_options, load_endpoints
from survival import bake
from survival.backend import compute_for

REPO = Path(__file__).resolve().parents[2]
FAMILY = "bake-test"
ZONE = "us-central1-a"
BAKE_TIMEOUT_SECONDS = 420
BOOT_TIMEOUT_SECONDS = 120

# Runs as the VM's startup script, from an empty directory so nothing comes from a checkout.
STARTUP = """#!/bin/bash
set -u
cd "$TMPDIR"
echo "python-is=$(command -v python)"
python -c 'import tensorflow as tf, sklearn, trainer as t
print("imports-ok", tf.__version__, sklearn.__version__, t.__file__)'
python -m trainer.examples.sklearn_digits --help > "$TMPDIR/help.txt"
echo "trainer-help-rc=$?"
head -1 "$TMPDIR/help.txt"
"""


def wait_for_serial(instances, name, pattern, timeout_seconds):
    seen = [""]

    def matching_text():
        seen[0] = instances.get_serial_port_output(
            project=bake.LOCAL_PROJECT, zone=ZONE, instance=name
        ).contents
        return seen[0] if re.search(pattern, seen[0]) else None

    return wait_for(
        matching_text,
        timeout_seconds,
        what=lambda: f"{pattern!r} on {name}'s serial port:\n{seen[0]}",
        first_delay_seconds=0.2,
        max_delay_seconds=2.0,
    )


@pytest.mark.slow
def test_local_bake_registers_an_image_a_vm_runs_the_trainer_from(tmp_path):
    state_dir = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_SURVIVAL_")}
    env["INVOKE_SURVIVAL_LOCAL_STATE_DIR"] = str(state_dir)
    invoke = Path(sys.executable).parent / "invoke"
    started = time.monotonic()
    try:
        result = subprocess.run(
            [str(invoke), "bake-image", "--backend", "local", "--family", FAMILY],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=BAKE_TIMEOUT_SECONDS,
            check=False,
        )
        bake_seconds = time.monotonic() - started
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        match = re.search(
            rf"image ({FAMILY}-\d{{14}}) \(family {FAMILY}\) baked on local", result.stdout
        )
        assert match, result.stdout[-2000:]
        name = match.group(1)
        print(f"local bake took {bake_seconds:.0f} s")

        # The image directory: a fresh venv holding the trainer package, scrubbed and verified.
        image_dir = state_dir.resolve() / "images" / name
        site = next((image_dir / "venv" / "lib").glob("python3*/site-packages"))
        assert (site / "trainer" / "examples" / "sklearn_digits.py").exists()
        assert not (image_dir / "venv").is_symlink()
        assert "all checks passed" in result.stdout + result.stderr

        # The manifest post-processor recorded it.
        manifest = json.loads((state_dir / "bake" / bake.MANIFEST_NAME).read_text())
        assert manifest["builds"][-1]["custom_data"]["image_name"] == name

        # Registered with localgce, the newest of its family.
        endpoints = load_endpoints(state_dir)
        options = compute_client_options(endpoints)
        newest = compute_for(bake.LOCAL_PROJECT, endpoints).newest_image(FAMILY)
        assert newest is not None and newest.name == name
        # The kit commit it was baked from (others may commit meanwhile: any commit of this repo).
        commit = newest.labels["survival-kit-commit"]
        assert re.fullmatch(r"[0-9a-f]{40}", commit)
        assert (
            subprocess.run(["git", "cat-file", "-e", commit], cwd=REPO, check=False).returncode == 0
        )

        # A VM booted from the family runs the trainer from the image's environment.
        instances = compute_v1.InstancesClient(**options)
        vm = compute_v1.Instance(
            name="bake-check",
            machine_type=f"zones/{ZONE}/machineTypes/n1-standard-4",
            disks=[
                compute_v1.AttachedDisk(
                    boot=True,
                    auto_delete=True,
                    initialize_params=compute_v1.AttachedDiskInitializeParams(
                        source_image=f"projects/{bake.LOCAL_PROJECT}/global/images/family/{FAMILY}"
                    ),
                )
            ],
            metadata=compute_v1.Metadata(
                items=[compute_v1.Items(key="startup-script", value=STARTUP)]
            ),
        )
        instances.insert(project=bake.LOCAL_PROJECT, zone=ZONE, instance_resource=vm).result()
        text = wait_for_serial(
            instances, "bake-check", r"trainer-help-rc=\d+", BOOT_TIMEOUT_SECONDS
        )
        venv_bin = image_dir / "venv" / "bin"
        assert f"startup-script: python-is={venv_bin / 'python'}" in text
        imports = re.search(r"startup-script: imports-ok (\S+) (\S+) (\S+)", text)
        assert imports, text
        assert imports.group(3).startswith(str(site / "trainer"))
        assert "startup-script: trainer-help-rc=0" in text
        assert "startup-script: usage: " in text
    finally:
        daemon.stop(state_dir)
