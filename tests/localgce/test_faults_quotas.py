"""Through the official clients: Google's schema is enforced, unmodelled methods answer 501,
the `faults` knob fails calls in GCE's shapes, and GPU quotas and accelerator types hold."""

# ruff: noqa: S310 - every URL here is the emulator on 127.0.0.1

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import requests
from google.api_core import exceptions
from google.cloud import compute_v1
from lgtest import PROJECT, ZONE, instance_resource, unique

from localgce.client import compute_client_options, extension_headers, set_config

INSTANCES = f"/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances"


def _post(lg, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        lg["compute"] + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **extension_headers(lg)},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _config(lg) -> dict:
    request = urllib.request.Request(
        f"{lg['compute']}/localgce/v1/config", headers=extension_headers(lg)
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.load(resp)


@pytest.fixture
def knobs(lg):
    """set_config for this test; faults, quotas and accelerator types are reset afterwards."""
    try:
        yield lambda **knobs: set_config(lg, **knobs)
    finally:
        set_config(lg, faults=[], quotas={}, zone_accelerators={})


def _op_error(compute, op) -> compute_v1.Errors:
    """The first error of a zonal Operation, read back with zoneOperations.get."""
    done = compute.zone_operations.get(project=PROJECT, zone=ZONE, operation=op.name)
    assert done.status == compute_v1.Operation.Status.DONE
    return done.error.errors[0]


def test_unknown_field_and_bad_enum_get_gces_400(lg, compute, image):
    body = json.loads(compute_v1.Instance.to_json(instance_resource(unique("schema"), image)))
    status, answer = _post(lg, INSTANCES, {**body, "foo": 1})
    assert status == 400
    assert answer["error"]["message"] == (
        "Invalid JSON payload received. Unknown name \"foo\" at 'instance': Cannot find field."
    )
    assert answer["error"]["errors"][0]["reason"] == "invalid"
    # The official client sends any string for an enum field; the server checks it.
    bad = instance_resource(unique("schema"), image, scheduling={"provisioning_model": "CHEAP"})
    with pytest.raises(exceptions.BadRequest) as err:
        compute.instances.insert(project=PROJECT, zone=ZONE, instance_resource=bad)
    assert "Invalid value for field 'resource.scheduling.provisioningModel': 'CHEAP'." in str(
        err.value
    )
    for name in (body["name"], bad.name):  # nothing was created
        with pytest.raises(exceptions.NotFound):
            compute.get(name)


def test_unmodelled_method_is_501_naming_it_and_unknown_path_is_404(lg, compute):
    with pytest.raises(exceptions.MethodNotImplemented) as err:
        compute.instances.attach_disk(
            project=PROJECT,
            zone=ZONE,
            instance="any",
            attached_disk_resource=compute_v1.AttachedDisk(source="zones/z/disks/d"),
        )
    assert err.value.code == 501 and "compute.instances.attachDisk" in str(err.value)
    status, answer = _post(lg, f"/compute/v1/projects/{PROJECT}/nowhere", {})
    assert status == 404 and answer["error"]["code"] == 404


def test_synchronous_faults_count_down(lg, compute, knobs):
    knobs(faults=[{"method": "compute.instances.get", "error": "rateLimitExceeded", "times": 2}])
    with pytest.raises(exceptions.Forbidden) as err:
        compute.get("no-such-vm")
    assert err.value.errors[0]["reason"] == "rateLimitExceeded"
    assert err.value.errors[0]["domain"] == "usageLimits"
    assert "Quota exceeded for quota metric 'Read requests'" in str(err.value)
    assert _config(lg)["faults"] == [
        {"method": "compute.instances.get", "error": "rateLimitExceeded", "times": 1}
    ]
    with pytest.raises(exceptions.Forbidden):
        compute.get("no-such-vm")
    assert _config(lg)["faults"] == []
    with pytest.raises(exceptions.NotFound):  # used up: the call is served again
        compute.get("no-such-vm")

    knobs(
        faults=[
            {"method": "compute.instances.start", "error": "RESOURCE_NOT_READY", "times": 1},
            {"method": "compute.instances.list", "error": "http500", "times": 1},
        ]
    )
    with pytest.raises(exceptions.BadRequest) as err:
        compute.instances.start(project=PROJECT, zone=ZONE, instance="stopping-vm")
    assert err.value.errors[0]["reason"] == "resourceNotReady"
    assert f"projects/{PROJECT}/zones/{ZONE}/instances/stopping-vm' is not ready" in str(err.value)
    with pytest.raises(exceptions.InternalServerError):
        list(compute.instances.list(project=PROJECT, zone=ZONE))


def test_connection_reset_drops_the_connection_without_a_reply(lg, compute, knobs):
    knobs(faults=[{"method": "compute.instances.get", "error": "connectionReset", "times": 1}])
    with pytest.raises(requests.exceptions.ConnectionError):
        compute.get("no-such-vm")
    with pytest.raises(exceptions.NotFound):
        compute.get("no-such-vm")


@pytest.mark.parametrize(
    ("error", "exception"),
    [
        ("ZONE_RESOURCE_POOL_EXHAUSTED", exceptions.ServiceUnavailable),
        ("ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", exceptions.ServiceUnavailable),
        ("UNSUPPORTED_OPERATION", exceptions.BadRequest),
        ("RESOURCE_OPERATION_RATE_EXCEEDED", exceptions.Forbidden),
        ("QUOTA_EXCEEDED", exceptions.Forbidden),
    ],
)
def test_operation_faults_fail_the_operation(compute, image, knobs, error, exception):
    knobs(faults=[{"method": "compute.instances.insert", "error": error, "zone": ZONE}])
    name = unique("opfault")
    op = compute.instances.insert(
        project=PROJECT, zone=ZONE, instance_resource=instance_resource(name, image, gpus=1)
    )
    with pytest.raises(exception):
        op.result()
    first = _op_error(compute, op)
    assert first.code == error
    if error == "QUOTA_EXCEEDED":
        assert first.message == "Quota 'NVIDIA_T4_GPUS' exceeded. Limit: 8.0 in region us-central1."
        info = first.error_details[0].quota_info
        assert info.metric_name == "compute.googleapis.com/nvidia_t4_gpus"
        assert info.limit_name == "NVIDIA-T4-GPUS-per-project-region"
        assert dict(info.dimensions) == {"region": "us-central1"} and info.limit == 8.0
    with pytest.raises(exceptions.NotFound):
        compute.get(name)


def test_a_fault_for_one_zone_leaves_the_others_alone(compute, knobs):
    other = "europe-west4-a"
    knobs(faults=[{"method": "compute.instances.get", "error": "http500", "zone": other}])
    with pytest.raises(exceptions.NotFound):
        compute.get("no-such-vm", zone=ZONE)
    with pytest.raises(exceptions.InternalServerError):
        compute.get("no-such-vm", zone=other)


def test_gpu_quotas_usage_and_quota_exceeded(lg, compute, image, knobs):
    opts = compute_client_options(lg)
    regions = compute_v1.RegionsClient(**opts)
    knobs(quotas={"us-central1": {"NVIDIA_T4_GPUS": 1}, "global": {"GPUS_ALL_REGIONS": 1}})

    def quota(metric: str, resource) -> tuple[float, float]:
        [entry] = [q for q in resource.quotas if q.metric == metric]
        return entry.limit, entry.usage

    region = regions.get(project=PROJECT, region="us-central1")
    assert quota("NVIDIA_T4_GPUS", region) == (1.0, 0.0)
    assert quota("NVIDIA_L4_GPUS", region) == (8.0, 0.0)  # the default
    assert f"projects/{PROJECT}/zones/{ZONE}" in " ".join(region.zones)

    first, second = unique("gpu"), unique("gpu")
    compute.insert(first, image, gpus=1)
    try:
        assert quota("NVIDIA_T4_GPUS", regions.get(project=PROJECT, region="us-central1")) == (
            1.0,
            1.0,
        )
        project = compute.projects.get(project=PROJECT)
        assert quota("GPUS_ALL_REGIONS", project) == (1.0, 1.0)
        op = compute.instances.insert(
            project=PROJECT, zone=ZONE, instance_resource=instance_resource(second, image, gpus=1)
        )
        with pytest.raises(exceptions.Forbidden):
            op.result()
        error = _op_error(compute, op)
        assert error.code == "QUOTA_EXCEEDED"
        assert error.message == "Quota 'NVIDIA_T4_GPUS' exceeded. Limit: 1.0 in region us-central1."
        with pytest.raises(exceptions.NotFound):
            compute.get(second)

        # The global limit binds in any region.
        knobs(quotas={"global": {"GPUS_ALL_REGIONS": 1}})
        other = "us-east1-b"
        resource = instance_resource(second, image, gpus=1)
        resource.machine_type = f"zones/{other}/machineTypes/n1-standard-4"
        op = compute.instances.insert(project=PROJECT, zone=other, instance_resource=resource)
        with pytest.raises(exceptions.Forbidden):
            op.result()
        done = compute.zone_operations.get(project=PROJECT, zone=other, operation=op.name)
        assert done.error.errors[0].message == (
            "Quota 'GPUS_ALL_REGIONS' exceeded. Limit: 1.0 globally."
        )
        info = done.error.errors[0].error_details[0].quota_info
        assert dict(info.dimensions) == {"global": "global"}
        assert info.limit_name == "GPUS-ALL-REGIONS-per-project"

        # A start is held to the quota too: the stopped VM uses none, and finds none left.
        compute.instances.stop(project=PROJECT, zone=ZONE, instance=first).result()
        knobs(quotas={"us-central1": {"NVIDIA_T4_GPUS": 0}})
        op = compute.instances.start(project=PROJECT, zone=ZONE, instance=first)
        with pytest.raises(exceptions.Forbidden):
            op.result()
        assert _op_error(compute, op).code == "QUOTA_EXCEEDED"
        assert compute.status(first) == "TERMINATED"
    finally:
        compute.delete(first)


def test_accelerator_types_per_zone_and_insert_where_not_offered(lg, compute, image, knobs):
    accelerator_types = compute_v1.AcceleratorTypesClient(**compute_client_options(lg))
    everywhere = {t.name for t in accelerator_types.list(project=PROJECT, zone=ZONE)}
    assert {"nvidia-tesla-t4", "nvidia-l4", "nvidia-tesla-v100"} <= everywhere

    zone = "us-central1-f"
    knobs(zone_accelerators={zone: ["nvidia-l4"]})
    listed = list(accelerator_types.list(project=PROJECT, zone=zone))
    assert [t.name for t in listed] == ["nvidia-l4"]
    assert listed[0].zone.endswith(f"projects/{PROJECT}/zones/{zone}")
    with pytest.raises(exceptions.NotFound):
        accelerator_types.get(project=PROJECT, zone=zone, accelerator_type="nvidia-tesla-t4")

    resource = instance_resource(unique("noaccel"), image, gpus=1)
    resource.machine_type = f"zones/{zone}/machineTypes/n1-standard-4"
    with pytest.raises(exceptions.BadRequest) as err:
        compute.instances.insert(project=PROJECT, zone=zone, instance_resource=resource)
    assert err.value.errors[0]["reason"] == "badRequest"
    assert (
        f"The resource 'projects/{PROJECT}/zones/{zone}/acceleratorTypes/nvidia-tesla-t4' "
        "was not found"
    ) in str(err.value)
    with pytest.raises(exceptions.NotFound):
        compute.get(resource.name, zone=zone)
