"""Acceptance 4: host maintenance of a GPU VM (onHostMaintenance TERMINATE, automaticRestart)."""

from __future__ import annotations

import threading

import pytest
from lgtest import PROJECT, ROOT, ZONE, fetch, unique

STARTUP = 'echo "METADATA_HOST=$GCE_METADATA_HOST"\necho boot-done\n'


@pytest.mark.slow
def test_gpu_vm_maintenance_notice_terminate_and_restart(compute, image):
    name = unique("gpu")
    compute.insert(
        name,
        image,
        startup=STARTUP,
        spot=False,
        gpus=1,
        scheduling={"on_host_maintenance": "TERMINATE", "automatic_restart": True},
    )
    host = compute.metadata_host(name)
    path = ROOT + "instance/maintenance-event"
    _, headers, body = fetch(host, path)
    assert body == "NONE"
    notice = {}

    def watch():
        notice["answer"] = fetch(host, f"{path}?wait_for_change=true&last_etag={headers['ETag']}")

    watcher = threading.Thread(target=watch)
    watcher.start()
    first_stop = compute.get(name).last_stop_timestamp
    compute.instances.simulate_maintenance_event(project=PROJECT, zone=ZONE, instance=name).result()
    watcher.join(timeout=60)
    assert notice["answer"][2] == "TERMINATE_ON_HOST_MAINTENANCE"

    # The VM stops after the notice and comes back by itself (automaticRestart).
    text = compute.wait_serial(name, r"startup-script: boot-done", count=2)
    assert "Host maintenance: ACPI soft-off" in text
    assert text.index("Host maintenance: ACPI soft-off") < text.index("Power off.")
    compute.wait_status(name, "RUNNING")
    got = compute.get(name)
    assert got.last_stop_timestamp and got.last_stop_timestamp != first_stop
    new_host = compute.metadata_host(name)
    assert fetch(new_host, path)[2] == "NONE"
    compute.delete(name)


@pytest.mark.slow
def test_migrate_vm_sees_the_notice_and_keeps_running(compute, image):
    name = unique("migr")
    compute.insert(name, image, startup=STARTUP, spot=False)
    host = compute.metadata_host(name)
    path = ROOT + "instance/maintenance-event"
    _, headers, _ = fetch(host, path)
    compute.instances.simulate_maintenance_event(project=PROJECT, zone=ZONE, instance=name).result()
    _, headers, body = fetch(host, f"{path}?wait_for_change=true&last_etag={headers['ETag']}")
    assert body == "MIGRATE_ON_HOST_MAINTENANCE"
    _, _, body = fetch(host, f"{path}?wait_for_change=true&last_etag={headers['ETag']}")
    assert body == "NONE"  # live-migrated: back to NONE, same boot, still RUNNING
    assert compute.status(name) == "RUNNING"
    assert compute.serial(name).count("Booting") == 1
    compute.delete(name)
