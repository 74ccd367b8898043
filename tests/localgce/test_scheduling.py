"""Spot and GPU scheduling options (preemption notice, time limits, flex-start) and the network
interface: GCE's checks as pure units, then the behaviour through google-cloud-compute."""

# ruff: noqa: S310 - every URL here is the emulator on 127.0.0.1

from __future__ import annotations

import re
import time
import urllib.request

import pytest
from google.api_core import exceptions
from google.cloud import compute_v1
from lgtest import MD_GET, PROJECT, ROOT, ZONE, fetch, instance_resource, unique, wait_for

from localgce.client import extension_headers
from localgce.errors import ApiError
from localgce.instance_resource import normalize_scheduling, parse_network_interface
from localgce.lifecycle import preemption_notice_seconds, run_limit_seconds

NOW = 1_800_000_000.0


# --- GCE's checks (pure) -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sched", "gpus", "message"),
    [
        ({"provisioningModel": "STANDARD", "preemptionNoticeDuration": {"seconds": "120"}}, False,
         "preemption notice is for Spot instances only"),
        ({"preemptible": True, "preemptionNoticeDuration": {"seconds": "120"}}, False,
         "preemption notice is for Spot instances only"),
        ({"provisioningModel": "SPOT", "preemptionNoticeDuration": {"seconds": "x"}}, False,
         "scheduling.preemptionNoticeDuration"),
        ({"provisioningModel": "SPOT", "preemptionNoticeDuration": {"seconds": 1, "nanos": -1}},
         False, "scheduling.preemptionNoticeDuration"),
        ({"maxRunDuration": {"seconds": "60"}, "terminationTime": "2027-01-01T00:00:00Z"}, False,
         "mutually exclusive"),
        ({"preemptible": True, "maxRunDuration": {"seconds": "60"}}, False,
         "cannot be set on preemptible instances"),
        ({"maxRunDuration": {"seconds": "0"}}, False, "Must be between 1s and 10368000s"),
        ({"maxRunDuration": {"seconds": str(121 * 86400)}}, False, "between 1s and 10368000s"),
        ({"terminationTime": "tomorrow"}, False, "Must be an RFC 3339 timestamp"),
        ({"terminationTime": "2020-01-01T00:00:00Z"}, False, "Must be in the future"),
        ({"provisioningModel": "FLEX_START"}, True,
         "Required field 'resource.scheduling.maxRunDuration'"),
        ({"provisioningModel": "FLEX_START", "maxRunDuration": {"seconds": str(8 * 86400)}}, True,
         "between 1s and 604800s"),
        ({"provisioningModel": "FLEX_START", "maxRunDuration": {"seconds": "60"},
          "onHostMaintenance": "MIGRATE"}, False, "FLEX_START instances only support TERMINATE"),
        ({"provisioningModel": "FLEX_START", "maxRunDuration": {"seconds": "60"},
          "automaticRestart": True}, True, "cannot be automatically restarted"),
        ({"provisioningModel": "FLEX_START", "maxRunDuration": {"seconds": "60"},
          "instanceTerminationAction": "SUSPEND"}, True, "instanceTerminationAction"),
    ],
)  # fmt: skip
def test_scheduling_checks_answer_400(sched, gpus, message):
    with pytest.raises(ApiError) as err:
        normalize_scheduling(sched, gpus, NOW)
    assert err.value.status == 400
    assert message in err.value.message


def test_scheduling_defaults_for_the_new_fields():
    flex = normalize_scheduling(
        {"provisioningModel": "FLEX_START", "maxRunDuration": {"seconds": "600"},
         "instanceTerminationAction": "DELETE"}, True, NOW,
    )  # fmt: skip
    assert flex["onHostMaintenance"] == "TERMINATE" and flex["automaticRestart"] is False
    assert flex["preemptible"] is False and flex["instanceTerminationAction"] == "DELETE"
    assert preemption_notice_seconds({"scheduling": flex}) == 0
    assert run_limit_seconds({"scheduling": flex}, NOW) == 600
    spot = normalize_scheduling(
        {"provisioningModel": "SPOT", "preemptionNoticeDuration": {"seconds": "120"},
         "terminationTime": "2027-01-15T08:00:00.5Z"}, False, NOW,
    )  # fmt: skip
    assert preemption_notice_seconds({"scheduling": spot}) == 120
    # NOW is 2027-01-15T08:00:00Z: the limit ends half a second later.
    assert run_limit_seconds({"scheduling": spot}, NOW) == pytest.approx(0.5)
    standard = normalize_scheduling({"maxRunDuration": {"seconds": 90, "nanos": 5}}, False, NOW)
    assert standard["automaticRestart"] is True and "instanceTerminationAction" not in standard
    assert run_limit_seconds({"scheduling": standard}, NOW) == pytest.approx(90)


@pytest.mark.parametrize(
    ("nic", "expected"),
    [
        ({}, {"network": "default", "subnetwork": "", "region": "", "external": False}),
        (None, {"network": "default", "subnetwork": "", "region": "", "external": True}),
        ({"network": "global/networks/vpc-1", "accessConfigs": [{"type": "ONE_TO_ONE_NAT"}]},
         {"network": "vpc-1", "subnetwork": "", "region": "", "external": True}),
        ({"network": "projects/p-1/global/networks/vpc-1",
          "subnetwork": "regions/us-central1/subnetworks/sub-a"},
         {"network": "vpc-1", "subnetwork": "sub-a", "region": "us-central1", "external": False}),
    ],
)  # fmt: skip
def test_network_interface_parse(nic, expected):
    body = {} if nic is None else {"networkInterfaces": [nic]}
    assert parse_network_interface(PROJECT, ZONE, body) == expected


@pytest.mark.parametrize(
    ("nic", "message"),
    [
        ({"network": "networks/x"}, "networkInterfaces[0].network"),
        ({"subnetwork": "regions/europe-west4/subnetworks/s"}, "must be in the instance's region"),
        ({"subnetwork": "subnetworks/s"}, "networkInterfaces[0].subnetwork"),
        ({"accessConfigs": [{"type": "DIRECT_IPV6"}]}, "accessConfigs[0].type"),
    ],
)
def test_network_interface_checks_answer_400(nic, message):
    with pytest.raises(ApiError) as err:
        parse_network_interface(PROJECT, ZONE, {"networkInterfaces": [nic]})
    assert err.value.status == 400 and message in err.value.message


# --- behaviour ------------------------------------------------------------------------------------
NOTICE_SECONDS = 5
WATCH_STARTUP = f"""#!/bin/bash
echo "METADATA_HOST=$GCE_METADATA_HOST"
on_term() {{
  echo "SIGTERM at $(date +%s.%N) preempted=$({MD_GET} instance/preempted)"
  exit 0
}}
trap on_term TERM
echo "booted preempted=$({MD_GET} instance/preempted)"
sleep 600 &
wait $!
"""


def _preempt(compute, name: str) -> None:
    url = (
        f"{compute.endpoints['compute']}/compute/v1/projects/{PROJECT}/zones/{ZONE}"
        f"/instances/{name}/preempt"
    )
    request = urllib.request.Request(
        url, method="POST", headers=extension_headers(compute.endpoints)
    )
    with urllib.request.urlopen(request) as resp:
        assert resp.status == 200


def _gone(compute, name: str) -> bool:
    try:
        compute.get(name)
    except exceptions.NotFound:
        return True
    return False


@pytest.mark.slow
def test_preemption_notice_shows_preempted_before_the_soft_off(compute, image):
    name = unique("notice")
    notice = compute_v1.Duration(seconds=NOTICE_SECONDS)
    compute.insert(
        name, image, startup=WATCH_STARTUP, scheduling={"preemption_notice_duration": notice}
    )
    got = compute.get(name).scheduling
    assert got.preemption_notice_duration.seconds == NOTICE_SECONDS
    host = compute.metadata_host(name)
    compute.wait_serial(name, r"startup-script: booted preempted=FALSE")

    asked = time.time()
    _preempt(compute, name)
    # During the notice: still RUNNING, and the metadata server already says TRUE.
    assert compute.status(name) == "RUNNING"
    assert fetch(host, ROOT + "instance/preempted")[2] == "TRUE"
    compute.wait_status(name, "TERMINATED")
    text = compute.serial(name)
    sigterm = float(re.search(r"SIGTERM at ([0-9.]+) preempted=TRUE", text).group(1))
    assert sigterm - asked >= NOTICE_SECONDS
    assert (
        text.index("Instance was preempted.")
        < text.index(f"Preemption notice: {NOTICE_SECONDS} s")
        < text.index("Preemption: ACPI soft-off")
        < text.index("SIGTERM at")
    )
    # A second boot starts with preempted FALSE again, and the notice still applies.
    compute.instances.start(project=PROJECT, zone=ZONE, instance=name).result()
    compute.wait_serial(name, r"startup-script: booted preempted=FALSE", count=2)
    compute.delete(name)


@pytest.mark.slow
def test_time_limits_stop_or_delete_without_a_preemption_flag(compute, image):
    # A standard VM with a cost cap: STOP at the end, preempted stays FALSE.
    capped = unique("capped")
    limit = compute_v1.Duration(seconds=3)
    compute.insert(
        capped, image, startup=WATCH_STARTUP, spot=False,
        scheduling={"max_run_duration": limit, "instance_termination_action": "STOP"},
    )  # fmt: skip
    # A flex-start GPU VM: DELETE at the end of its run duration; it cannot be stopped.
    flex = unique("flex")
    compute.insert(
        flex, image, startup="sleep 600", spot=False, gpus=1,
        scheduling={"provisioning_model": "FLEX_START", "max_run_duration": limit,
                    "instance_termination_action": "DELETE"},
    )  # fmt: skip
    ending = compute.get(capped).resource_status.scheduling.termination_timestamp
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}-00:00$", ending)
    with pytest.raises(exceptions.BadRequest, match="does not support stopping"):
        compute.instances.stop(project=PROJECT, zone=ZONE, instance=flex).result()

    compute.wait_status(capped, "TERMINATED")
    text = compute.serial(capped)
    assert "Instance reached the end of its time limit." in text
    assert "SIGTERM at" in text and "preempted=FALSE" in text.split("SIGTERM at", 1)[1]
    assert "Instance was preempted." not in text
    assert not compute.get(capped).resource_status.scheduling.termination_timestamp
    wait_for(lambda: _gone(compute, flex), what=f"{flex} to be deleted at its time limit")
    compute.delete(capped)


@pytest.mark.slow
def test_subnetwork_without_external_ip(compute, image):
    name = unique("noip")
    resource = instance_resource(name, image, startup='echo "METADATA_HOST=$GCE_METADATA_HOST"')
    resource.network_interfaces = [
        compute_v1.NetworkInterface(
            network="global/networks/vpc-1", subnetwork="regions/us-central1/subnetworks/sub-a"
        )
    ]
    compute.instances.insert(project=PROJECT, zone=ZONE, instance_resource=resource).result()
    nic = compute.get(name).network_interfaces[0]
    assert nic.network.endswith(f"/projects/{PROJECT}/global/networks/vpc-1")
    assert nic.subnetwork.endswith(f"/projects/{PROJECT}/regions/us-central1/subnetworks/sub-a")
    assert list(nic.access_configs) == []
    host = compute.metadata_host(name)
    status, _, body = fetch(host, ROOT + "instance/network-interfaces/0/?recursive=true&alt=json")
    assert status == 200
    assert '"access-configs"' not in body and "/subnetworks/sub-a" in body
    compute.delete(name)

    elsewhere = instance_resource(unique("badsub"), image)
    elsewhere.network_interfaces = [
        compute_v1.NetworkInterface(subnetwork="regions/europe-west4/subnetworks/sub-a")
    ]
    with pytest.raises(exceptions.BadRequest, match="must be in the instance's region"):
        compute.instances.insert(project=PROJECT, zone=ZONE, instance_resource=elsewhere)
