"""`invoke doctor`'s checks against a fake project: each ✗ says what is wrong and how to fix it,
and `invoke train` refuses on any ✗ before anything is pushed or created."""

from __future__ import annotations

from pathlib import Path

import pytest
from invoke import Config, Context, Exit

from survival import cli
from survival.backend import Cloud
from survival.config import DEFAULTS, Settings
from survival.doctor import Doctor, failures, gpu_quota_metric, print_checks
from survival.images import ImageInfo
from survival.request import TrainRequest

ZONES = ("us-central1-a", "us-central1-b", "europe-west4-a")


def settings(tmp_path: Path, **values) -> Settings:
    config = Config(
        overrides={
            "survival": {
                "local_state_dir": str(tmp_path / "state"),
                "backend": "gce",
                "project": "my-project-1",
                **{"zones": list(ZONES), **values},
            }
        }
    )
    config.load_collection({"survival": DEFAULTS})
    return Settings.from_invoke(config)


class FakeProject:
    """What doctor reads from Compute: quotas, accelerator types, images, networks."""

    project = "my-project-1"

    def __init__(self):
        self.regional = {
            "us-central1": {"NVIDIA_T4_GPUS": (4.0, 1.0)},
            "europe-west4": {"NVIDIA_T4_GPUS": (2.0, 0.0)},
        }
        self.global_quotas = {"GPUS_ALL_REGIONS": (8.0, 1.0)}
        self.offered = {zone: ["nvidia-l4", "nvidia-tesla-t4"] for zone in ZONES}
        self.images = [ImageInfo("gce-survival-kit-1", "gce-survival-kit", "READY", "t")]
        self.networks = {"default": {"name": "default"}}
        self.subnetworks = {}
        self.project_error = None
        self.inserts = []

    def project_quotas(self):
        if self.project_error:
            raise self.project_error
        return self.global_quotas

    def region_quotas(self, region):
        return self.regional[region]

    def accelerator_types(self, zone):
        return self.offered[zone]

    def newest_image(self, family):
        usable = [i for i in self.images if i.family == family and not i.deprecated]
        return usable[0] if usable else None

    def list_images(self, family=None):
        return [i for i in self.images if i.family == family]

    def get_network(self, name):
        return self.networks.get(name)

    def get_subnetwork(self, region, name):
        return self.subnetworks.get((region, name))

    def default_service_account(self):
        return "123-compute@developer.gserviceaccount.com"

    def get_instance(self, zone, name):
        return None

    def insert_instance(self, zone, body):
        self.inserts.append(zone)


class FakeBucket:
    def __init__(self, name, granted):
        self.name = name
        self.granted = granted

    def test_iam_permissions(self, permissions):
        return [p for p in permissions if p in self.granted]


class FakeStorage:
    def __init__(self, buckets):
        self.buckets = buckets

    def lookup_bucket(self, name):
        return self.buckets.get(name)


def healthy(tmp_path, **values):
    current = settings(tmp_path, **values)
    bucket = FakeBucket(current.job_bucket, {"storage.objects.create", "storage.objects.get"})
    return current, FakeProject(), FakeStorage({current.job_bucket: bucket})


def run(current, compute, storage):
    return Doctor(current, compute, storage).run()


def failed(checks):
    return {check.name: check for check in failures(checks)}


def test_a_healthy_project_passes_every_check(tmp_path, capsys):
    current, compute, storage = healthy(tmp_path)
    checks = run(current, compute, storage)
    assert failures(checks) == []
    names = [check.name for check in checks]
    assert "GPU quota us-central1" in names and "GPU quota europe-west4" in names
    assert "GPU quota GPUS_ALL_REGIONS" in names
    assert [n for n in names if n.startswith("nvidia-tesla-t4 in ")] == [
        f"nvidia-tesla-t4 in {zone}" for zone in ZONES
    ]
    print_checks(checks)
    assert "✓" in capsys.readouterr().out


def test_gpu_quota_zero_is_a_cross_naming_the_metric_and_how_to_ask(tmp_path, capsys):
    current, compute, storage = healthy(tmp_path)
    compute.regional["us-central1"] = {"NVIDIA_T4_GPUS": (0.0, 0.0)}
    compute.global_quotas = {"GPUS_ALL_REGIONS": (0.0, 0.0)}
    bad = failed(run(current, compute, storage))
    assert set(bad) == {"GPU quota us-central1", "GPU quota GPUS_ALL_REGIONS"}
    regional = bad["GPU quota us-central1"]
    assert regional.detail == "NVIDIA_T4_GPUS: limit 0, usage 0, this job needs 1"
    assert "requesting_higher_quota" in regional.fix and "in us-central1" in regional.fix


def test_spot_uses_the_preemptible_quota_when_the_project_has_one(tmp_path):
    current, compute, storage = healthy(tmp_path)
    compute.regional["us-central1"] = {
        "NVIDIA_T4_GPUS": (0.0, 0.0),
        "PREEMPTIBLE_NVIDIA_T4_GPUS": (4.0, 0.0),
    }
    assert failures(run(current, compute, storage)) == []
    standard = settings(tmp_path, provisioning="standard")
    assert "GPU quota us-central1" in failed(run(standard, compute, storage))


def test_a_zone_without_the_gpu_type_is_a_cross_naming_the_zone(tmp_path):
    current, compute, storage = healthy(tmp_path)
    compute.offered["us-central1-b"] = ["nvidia-l4"]
    bad = failed(run(current, compute, storage))
    assert list(bad) == ["nvidia-tesla-t4 in us-central1-b"]
    check = bad["nvidia-tesla-t4 in us-central1-b"]
    assert "it offers: nvidia-l4" in check.detail
    assert "remove us-central1-b from survival.zones" in check.fix


def test_a_missing_or_deprecated_family_is_a_cross_saying_to_bake(tmp_path):
    current, compute, storage = healthy(tmp_path, image_family="other-family")
    bad = failed(run(current, compute, storage))
    assert "no image in family other-family" in bad["image family other-family"].detail
    assert "invoke bake-image --backend gce" in bad["image family other-family"].fix
    current, compute, storage = healthy(tmp_path)
    compute.images = [ImageInfo("old", "gce-survival-kit", "READY", "t", "DEPRECATED")]
    bad = failed(run(current, compute, storage))
    assert "deprecated" in bad["image family gce-survival-kit"].detail


def test_a_bucket_the_caller_cannot_write_names_the_role_and_the_org_policy(tmp_path):
    current, compute, _ = healthy(tmp_path)
    storage = FakeStorage({current.job_bucket: FakeBucket(current.job_bucket, set())})
    bad = failed(run(current, compute, storage))
    check = bad[f"write gs://{current.job_bucket}"]
    assert "storage.objects.create" in check.detail
    assert "roles/storage.objectUser" in check.fix
    assert "123-compute@developer.gserviceaccount.com" in check.fix
    assert "iam.automaticIamGrantsForDefaultServiceAccounts" in check.fix


def test_a_missing_bucket_says_how_to_create_it(tmp_path):
    current, compute, _ = healthy(tmp_path)
    bad = failed(run(current, compute, FakeStorage({})))
    (check,) = bad.values()
    assert check.detail == "does not exist"
    assert f"gcloud storage buckets create gs://{current.job_bucket}" in check.fix


def test_a_disabled_compute_api_says_how_to_enable_it(tmp_path):
    from google.api_core import exceptions as api

    current, compute, storage = healthy(tmp_path)
    compute.project_error = api.Forbidden(
        "Compute Engine API has not been used in project 123 before or it is disabled.",
        errors=[{"reason": "accessNotConfigured"}],
    )
    bad = failed(run(current, compute, storage))
    check = bad["project my-project-1, Compute API"]
    assert check.fix == "gcloud services enable compute.googleapis.com --project my-project-1"


def test_network_and_the_way_out_without_an_external_ip(tmp_path):
    current, compute, storage = healthy(tmp_path, network="vpc1")
    assert "network vpc1" in failed(run(current, compute, storage))
    current, compute, storage = healthy(tmp_path, external_ip=False)
    bad = failed(run(current, compute, storage))
    assert "Private Google Access" in bad["egress"].fix
    one_region = ["us-central1-a", "us-central1-b"]
    current, compute, storage = healthy(
        tmp_path, external_ip=False, subnetwork="sub1", zones=one_region
    )
    compute.subnetworks = {("us-central1", "sub1"): {"privateIpGoogleAccess": False}}
    bad = failed(run(current, compute, storage))
    assert list(bad) == ["subnetwork sub1 (us-central1)"]
    assert "--enable-private-ip-google-access" in bad["subnetwork sub1 (us-central1)"].fix
    compute.subnetworks = {("us-central1", "sub1"): {"privateIpGoogleAccess": True}}
    assert failures(run(current, compute, storage)) == []


def test_without_an_external_ip_the_auto_mode_subnetwork_needs_private_google_access(tmp_path):
    current, compute, storage = healthy(tmp_path, external_ip=False)
    compute.networks = {"default": {"name": "default", "autoCreateSubnetworks": True}}
    compute.subnetworks = {
        ("us-central1", "default"): {"network": "x/global/networks/default"},
        ("europe-west4", "default"): {"privateIpGoogleAccess": True},
    }
    bad = failed(run(current, compute, storage))
    assert list(bad) == ["subnetwork default (us-central1)"]
    assert "Private Google Access is off" in bad["subnetwork default (us-central1)"].detail
    assert (
        "gcloud compute networks subnets update default --region us-central1 "
        "--enable-private-ip-google-access" in bad["subnetwork default (us-central1)"].fix
    )
    compute.subnetworks[("us-central1", "default")]["privateIpGoogleAccess"] = True
    checks = run(current, compute, storage)
    assert failures(checks) == []
    assert "exists (auto mode)" in [c.detail for c in checks if c.name == "network default"]


def test_a_custom_mode_network_needs_a_subnetwork(tmp_path):
    current, compute, storage = healthy(tmp_path, network="vpc1", zones=["us-central1-a"])
    compute.networks = {"vpc1": {"name": "vpc1", "autoCreateSubnetworks": False}}
    bad = failed(run(current, compute, storage))
    assert list(bad) == ["network vpc1"]
    assert "custom-mode network" in bad["network vpc1"].detail
    assert "survival.subnetwork" in bad["network vpc1"].fix
    # With a subnetwork, it must exist even with an external IP.
    current, _, storage = healthy(
        tmp_path, network="vpc1", subnetwork="sub1", zones=["us-central1-a"]
    )
    assert list(failed(run(current, compute, storage))) == ["subnetwork sub1 (us-central1)"]
    compute.subnetworks = {("us-central1", "sub1"): {"network": "global/networks/vpc1"}}
    checks = run(current, compute, storage)
    assert failures(checks) == [] and "subnetwork sub1 (us-central1)" in [c.name for c in checks]


def test_a_subnetwork_of_another_network_is_a_cross(tmp_path):
    one_region = ["us-central1-a"]
    current, compute, storage = healthy(
        tmp_path, external_ip=False, subnetwork="sub1", zones=one_region
    )
    compute.subnetworks = {
        ("us-central1", "sub1"): {
            "privateIpGoogleAccess": True,
            "network": "https://www.googleapis.com/compute/v1/projects/p/global/networks/vpc2",
        }
    }
    bad = failed(run(current, compute, storage))
    check = bad["subnetwork sub1 (us-central1)"]
    assert check.detail == "subnetwork sub1 belongs to network vpc2, not default"
    assert "survival.network: vpc2" in check.fix


def test_bucket_permissions_come_from_test_iam_permissions_only(tmp_path):
    from google.api_core import exceptions as api

    current, compute, _ = healthy(tmp_path)

    class Unanswered(FakeBucket):
        def test_iam_permissions(self, permissions):
            raise api.NotFound("GET .../iam/testPermissions: Not Found")

        def blob(self, name):
            raise AssertionError("the doctor wrote to the bucket")

    storage = FakeStorage({current.job_bucket: Unanswered(current.job_bucket, set())})
    check = failed(run(current, compute, storage))[f"write gs://{current.job_bucket}"]
    assert "storage.objects.create" in check.detail and "Not Found" in check.detail
    assert "roles/storage.objectUser" in check.fix


def test_gpu_quota_metric_names():
    assert gpu_quota_metric("nvidia-tesla-t4") == "NVIDIA_T4_GPUS"
    assert gpu_quota_metric("nvidia-l4") == "NVIDIA_L4_GPUS"
    assert gpu_quota_metric("nvidia-a100-80gb") == "NVIDIA_A100_80GB_GPUS"
    assert gpu_quota_metric("nvidia-tesla-a100") == "NVIDIA_A100_GPUS"
    assert gpu_quota_metric("nvidia-h100-80gb") == "NVIDIA_H100_GPUS"


def test_train_refuses_on_a_cross_before_pushing_or_creating(tmp_path, monkeypatch, capsys):
    current, compute, storage = healthy(tmp_path)
    compute.regional["us-central1"] = {"NVIDIA_T4_GPUS": (0.0, 0.0)}
    monkeypatch.setattr(cli, "open_cloud", lambda *a, **k: Cloud(current, compute, storage))
    monkeypatch.setattr(cli, "check_cloud", lambda s, c, st: Doctor(s, c, st).run())

    def no_launch(*args, **kwargs):
        raise AssertionError("launched although a preflight check failed")

    monkeypatch.setattr(cli, "launch", no_launch)
    config = Config(overrides={"survival": {"local_state_dir": str(tmp_path / "state")}})
    config.load_collection({"survival": DEFAULTS})
    req = TrainRequest(
        branch="exp1", example="keras_digits", train_steps=10, checkpoint_steps=5, seed=0,
        hparams=(), name=None, zone=None, gpu=None, machine_type=None, provisioning=None,
        follow=False, chaos=0, push=True, keep_alive=False,
    )  # fmt: skip
    with pytest.raises(Exit) as stop:
        cli.train(Context(config), req)
    assert stop.value.code == 1 and "\n" not in stop.value.message
    assert "preflight: 1 check(s) failed (GPU quota us-central1)" in stop.value.message
    assert compute.inserts == []
    table = capsys.readouterr().out
    assert "GPU quota us-central1" in table and "✗" in table
