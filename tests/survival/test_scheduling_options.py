"""Spot/GPU scheduling options and network settings: settings → Instance body (unit level).

Every body is also parsed by the SDK's own `Instance` type, which refuses unknown field names,
so what is sent is what Compute v1 defines.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from invoke import Config

from survival.config import DEFAULTS, Settings, check_env_vars, describe
from survival.errors import ConfigError
from survival.instance_spec import JobSpec, MachineSpec, build_instance, scheduling

JOB = JobSpec(
    name="flex-job", repo_url="file:///r/trainer.git", branch="exp1", commit="a" * 40,
    module="trainer.examples.sklearn_digits", job_dir="gs://b/jobs/flex-job", train_steps=10,
    checkpoint_steps=5, seed=0, hparams_json="{}",
)  # fmt: skip


def machine(provisioning="spot", gpus=1, **changes) -> MachineSpec:
    base = MachineSpec(
        zone="europe-west4-b", machine_type="n1-standard-4", gpu_type="nvidia-tesla-t4",
        gpu_count=gpus, provisioning=provisioning, image="projects/p/global/images/img-1",
        disk_size_gb=50, service_account="default", scopes=("s",),
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def sdk_round_trip(body: dict) -> dict:
    """The body as the SDK parses and sends it (unknown field names raise here)."""
    from google.cloud import compute_v1

    return json.loads(compute_v1.Instance.to_json(compute_v1.Instance.from_json(json.dumps(body))))


def settings(**survival) -> Settings:
    config = Config()
    config.load_collection({"survival": {**DEFAULTS, **survival}})
    return Settings.from_invoke(config)


# --- bodies -------------------------------------------------------------------------------------
def test_spot_with_preemption_notice():
    body = build_instance(machine(preemption_notice_seconds=120), JOB)
    assert body["scheduling"] == {
        "provisioningModel": "SPOT", "instanceTerminationAction": "STOP",
        "onHostMaintenance": "TERMINATE", "automaticRestart": False,
        "preemptionNoticeDuration": {"seconds": "120"},
    }  # fmt: skip
    sent = sdk_round_trip(body)["scheduling"]
    assert sent["preemptionNoticeDuration"] == {"seconds": "120"}


@pytest.mark.parametrize("provisioning", ["preemptible", "standard"])
def test_notice_is_for_spot_only(provisioning):
    sched = scheduling(provisioning, 1, preemption_notice_seconds=120)
    assert "preemptionNoticeDuration" not in sched


def test_spot_max_run_keeps_stop_as_the_termination_action():
    sched = scheduling("spot", 1, max_run_seconds=7200)
    assert sched["instanceTerminationAction"] == "STOP"
    assert sched["maxRunDuration"] == {"seconds": "7200"}


@pytest.mark.parametrize("gpus", [0, 1])
def test_standard_max_run_is_a_cost_cap_with_stop(gpus):
    sched = scheduling("standard", gpus, max_run_seconds=3600)
    assert sched == {
        "provisioningModel": "STANDARD",
        "onHostMaintenance": "TERMINATE" if gpus else "MIGRATE",
        "automaticRestart": True,
        "instanceTerminationAction": "STOP",
        "maxRunDuration": {"seconds": "3600"},
    }
    assert "maxRunDuration" not in scheduling("standard", gpus)
    assert "instanceTerminationAction" not in scheduling("standard", gpus)


def test_flex_start_body():
    # The A100 comes with the a2 machine type: no guestAccelerators.
    m = machine("flex-start", gpus=0, machine_type="a2-highgpu-1g", gpu_type="")
    body = build_instance(dataclasses.replace(m, max_run_seconds=4 * 3600), JOB)
    assert "guestAccelerators" not in body
    assert body["scheduling"] == {
        "provisioningModel": "FLEX_START", "instanceTerminationAction": "DELETE",
        "onHostMaintenance": "TERMINATE", "automaticRestart": False,
        "maxRunDuration": {"seconds": "14400"},
    }  # fmt: skip
    assert body["reservationAffinity"] == {"consumeReservationType": "NO_RESERVATION"}
    sent = sdk_round_trip(body)
    assert sent["scheduling"]["provisioningModel"] == "FLEX_START"
    assert sent["reservationAffinity"]["consumeReservationType"] == "NO_RESERVATION"


def test_flex_start_needs_a_run_duration_and_preemptible_refuses_one():
    with pytest.raises(ConfigError, match="flex-start needs a run duration"):
        scheduling("flex-start", 1)
    with pytest.raises(ConfigError, match="preemptible"):
        scheduling("preemptible", 1, max_run_seconds=60)
    with pytest.raises(ConfigError, match="use spot, preemptible, standard or flex-start"):
        scheduling("reserved", 1)


def test_network_defaults_match_the_old_body():
    nic = build_instance(machine(), JOB)["networkInterfaces"]
    assert nic == [
        {
            "network": "global/networks/default",
            "accessConfigs": [{"type": "ONE_TO_ONE_NAT", "name": "External NAT"}],
        }
    ]


def test_subnetwork_and_no_external_ip():
    body = build_instance(machine(network="vpc-1", subnetwork="train-sub", external_ip=False), JOB)
    assert body["networkInterfaces"] == [
        {
            "network": "global/networks/vpc-1",
            "subnetwork": "regions/europe-west4/subnetworks/train-sub",
        }
    ]
    assert sdk_round_trip(body)["networkInterfaces"][0]["accessConfigs"] == []


# --- settings -----------------------------------------------------------------------------------
def test_new_settings_defaults_and_invoke_config_rows():
    s = settings()
    assert (s.network, s.subnetwork, s.external_ip, s.max_run_hours) == ("default", "", True, 0.0)
    assert s.preemption_notice_seconds == 3
    assert s.sources["preemption_notice_seconds"] == "derived (backend local)"
    gce = settings(backend="gce", project="my-project-1")
    assert gce.preemption_notice_seconds == 120
    rows = {key: (value, source) for key, value, source in describe(s)}
    for key in ("preemption_notice_seconds", "max_run_hours", "network", "subnetwork"):
        assert key in rows
    assert rows["external_ip"][0] == "True"
    # A flag that changes the backend derives the notice again.
    assert s.with_flags(backend="gce", project="my-project-1").preemption_notice_seconds == 120


def test_max_run_hours_to_seconds_and_flex_start():
    s = settings(provisioning="flex-start", max_run_hours=0.004)
    assert s.max_run_seconds == 14
    assert settings(max_run_hours="2").max_run_seconds == 7200
    flexed = settings().with_flags(provisioning="flex-start", max_run_hours=24)
    assert flexed.max_run_seconds == 86400 and flexed.sources["max_run_hours"] == (
        "flag --max-run-hours"
    )


@pytest.mark.parametrize(
    ("survival", "message"),
    [
        ({"backend": "gce", "project": "my-project-1", "preemption_notice_seconds": 60},
         "offers a 120 s preemption notice only; use 120, or 0 for none"),
        ({"preemption_notice_seconds": 121}, "use 0 (none) to 120"),
        ({"preemption_notice_seconds": -1}, "must be >= 0"),
        ({"preemption_notice_seconds": "soon"}, "must be a whole number"),
        ({"max_run_hours": -1}, "0 (no limit) or more"),
        ({"max_run_hours": "abc"}, "must be a number of hours"),
        ({"max_run_hours": 3000}, "to 2880 h (120 days)"),
        ({"backend": "gce", "project": "my-project-1", "max_run_hours": 0.005},
         "30 s (0.008333 h) to 2880 h"),
        ({"provisioning": "flex-start"}, "flex-start needs a run duration: set --max-run-hours"),
        ({"provisioning": "flex-start", "max_run_hours": 169}, "at most 168 hours (7 days)"),
        ({"backend": "gce", "project": "my-project-1", "provisioning": "flex-start",
          "max_run_hours": 2}, "accelerator-optimized (a2-, a3-, a4-, g2-) or h4d-"),
        ({"provisioning": "preemptible", "max_run_hours": 1}, "use spot"),
        ({"network": "Default"}, "survival.network='Default' is not valid"),
        ({"subnetwork": "sub_1"}, "survival.subnetwork='sub_1' is not valid"),
        ({"subnetwork": "sub-1", "zones": ["us-central1-a", "europe-west4-b"]},
         "span europe-west4, us-central1"),
        ({"external_ip": "maybe"}, "survival.external_ip must be true or false"),
    ],
)  # fmt: skip
def test_bad_values_are_one_line(survival, message):
    with pytest.raises(ConfigError) as err:
        settings(**survival)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_flex_start_on_gce_with_an_accelerator_optimized_shape():
    s = settings(
        backend="gce", project="my-project-1", provisioning="flex-start", max_run_hours=2,
        machine_type="a3-highgpu-1g", gpu_type="nvidia-h100-80gb",
    )  # fmt: skip
    assert s.provisioning == "flex-start" and s.max_run_seconds == 7200
    assert settings(external_ip="false").external_ip is False


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("INVOKE_SURVIVAL_EXTERNAL_IP", "false", "use 1 (true) or 0 (false)"),
        ("INVOKE_SURVIVAL_MAX_RUN_HOURS", "two", "must be a number"),
    ],
)
def test_env_vars_invoke_would_misread(var, value, message):
    with pytest.raises(ConfigError) as err:
        check_env_vars({var: value})
    assert message in str(err.value)
    check_env_vars({"INVOKE_SURVIVAL_EXTERNAL_IP": "0", "INVOKE_SURVIVAL_MAX_RUN_HOURS": "1.5"})


def test_max_run_hours_flag():
    from survival.request import TrainRequest

    flags = dict(
        branch="exp1", example="sklearn_digits", hparams=(), name=None, zone=None, gpu=None,
        machine_type=None, provisioning="flex-start", follow=False, push=False, keep_alive=False,
    )  # fmt: skip
    assert TrainRequest.from_flags(max_run_hours="0.5", **flags).max_run_hours == 0.5
    assert TrainRequest.from_flags(**flags).max_run_hours is None
    for bad in ("-1", "two", "1e3"):
        with pytest.raises(ConfigError, match=r"--max-run-hours .*: use a number of hours"):
            TrainRequest.from_flags(max_run_hours=bad, **flags)


def test_train_refuses_flex_start_without_a_run_duration_before_anything(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "INVOKE_SURVIVAL_LOCAL_STATE_DIR": str(tmp_path / "state")}
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "train", "--branch", "exp1", "--provisioning",
         "flex-start"],
        cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: provisioning flex-start needs a run duration: set --max-run-hours (at most 168, "
        "flex-start VMs run for at most 7 days)"
    )
    assert not (tmp_path / "state").exists()  # no emulator started, nothing pushed
