"""Unit tests: the route table and request validation come from Google's Compute v1 document,
and the knobs that shape faults, quotas and accelerator types are checked before they apply."""

from __future__ import annotations

import argparse
import json

import pytest

from localgce import discovery
from localgce.__main__ import _knob_args, _knobs
from localgce.config import Knobs
from localgce.daemon import knob_flags
from localgce.errors import ApiError

INSTANCES = "/compute/v1/projects/p/zones/us-central1-a/instances"
INSERT = discovery.methods()["compute.instances.insert"]


def _error(method, body=None, query=None, params=None) -> dict:
    with pytest.raises(ApiError) as err:
        discovery.validate(method, params or {}, query or {}, body)
    assert err.value.status == 400
    return err.value.body()["error"]


def test_routes_are_the_documents_method_ids():
    assert discovery.resolve("POST", INSTANCES)[0].id == "compute.instances.insert"
    method, params = discovery.resolve("POST", INSTANCES + "/vm-1/attachDisk")
    assert method.id == "compute.instances.attachDisk"
    assert params == {"project": "p", "zone": "us-central1-a", "instance": "vm-1"}
    # A literal segment wins over a parameter: family/{family} is not images/{image}/...
    family = discovery.resolve("GET", "/compute/v1/projects/p/global/images/family/f")
    assert family[0].id == "compute.images.getFromFamily"
    assert discovery.resolve("GET", "/compute/v1/projects/p/nothing/here") is None
    with pytest.raises(ApiError) as err:
        discovery.resolve("POST", INSTANCES + "/vm-1")  # the path exists, not with POST
    assert err.value.status == 405
    assert len(discovery.methods()) > 500  # the whole API, not a hand-written subset


def test_unknown_body_fields_are_refused_at_any_depth():
    error = _error(INSERT, {"name": "vm", "foo": 1})
    assert error["message"] == (
        "Invalid JSON payload received. Unknown name \"foo\" at 'instance': Cannot find field."
    )
    assert error["errors"][0]["reason"] == "invalid"
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["details"][0]["fieldViolations"][0]["field"] == "instance"
    nested = _error(INSERT, {"scheduling": {"provisioningModel": "SPOT", "cheap": True}})
    assert "Unknown name \"cheap\" at 'instance.scheduling'" in nested["message"]
    in_array = _error(INSERT, {"networkInterfaces": [{"accessConfigs": [{"port": 22}]}]})
    assert "at 'instance.network_interfaces[0].access_configs[0]'" in in_array["message"]
    # additionalProperties maps take any key; their values are still typed.
    discovery.validate(INSERT, {}, {}, {"labels": {"any-key": "v"}})
    assert "(TYPE_STRING)" in _error(INSERT, {"labels": {"k": 5}})["message"]


def test_enum_and_type_violations_are_refused():
    error = _error(INSERT, {"scheduling": {"provisioningModel": "CHEAP"}})
    assert error["message"].startswith(
        "Invalid value for field 'resource.scheduling.provisioningModel': 'CHEAP'."
    )
    assert "SPOT" in error["message"] and error["errors"][0]["reason"] == "invalid"
    assert "(TYPE_BOOL)" in _error(INSERT, {"canIpForward": "yes"})["message"]
    assert (
        "(TYPE_INT32)"
        in _error(INSERT, {"guestAccelerators": [{"acceleratorCount": "two"}]})["message"]
    )
    # int64 travels as a JSON string (numbers are accepted too); other text is not a number.
    discovery.validate(INSERT, {}, {}, {"disks": [{"diskSizeGb": "10"}, {"diskSizeGb": 20}]})
    assert "(TYPE_INT64)" in _error(INSERT, {"disks": [{"diskSizeGb": "ten"}]})["message"]
    # Everything the kit's own Spot GPU bodies use passes.
    discovery.validate(
        INSERT,
        {"project": "p", "zone": "us-central1-a"},
        {"requestId": "b5f2e2b4-2f7e-4a4e-9d7b-0c7f0d2a1f00"},
        {
            "name": "vm",
            "machineType": "zones/us-central1-a/machineTypes/n1-standard-4",
            "guestAccelerators": [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 1}],
            "scheduling": {
                "provisioningModel": "SPOT",
                "instanceTerminationAction": "STOP",
                "onHostMaintenance": "TERMINATE",
                "automaticRestart": False,
            },
            "metadata": {"items": [{"key": "startup-script", "value": "echo hi"}]},
        },
    )


def test_query_and_path_parameters_are_checked():
    serial = discovery.methods()["compute.instances.getSerialPortOutput"]
    error = _error(serial, query={"bogus": "1"})
    assert error["message"] == (
        'Invalid JSON payload received. Unknown name "bogus": Cannot bind query parameter. '
        "Field 'bogus' could not be found in request message."
    )
    assert "Must be between 1 and 4" in _error(serial, query={"port": "9"})["message"]
    assert "(TYPE_INT32)" in _error(serial, query={"port": "one"})["message"]
    discovery.validate(serial, {}, {"port": "1", "start": "0", "prettyPrint": "false"}, None)
    bad_name = _error(serial, params={"project": "p", "zone": "us-central1-a", "instance": "Vm_"})
    assert bad_name["message"].startswith("Invalid value for field 'instance': 'Vm_'.")


def test_fault_quota_and_accelerator_knobs_are_validated():
    knobs = Knobs()
    fault = {"method": "compute.instances.start", "error": "rateLimitExceeded", "times": 2}
    knobs.update_from_json({"faults": [fault], "zoneAccelerators": {"us-central1-b": []}})
    assert knobs.to_json()["faults"] == [fault]
    bad = [
        ({"faults": [{**fault, "error": "OOPS"}]}, "known errors"),
        ({"faults": [{**fault, "method": "compute.instances.fly"}]}, "discovery document"),
        ({"faults": [{**fault, "times": -1}]}, "non-negative"),
        ({"faults": [{**fault, "colour": "red"}]}, "unknown fault keys"),
        # Operation errors only exist for methods that answer an Operation.
        ({"faults": [{**fault, "method": "compute.instances.get", "error": "QUOTA_EXCEEDED"}]},
         "does not return an Operation"),
        ({"quotas": {"us-central1": {"NVIDIA_T5_GPUS": 1}}}, "unknown regional quota"),
        ({"quotas": {"global": {"NVIDIA_T4_GPUS": 1}}}, "GPUS_ALL_REGIONS"),
        ({"zoneAccelerators": {"us-central1-a": ["nvidia-tesla-t5"]}}, "nvidia-tesla-t4"),
    ]  # fmt: skip
    for payload, hint in bad:
        with pytest.raises(ApiError) as err:
            knobs.update_from_json(payload)
        assert err.value.status == 400 and hint in err.value.message, payload
    assert knobs.to_json()["faults"] == [fault]  # a refused update changes nothing


def test_json_knobs_travel_as_flags():
    faults = [{"method": "compute.instances.get", "error": "http500", "times": 1}]
    flags = knob_flags({"faults": faults, "zoneAccelerators": {"us-central1-a": ["nvidia-l4"]}})
    assert flags[0] == "--faults" and json.loads(flags[1]) == faults
    parser = argparse.ArgumentParser()
    _knob_args(parser)
    knobs = _knobs(parser.parse_args(flags))
    assert knobs == {"faults": faults, "zone_accelerators": {"us-central1-a": ["nvidia-l4"]}}
    with pytest.raises(SystemExit):
        parser.parse_args(["--quotas", "{not json"])
