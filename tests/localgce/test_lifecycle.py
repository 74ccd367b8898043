"""Acceptance 1 and the lifecycle verbs, through google-cloud-compute only."""

# ruff: noqa: S310 - every URL here is the emulator on 127.0.0.1

from __future__ import annotations

import re
import urllib.request

import pytest
from google.api_core import exceptions
from google.cloud import compute_v1, storage
from lgtest import MD_GET, PROJECT, ZONE, instance_resource, unique, wait_for

from localgce.client import extension_headers

SPOT_STARTUP = f"""#!/bin/bash
echo "METADATA_HOST=$GCE_METADATA_HOST"
echo "boot-marker preempted=$({MD_GET} instance/preempted)"
on_term() {{
  echo "SIGTERM seen preempted=$({MD_GET} instance/preempted)"
  exit 0
}}
trap on_term TERM
sleep 600 &
wait $!
"""
SHUTDOWN = f"""#!/bin/bash
echo "shutdown-script ran preempted=$({MD_GET} instance/preempted)"
"""


@pytest.mark.slow
def test_spot_preemption_round_trip(compute, image):
    name = unique("spot")
    compute.insert(name, image, startup=SPOT_STARTUP, shutdown=SHUTDOWN)
    assert compute.status(name) == "RUNNING"
    got = compute.get(name)
    assert got.scheduling.provisioning_model == "SPOT"
    assert got.scheduling.automatic_restart is False  # GCE's default for Spot, filled in
    assert got.scheduling.instance_termination_action == "STOP"

    text = compute.wait_serial(name, r"startup-script: boot-marker preempted=FALSE")
    assert re.search(
        r"\w{3} [ \d]\d \d\d:\d\d:\d\d \S+ google_metadata_script_runner\[\d+\]: "
        r"startup-script: boot-marker",
        text,
    )
    assert "Found startup-script in metadata." in text

    preempt_url = (
        f"{compute.endpoints['compute']}/compute/v1/projects/{PROJECT}/zones/{ZONE}"
        f"/instances/{name}/preempt"
    )
    preempt = urllib.request.Request(
        preempt_url, method="POST", headers=extension_headers(compute.endpoints)
    )
    with urllib.request.urlopen(preempt) as resp:
        assert b'"status": "DONE"' in resp.read()

    compute.wait_status(name, "TERMINATED")
    text = compute.serial(name)
    assert "startup-script: SIGTERM seen preempted=TRUE" in text
    assert "shutdown-script: shutdown-script ran preempted=TRUE" in text
    assert text.index("Instance was preempted.") < text.index("SIGTERM seen")

    compute.instances.start(project=PROJECT, zone=ZONE, instance=name).result()
    assert compute.status(name) == "RUNNING"
    text = compute.wait_serial(name, r"startup-script: boot-marker preempted=FALSE", count=2)
    assert text.count("Booting") == 2

    compute.delete(name)
    with pytest.raises(exceptions.NotFound):
        compute.get(name)


@pytest.mark.slow
def test_stop_start_keeps_disk_and_stop_runs_shutdown_script(compute, image):
    name = unique("std")
    startup = (
        '#!/bin/bash\necho "METADATA_HOST=$GCE_METADATA_HOST"\n'
        'echo "boots=$(( $(cat "$LOCALGCE_ROOT/boots" 2>/dev/null || echo 0) + 1 ))" '
        '| tee /dev/stderr | cut -d= -f2 > "$LOCALGCE_ROOT/boots.new"\n'
        'mv "$LOCALGCE_ROOT/boots.new" "$LOCALGCE_ROOT/boots"\n'
        'echo "home=$HOME root=$LOCALGCE_ROOT venv=$VIRTUAL_ENV"\n'
        'echo "first-on-path=$(command -v shutdown)"\n'
        'echo "project=$GOOGLE_CLOUD_PROJECT mtls=$GCE_METADATA_MTLS_MODE"\n'
    )
    compute.insert(name, image, startup=startup, shutdown="echo bye-from-shutdown", spot=False)
    compute.wait_serial(name, r"startup-script: boots=1")
    # The script's last line: every line the asserts below read is on the port by then.
    text = compute.wait_serial(name, r"startup-script: project=")
    root = re.search(r"root=(\S+)", text).group(1)
    assert re.search(rf"home={re.escape(root)}/\S+", text)
    assert re.search(r"first-on-path=\S+/guest-bin/shutdown", text)
    assert f"project={PROJECT} mtls=none" in text
    assert "venv=" in text and "/venv" in text

    compute.instances.stop(project=PROJECT, zone=ZONE, instance=name).result()
    got = compute.get(name)
    assert got.status == "TERMINATED"
    assert got.last_stop_timestamp
    assert "shutdown-script: bye-from-shutdown" in compute.serial(name)

    compute.instances.start(project=PROJECT, zone=ZONE, instance=name).result()
    compute.wait_serial(name, r"startup-script: boots=2")  # the disk survived the stop
    compute.delete(name)


@pytest.mark.slow
def test_guest_shutdown_uses_the_shim_not_the_host(compute, image):
    name = unique("guestoff")
    startup = "#!/bin/bash\necho before-shutdown\nshutdown -h now\nsleep 600 & wait $!\n"
    compute.insert(name, image, startup=startup, shutdown="echo guest-shutdown-script", spot=False)
    compute.wait_status(name, "TERMINATED")
    text = compute.serial(name)
    assert "Guest poweroff" in text
    assert "shutdown-script: guest-shutdown-script" in text
    # GCE lists the power-off as a system event of the instance; the orchestrator reads it.
    assert _system_events(compute, name) == ["compute.instances.guestTerminate"]
    compute.delete(name)


def _system_events(compute, name: str) -> list[str]:
    """The operation types zoneOperations.list shows for the instance with user "system"."""
    target = compute.get(name).id
    ops = compute.zone_operations.list(
        request=compute_v1.ListZoneOperationsRequest(
            project=PROJECT, zone=ZONE, filter=f'targetId = "{target}"',
            order_by="creationTimestamp desc",
        )
    )  # fmt: skip
    return [op.operation_type for op in ops if op.user == "system"]


def test_operation_list_filters_localgce_cannot_answer_are_refused(compute):
    request = compute_v1.ListZoneOperationsRequest(
        project=PROJECT, zone=ZONE, filter='targetId = "1" OR targetId = "2"'
    )
    with pytest.raises(exceptions.BadRequest, match="OR is not supported"):
        list(compute.zone_operations.list(request=request))


@pytest.mark.slow
def test_guest_reboot_boots_again(compute, image):
    name = unique("guestreboot")
    # The first boot marks the disk and reboots; the second one only says so.
    first = 'touch "$LOCALGCE_ROOT/rebooted"; reboot; sleep 600 & wait $!'
    startup = f'#!/bin/bash\n[ -e "$LOCALGCE_ROOT/rebooted" ] || {{ {first}; }}\necho second-boot\n'
    compute.insert(name, image, startup=startup, spot=False)
    text = compute.wait_serial(name, r"startup-script: second-boot")
    assert "Guest reboot: ACPI soft-off" in text
    assert text.count("Booting") == 2
    assert compute.status(name) == "RUNNING"
    assert _system_events(compute, name) == []  # a reboot is not a termination
    compute.delete(name)


@pytest.mark.slow
def test_spot_delete_action_deletes_on_preemption(compute, image):
    name = unique("spotdel")
    compute.insert(
        name, image, startup="sleep 600", scheduling={"instance_termination_action": "DELETE"}
    )
    # simulateMaintenanceEvent on a Spot VM is a preemption
    # (docs/gce-behaviour.md, "Host maintenance").
    compute.instances.simulate_maintenance_event(project=PROJECT, zone=ZONE, instance=name).result()

    def gone():
        try:
            compute.get(name)
        except exceptions.NotFound:
            return True
        return False

    wait_for(gone, what=f"{name} to be deleted by its preemption")


def test_exhausted_zone_fails_the_operation_with_503(compute, image, lg):
    from localgce.client import set_config

    set_config(lg, exhausted_zones=["europe-west4-b"])
    try:
        op = compute.instances.insert(
            project=PROJECT,
            zone="europe-west4-b",
            instance_resource=instance_resource(unique("full"), image),
        )
        with pytest.raises(exceptions.ServiceUnavailable) as err:
            op.result()
        assert [e.code for e in err.value.errors] == ["ZONE_RESOURCE_POOL_EXHAUSTED"]
    finally:
        set_config(lg, exhausted_zones=[])


@pytest.mark.slow
def test_operation_delay_keeps_operations_running(compute, image, lg):
    from localgce.client import set_config

    name = unique("slowop")
    set_config(lg, operation_delay_seconds=1.0)
    try:
        op = compute.instances.insert(
            project=PROJECT, zone=ZONE, instance_resource=instance_resource(name, image, spot=False)
        )
        assert op.status == compute_v1.Operation.Status.RUNNING
        waited = compute.zone_operations.wait(project=PROJECT, zone=ZONE, operation=op.name)
        assert waited.status == compute_v1.Operation.Status.DONE
        got = compute.zone_operations.get(project=PROJECT, zone=ZONE, operation=op.name)
        assert got.status == compute_v1.Operation.Status.DONE
        assert compute.status(name) == "RUNNING"
    finally:
        set_config(lg, operation_delay_seconds=0.0)
    compute.delete(name)


def test_startup_script_url_from_storage(compute, image, lg, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", lg["storage"])
    client = storage.Client(project=PROJECT)
    bucket = client.bucket(unique("scripts"))
    client.create_bucket(bucket)
    bucket.blob("boot.sh").upload_from_string("#!/bin/bash\necho from-gcs-script\n")
    name = unique("gcsurl")
    compute.insert(
        name,
        image,
        spot=False,
        extra_metadata={"startup-script-url": f"gs://{bucket.name}/boot.sh"},
    )
    compute.wait_serial(name, r"startup-script: from-gcs-script")
    compute.delete(name)


@pytest.mark.slow
def test_random_preemption_rate(compute, image, lg):
    from localgce.client import set_config

    name = unique("chaos")
    compute.insert(name, image, startup="sleep 600")
    # ~Certain within one 1-second tick: 1 - exp(-rate * 1 s / 3600 s).
    set_config(lg, preemption_rate_per_hour=36000.0)
    try:
        compute.wait_status(name, "TERMINATED")
    finally:
        set_config(lg, preemption_rate_per_hour=0.0)
    assert "Instance was preempted." in compute.serial(name)
    compute.delete(name)
