"""Acceptance 3: GCE's errors, so the official client raises its usual exceptions."""

# ruff: noqa: S310 - every URL here is the emulator on 127.0.0.1

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from google.api_core import exceptions
from google.cloud import compute_v1
from lgtest import PROJECT, ZONE, instance_resource, unique

from localgce.client import extension_headers


def test_get_missing_instance_is_not_found(compute):
    with pytest.raises(exceptions.NotFound) as err:
        compute.get("no-such-vm")
    assert f"projects/{PROJECT}/zones/{ZONE}/instances/no-such-vm" in str(err.value)


def test_duplicate_insert_is_conflict(compute, image):
    name = unique("dup")
    compute.instances.insert(
        project=PROJECT, zone=ZONE, instance_resource=instance_resource(name, image)
    ).result()
    with pytest.raises(exceptions.Conflict):
        compute.instances.insert(
            project=PROJECT, zone=ZONE, instance_resource=instance_resource(name, image)
        )
    compute.instances.delete(project=PROJECT, zone=ZONE, instance=name).result()


def test_stale_and_missing_fingerprint_is_precondition_failed(compute, image):
    name = unique("fp")
    compute.instances.insert(
        project=PROJECT, zone=ZONE, instance_resource=instance_resource(name, image)
    ).result()
    old = compute.get(name).metadata.fingerprint
    compute.instances.set_metadata(
        project=PROJECT,
        zone=ZONE,
        instance=name,
        metadata_resource=compute_v1.Metadata(
            fingerprint=old, items=[compute_v1.Items(key="a", value="1")]
        ),
    ).result()
    new = compute.get(name).metadata
    assert new.fingerprint != old and [(i.key, i.value) for i in new.items] == [("a", "1")]
    for stale in (old, None):
        with pytest.raises(exceptions.PreconditionFailed):
            compute.instances.set_metadata(
                project=PROJECT,
                zone=ZONE,
                instance=name,
                metadata_resource=compute_v1.Metadata(fingerprint=stale, items=[]),
            )
    compute.instances.delete(project=PROJECT, zone=ZONE, instance=name).result()


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        (
            {"spot": False, "gpus": 1, "scheduling": {"on_host_maintenance": "MIGRATE"}},
            "GPU+MIGRATE",
        ),
        ({"spot": False, "gpus": 1}, "GPU with the MIGRATE default"),
        ({"scheduling": {"automatic_restart": True}}, "Spot with automaticRestart"),
        (
            {"spot": False, "scheduling": {"preemptible": True, "automatic_restart": True}},
            "preemptible with automaticRestart",
        ),
    ],
)
def test_invalid_scheduling_is_bad_request(compute, image, kwargs, why):
    with pytest.raises(exceptions.BadRequest):
        compute.instances.insert(
            project=PROJECT,
            zone=ZONE,
            instance_resource=instance_resource(unique("bad"), image, **kwargs),
        )


def test_bad_name_and_unknown_image(compute, image):
    with pytest.raises(exceptions.BadRequest):
        compute.instances.insert(
            project=PROJECT, zone=ZONE, instance_resource=instance_resource("Bad_Name", image)
        )
    with pytest.raises(exceptions.NotFound):
        compute.instances.insert(
            project=PROJECT,
            zone=ZONE,
            instance_resource=instance_resource(unique("noimg"), "projects/x/global/images/nope"),
        )


def test_unsupported_method_is_405_in_gce_error_json(lg):
    # No method of the discovery document is a POST on an instance's own path.
    request = urllib.request.Request(
        f"{lg['compute']}/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances/x",
        method="POST",
        headers=extension_headers(lg),
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 405
    body = json.loads(err.value.read())
    assert body["error"]["code"] == 405 and body["error"]["errors"][0]["reason"]


def test_admin_config_round_trip_and_validation(lg):
    url = f"{lg['compute']}/localgce/v1/config"
    get = urllib.request.Request(url, headers=extension_headers(lg))
    with urllib.request.urlopen(get, timeout=10) as resp:
        knobs = json.load(resp)
    assert set(knobs) == {
        "exhaustedZones",
        "preemptionRatePerHour",
        "graceSpotSeconds",
        "graceStandardSeconds",
        "maintenanceNoticeSeconds",
        "operationDelaySeconds",
        "faults",
        "quotas",
        "zoneAccelerators",
        "storageDeniedBuckets",
        "networks",
    }
    bad = urllib.request.Request(
        url,
        data=json.dumps({"graceSpotSeconds": -1}).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **extension_headers(lg)},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(bad, timeout=10)
    assert err.value.code == 400


def test_set_scheduling_validates_and_applies(compute, image):
    spot, std = unique("ss"), unique("ss")
    for name, is_spot in ((spot, True), (std, False)):
        compute.instances.insert(
            project=PROJECT,
            zone=ZONE,
            instance_resource=instance_resource(name, image, spot=is_spot),
        ).result()
    with pytest.raises(exceptions.BadRequest):
        compute.instances.set_scheduling(
            project=PROJECT,
            zone=ZONE,
            instance=spot,
            scheduling_resource=compute_v1.Scheduling(automatic_restart=True),
        )
    assert compute.get(std).scheduling.automatic_restart is True  # GCE's default
    compute.instances.set_scheduling(
        project=PROJECT,
        zone=ZONE,
        instance=std,
        scheduling_resource=compute_v1.Scheduling(
            automatic_restart=False, on_host_maintenance="TERMINATE"
        ),
    ).result()
    got = compute.get(std).scheduling
    assert (got.automatic_restart, got.on_host_maintenance) == (False, "TERMINATE")
    for name in (spot, std):
        compute.instances.delete(project=PROJECT, zone=ZONE, instance=name).result()
