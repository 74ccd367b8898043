"""GCE's real errors, produced on demand by localgce's `faults`, `quotas` and `zone_accelerators`
knobs, through the kit's real adaptor and placement: each row of the table in
docs/gce-behaviour.md ("Errors the orchestrator meets and what it does") ends as it says. Then
`invoke doctor` on localgce (passes; each knob shows its ✗ and `invoke train` refuses before any
insert), and a whole job through a rate-limit storm. The emulator and its image are the
end-to-end module's fixture."""

from __future__ import annotations

import json

import pytest
from polling import wait_for

from survival.config import LOCAL_PROJECT
from survival.errors import (
    ConfigError,
    PreemptedWhileCreating,
    QuotaError,
    RateLimited,
    ResourceNotReady,
    TransientError,
)
from survival.placement import place
from tests.survival.test_e2e_localgce import cloud, invoke  # noqa: F401 - the shared fixture

pytestmark = pytest.mark.slow
ZONES = ("us-central1-a", "us-central1-b", "us-central1-c")
QUOTA_LINK = "https://cloud.google.com/docs/quotas/view-manage#requesting_higher_quota"


def vm(name):
    def body(zone):
        return {
            "name": name,
            "machineType": f"zones/{zone}/machineTypes/n1-standard-4",
            "disks": [
                {
                    "boot": True,
                    "autoDelete": True,
                    "initializeParams": {
                        "sourceImage": f"projects/{LOCAL_PROJECT}/global/images/family/"
                        "gce-survival-kit"
                    },
                }
            ],
            "guestAccelerators": [
                {
                    "acceleratorType": f"zones/{zone}/acceleratorTypes/nvidia-tesla-t4",
                    "acceleratorCount": 1,
                }
            ],
            "scheduling": {
                "provisioningModel": "SPOT",
                "instanceTerminationAction": "STOP",
                "onHostMaintenance": "TERMINATE",
                "automaticRestart": False,
            },
        }

    return body


@pytest.fixture
def knobs(cloud):  # noqa: F811 - the imported fixture
    from localgce.client import set_config

    def apply(**values):
        return set_config(cloud["endpoints"], **values)

    yield apply
    apply(faults=[], quotas={}, zone_accelerators={}, storage_denied_buckets=[], networks={})


def placed(compute, name, zones=ZONES):
    lines = []
    zone = place(
        compute, zones, vm(name), lines.append, same_zone_pause_seconds=0.05, sleep=lambda s: None
    )
    return zone, lines


def fault(method, error, times=1, **extra):
    return [{"method": method, "error": error, "times": times, **extra}]


def cleanup(compute, name):
    for zone in ZONES:
        compute.delete_instance(zone, name)


def test_each_error_of_the_table_ends_as_documented(cloud, knobs):  # noqa: F811
    compute = cloud["compute"]

    # 403 rateLimitExceeded (synchronous): transient, never a configuration error.
    knobs(faults=fault("compute.instances.get", "rateLimitExceeded"))
    with pytest.raises(RateLimited):
        compute.get_instance("us-central1-a", "nobody")
    assert compute.get_instance("us-central1-a", "nobody") is None  # the next call works
    for error in ("connectionReset", "http500"):
        knobs(faults=fault("compute.instances.get", error))
        with pytest.raises(TransientError):
            compute.get_instance("us-central1-a", "nobody")

    # RESOURCE_OPERATION_RATE_EXCEEDED (Operation): retried in the same zone after a pause.
    knobs(faults=fault("compute.instances.insert", "RESOURCE_OPERATION_RATE_EXCEEDED"))
    zone, lines = placed(compute, "rate-op")
    assert zone == "us-central1-a" and "trying again" in lines[0]
    cleanup(compute, "rate-op")

    # ZONE_RESOURCE_POOL_EXHAUSTED(_WITH_DETAILS): the next zone, unchanged.
    for code in ("ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"):
        knobs(faults=fault("compute.instances.insert", code, zone="us-central1-a"))
        zone, lines = placed(compute, "full")
        assert zone == "us-central1-b" and lines == [
            f"no capacity in us-central1-a ({code}); trying the next zone"
        ]
        cleanup(compute, "full")

    # UNSUPPORTED_OPERATION: the same zone again, then the next zone.
    knobs(faults=fault("compute.instances.insert", "UNSUPPORTED_OPERATION"))
    zone, lines = placed(compute, "again")
    assert zone == "us-central1-a" and "UNSUPPORTED_OPERATION" in lines[0]
    cleanup(compute, "again")
    knobs(faults=fault("compute.instances.insert", "UNSUPPORTED_OPERATION", 3))
    zone, lines = placed(compute, "moved")
    assert zone == "us-central1-b" and "trying the next zone" in lines[-1]
    cleanup(compute, "moved")
    knobs(faults=fault("compute.instances.start", "UNSUPPORTED_OPERATION"))
    compute.insert_instance("us-central1-a", vm("starter")("us-central1-a"))
    compute.stop_instance("us-central1-a", "starter")
    with pytest.raises(PreemptedWhileCreating):
        compute.start_instance("us-central1-a", "starter")

    # RESOURCE_NOT_READY (start while STOPPING): transient; the next start works.
    knobs(faults=fault("compute.instances.start", "RESOURCE_NOT_READY"))
    with pytest.raises(ResourceNotReady):
        compute.start_instance("us-central1-a", "starter")
    compute.start_instance("us-central1-a", "starter")
    assert compute.get_instance("us-central1-a", "starter").status == "RUNNING"

    # QUOTA_EXCEEDED: stop, naming the quota, its region, its limit and usage (one T4 of
    # "starter" is in use), and where to ask for more; other zones of the region are not tried.
    knobs(faults=fault("compute.instances.insert", "QUOTA_EXCEEDED"))
    with pytest.raises(QuotaError) as err:
        placed(compute, "quota")
    text = str(err.value)
    assert isinstance(err.value, ConfigError) and "\n" not in text
    assert "quota NVIDIA_T4_GPUS in region us-central1" in text
    assert "limit 8, usage 1" in text and QUOTA_LINK in text
    assert all(compute.get_instance(z, "quota") is None for z in ZONES)
    # The same from the quotas knob: the real check at insert.
    knobs(quotas={"us-central1": {"NVIDIA_T4_GPUS": 1}})
    with pytest.raises(QuotaError, match=r"limit 1, usage 1"):
        placed(compute, "quota")
    cleanup(compute, "starter")

    # An accelerator type the zone does not offer: that zone is skipped with one line.
    knobs(quotas={}, zone_accelerators={"us-central1-a": ["nvidia-l4"]})
    zone, lines = placed(compute, "nogpu")
    assert zone == "us-central1-b"
    assert lines == ["us-central1-a does not offer nvidia-tesla-t4; skipping the zone"]
    cleanup(compute, "nogpu")


def test_doctor_passes_on_localgce(cloud, knobs):  # noqa: F811
    healthy = invoke(cloud, "doctor")
    assert healthy.returncode == 0, healthy.stdout[-3000:] + healthy.stderr[-2000:]
    assert "✗" not in healthy.stdout and "doctor: all " in healthy.stdout
    for row in ("credentials", "GPU quota us-central1", "GPU quota GPUS_ALL_REGIONS",
                "nvidia-tesla-t4 in us-central1-c", "image family gce-survival-kit",
                "write gs://survival-jobs", "network default", "egress"):  # fmt: skip
        assert row in healthy.stdout, row

    # Without an external IP, through a subnetwork of the `networks` knob with Private Google
    # Access: the same networks.get / subnetworks.get reads as on GCE, and they pass.
    knobs(
        networks={
            "ml-net": {"subnetworks": {"us-central1": {"ml-sub": {"privateIpGoogleAccess": True}}}}
        }
    )
    private = {
        "INVOKE_SURVIVAL_NETWORK": "ml-net",
        "INVOKE_SURVIVAL_SUBNETWORK": "ml-sub",
        "INVOKE_SURVIVAL_EXTERNAL_IP": "0",
    }
    inside = invoke(dict(cloud, env={**cloud["env"], **private}), "doctor")
    assert inside.returncode == 0, inside.stdout[-3000:] + inside.stderr[-2000:]
    assert "network ml-net" in inside.stdout and "subnetwork ml-sub (us-central1)" in inside.stdout


def _instances(compute, name):
    return [z for z in ZONES if compute.get_instance(z, name) is not None]


@pytest.mark.parametrize(
    ("knob", "row", "fix"),
    [
        ({"quotas": {"us-central1": {"NVIDIA_T4_GPUS": 0}}}, "GPU quota us-central1", "request"),
        (
            {"zone_accelerators": {"us-central1-b": ["nvidia-l4"]}},
            "nvidia-tesla-t4 in us-central1-b",
            "remove us-central1-b",
        ),
        ({"env": {"INVOKE_SURVIVAL_IMAGE_FAMILY": "no-such-family"}}, "image family", "bake"),
        (
            {"storage_denied_buckets": ["survival-jobs"]},
            "write gs://survival-jobs",
            "roles/storage.objectUser",
        ),
        (
            {"env": {"INVOKE_SURVIVAL_NETWORK": "no-such-net"}},
            "network no-such-net",
            "gcloud compute networks create no-such-net",
        ),
        (
            {"env": {"INVOKE_SURVIVAL_EXTERNAL_IP": "0"}},
            "subnetwork default (us-central1)",
            "--enable-private-ip-google-access",
        ),
    ],
    ids=[
        "gpu-quota-0",
        "no-accelerator",
        "missing-family",
        "bucket-read-only",
        "missing-network",
        "no-external-ip",
    ],
)
def test_doctor_shows_each_knobs_cross_and_train_refuses_before_any_insert(
    cloud,  # noqa: F811
    knobs,
    request,
    knob,
    row,
    fix,
):
    knob = dict(knob)
    env = knob.pop("env", {})
    if knob:
        knobs(**knob)
    sick = dict(cloud, env={**cloud["env"], **env})
    doctor = invoke(sick, "doctor")
    assert doctor.returncode == 1
    assert "✗" in doctor.stdout and row in doctor.stdout and fix in doctor.stdout
    assert doctor.stderr.strip().startswith("doctor: 1 of ")

    name = f"refused-{request.node.callspec.id}"
    train = invoke(sick, "train", "--branch", "exp1", "--name", name, "--no-follow")
    assert train.returncode == 1
    last = train.stderr.strip().splitlines()[-1]
    assert last.startswith("error: preflight: 1 check(s) failed") and row in last
    assert _instances(cloud["compute"], name) == []


def test_a_rate_limit_storm_still_reaches_done_with_no_lost_steps(cloud, knobs):  # noqa: F811
    from survival.backend import storage_client
    from trainer.storage import GcsStore

    name = "storm"
    started = invoke(
        cloud, "train", "--branch", "exp1", "--name", name, "--train-steps", "3000",
        "--checkpoint-steps", "500", "--no-follow",
    )  # fmt: skip
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    client = storage_client(LOCAL_PROJECT, cloud["endpoints"]["storage"])
    store = GcsStore(f"gs://survival-jobs/jobs/{name}", client=client)

    def step():
        lease = store.read("LEASE")
        return lease and json.loads(lease).get("step", 0) >= 300

    wait_for(step, 180, what="the trainer to pass step 300")
    assert invoke(cloud, "preempt", name).returncode == 0
    # 20 injected 403s while nobody supervises: the next ten reads and the next ten starts.
    knobs(
        faults=fault("compute.instances.get", "rateLimitExceeded", 10)
        + fault("compute.instances.start", "rateLimitExceeded", 10)
    )
    watched = invoke(cloud, "watch", name)
    out = watched.stdout
    assert watched.returncode == 0, out[-3000:] + watched.stderr[-2000:]
    assert "rateLimitExceeded" in out and out.count("retrying with backoff") <= 2
    summary = out[out.index(f"job {name}: DONE") :]
    assert "steps        3000" in summary and "lost steps   0" in summary
    assert "restarts     1" in summary
    assert knobs()["faults"] == []  # all twenty were served
