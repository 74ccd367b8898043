"""Small pieces without a daemon: serial offsets, the list filter grammar, knob names, process
liveness, and the stop path on records whose guest is not running."""

from __future__ import annotations

import argparse
import os
import subprocess

import pytest
from lgtest import wait_for

from localgce import daemon
from localgce.__main__ import _knob_args, _knobs
from localgce.config import Knobs, camel, knobs_json, snake
from localgce.daemon import knob_flags
from localgce.errors import ApiError
from localgce.instance_resource import InstanceSpec
from localgce.lifecycle import Lifecycle, after_preemption
from localgce.listing import list_response, matches, parse_filter
from localgce.serial import SerialPort
from localgce.state import InstanceKey, Status, Store
from trainer.lease import pid_alive


def test_serial_offsets_survive_trimming(tmp_path):
    changes = []
    port = SerialPort(tmp_path / "serial.log", limit_bytes=100, on_base_change=changes.append)
    port.write(b"a" * 150)
    data, start, nxt = port.read(0)
    assert (len(data), start, nxt) == (100, 50, 150)  # only the last limit_bytes are answered
    port.write(b"b" * 60)  # file grows past 2x the limit → trimmed, base moves
    assert changes and changes[-1] == port.base
    data, start, nxt = port.read(150)
    assert (data, start, nxt) == (b"b" * 60, 150, 210)
    assert port.read(210) == (b"", 210, 210)
    reopened = SerialPort(tmp_path / "serial.log", base=port.base, limit_bytes=100)
    assert reopened.read(150)[0] == b"b" * 60  # the base persisted in state is enough


def test_filter_grammar():
    vm = {
        "name": "train-1",
        "status": "RUNNING",
        "labels": {"job": "exp1"},
        "scheduling": {"preemptible": True},
    }
    assert matches(vm, parse_filter('name = "train-1"'))
    assert matches(vm, parse_filter("(status = RUNNING) AND (labels.job = exp1)"))
    assert matches(vm, parse_filter("name eq 'train-.*' scheduling.preemptible = true"))
    assert not matches(vm, parse_filter("status != RUNNING"))
    assert matches(vm, parse_filter("name = train-*"))
    with pytest.raises(ApiError):
        parse_filter("status = RUNNING OR status = STOPPING")


def test_paging_tokens_walk_every_item():
    items = [{"name": f"i{n}"} for n in range(5)]
    seen, token = [], ""
    while True:
        page = list_response("k", items, {"maxResults": "2", "pageToken": token}, "self")
        seen += [i["name"] for i in page["items"]]
        token = page.get("nextPageToken")
        if not token:
            break
    assert seen == [f"i{n}" for n in range(5)]


def test_script_argv_applies_the_shebang_like_the_kernel(tmp_path):
    from localgce.guest import script_argv

    script = tmp_path / "startup-script"
    assert script_argv("echo hi\n", script) == ["/bin/bash", str(script)]
    assert script_argv("  \n#!/usr/bin/env python3\nprint(1)\n", script) == [
        "/usr/bin/env",
        "python3",
        str(script),
    ]
    # Everything after the interpreter is one argument, as on Linux.
    assert script_argv("#!/bin/bash -e -u\n", script) == ["/bin/bash", "-e -u", str(script)]
    assert script_argv("#!\n", script) == ["/bin/bash", str(script)]


def test_pid_alive_is_false_for_zombies_and_non_pids():
    assert pid_alive(os.getpid())
    # kill(0 or -1, 0) would reach a whole group or every process: never "one live process".
    assert not pid_alive(0)
    assert not pid_alive(-1)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert pid_alive(sleeper.pid)
    finally:
        sleeper.kill()
    # Not reaped yet (we hold the Popen): a zombie, which has exited and is not alive.
    wait_for(lambda: not pid_alive(sleeper.pid), 10, "the killed sleeper to be a zombie")
    assert os.path.exists(f"/proc/{sleeper.pid}")
    sleeper.wait()


def test_knob_names_convert_one_way_for_every_caller():
    assert camel("grace_spot_seconds") == "graceSpotSeconds" == camel("graceSpotSeconds")
    assert snake("graceSpotSeconds") == "grace_spot_seconds" == snake("grace_spot_seconds")
    assert camel("numeric-project-id", sep="-") == "numericProjectId"
    assert knobs_json({"exhausted_zones": ["z"], "operationDelaySeconds": 1}) == {
        "exhaustedZones": ["z"],
        "operationDelaySeconds": 1,
    }
    # daemon.start takes the Knobs field names and the JSON names alike.
    flags = ["--grace-spot-seconds", "5", "--exhausted-zones", "a,b"]
    assert knob_flags({"grace_spot_seconds": 5, "exhausted_zones": ["a", "b"]}) == flags
    assert knob_flags({"graceSpotSeconds": 5, "exhaustedZones": ["a", "b"]}) == flags
    with pytest.raises(daemon.DaemonError, match="unknown localgce knob"):
        knob_flags({"grace_seconds": 5})
    # The CLI's flags come back as the same names, and the config takes them.
    parser = argparse.ArgumentParser()
    _knob_args(parser)
    knobs = _knobs(parser.parse_args(["--grace-spot-seconds", "5", "--exhausted-zones", "a,b"]))
    assert knobs == {"exhausted_zones": ["a", "b"], "grace_spot_seconds": 5.0}
    config = Knobs()
    config.update_from_json(knobs_json(knobs))
    assert (config.grace_spot_seconds, config.exhausted_zones) == (5.0, ["a", "b"])


def _lifecycle_with_one_vm(tmp_path, **scheduling) -> tuple[Lifecycle, InstanceKey]:
    """A Lifecycle and a RUNNING Spot record in its 2nd boot; no guest process runs."""
    lifecycle = Lifecycle(Store(tmp_path), tmp_path, "http://127.0.0.1:9", ssh_enabled=False)
    spec = InstanceSpec.parse(
        "p",
        "us-central1-a",
        {
            "name": "vm",
            "machineType": "zones/us-central1-a/machineTypes/n1-standard-4",
            "scheduling": {"provisioningModel": "SPOT", **scheduling},
            "disks": [{"boot": True, "initializeParams": {"sourceImage": "img"}}],
        },
    )
    rec = lifecycle.create(spec, {"_dir": str(tmp_path), "_project": "p", "name": "img"})
    rec.resource["status"] = Status.RUNNING
    rec.guest["boot"] = 2
    return lifecycle, spec.key


def test_a_stop_decided_for_one_boot_never_stops_the_next(tmp_path):
    lifecycle, key = _lifecycle_with_one_vm(tmp_path)
    lifecycle._stop_boot(key, 1, "Preemption", after_preemption)
    assert lifecycle.store.instances[key].status == Status.RUNNING
    lifecycle._stop_boot(key, 2, "Preemption", after_preemption)
    rec = lifecycle.store.instances[key]
    assert rec.status == Status.TERMINATED and rec.resource["lastStopTimestamp"]
    assert b"Preemption: ACPI soft-off" in lifecycle.serial(key).read(0)[0]


def test_preemption_with_delete_action_removes_the_instance(tmp_path):
    lifecycle, key = _lifecycle_with_one_vm(tmp_path, instanceTerminationAction="DELETE")
    lifecycle._stop_boot(key, 2, "Preemption", after_preemption)
    assert key not in lifecycle.store.instances


def test_preempt_or_maintenance_of_a_vanished_instance_is_404(tmp_path):
    lifecycle = Lifecycle(Store(tmp_path), tmp_path, "http://127.0.0.1:9", ssh_enabled=False)
    gone = InstanceKey("p", "us-central1-a", "gone")
    for verb in (lifecycle.preempt, lifecycle.simulate_maintenance):
        with pytest.raises(ApiError) as err:
            verb(gone)
        assert err.value.status == 404
