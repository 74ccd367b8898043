"""What `invoke doctor` reads from localgce besides quotas: `networks.get` / `subnetworks.get`
(the auto-mode `default` network and the `networks` knob), and Cloud Storage's IAM played by the
storage guard (`storage_denied_buckets`: GCS's 403 on object writes, `testIamPermissions`)."""

from __future__ import annotations

import argparse
import urllib.error

import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1
from google.cloud import storage as gcs
from lgtest import PROJECT

from localgce import daemon
from localgce.__main__ import _knob_args, _knobs
from localgce.client import compute_client_options, set_config
from localgce.config import Knobs, knobs_json
from localgce.errors import ApiError
from localgce.networks import validate_networks
from localgce.storage_guard import object_write

MY_NET = {
    "my-net": {"subnetworks": {"us-central1": {"my-subnet": {"privateIpGoogleAccess": True}}}}
}


@pytest.fixture
def knobs(lg):
    def apply(**values):
        return set_config(lg, **values)

    yield apply
    apply(networks={}, storage_denied_buckets=[])


def test_networks_and_subnetworks_get(lg, knobs):
    opts = compute_client_options(lg)
    networks = compute_v1.NetworksClient(**opts)
    subnetworks = compute_v1.SubnetworksClient(**opts)

    default = networks.get(project=PROJECT, network="default")
    assert default.auto_create_subnetworks and default.routing_config.routing_mode == "REGIONAL"
    assert default.self_link.endswith(f"projects/{PROJECT}/global/networks/default")
    regional = f"projects/{PROJECT}/regions/us-central1/subnetworks/default"
    assert any(link.endswith(regional) for link in default.subnetworks)
    sub = subnetworks.get(project=PROJECT, region="us-central1", subnetwork="default")
    assert sub.private_ip_google_access is False and sub.network == default.self_link
    assert sub.ip_cidr_range == "10.128.0.0/20" and sub.gateway_address == "10.128.0.1"

    with pytest.raises(exceptions.NotFound) as missing:
        networks.get(project=PROJECT, network="my-net")
    assert f"The resource 'projects/{PROJECT}/global/networks/my-net' was not found" in str(
        missing.value
    )
    with pytest.raises(exceptions.NotFound):
        subnetworks.get(project=PROJECT, region="us-central1", subnetwork="my-subnet")

    knobs(networks=MY_NET)
    mine = networks.get(project=PROJECT, network="my-net")
    assert mine.auto_create_subnetworks is False and len(mine.subnetworks) == 1
    sub = subnetworks.get(project=PROJECT, region="us-central1", subnetwork="my-subnet")
    assert sub.private_ip_google_access is True and sub.network == mine.self_link
    with pytest.raises(exceptions.NotFound):  # custom mode: only the subnetworks listed
        subnetworks.get(project=PROJECT, region="europe-west4", subnetwork="my-subnet")

    # A project without the default network (an org that skips creating it).
    knobs(networks={"default": None})
    with pytest.raises(exceptions.NotFound):
        networks.get(project=PROJECT, network="default")
    with pytest.raises(exceptions.NotFound):
        subnetworks.get(project=PROJECT, region="us-central1", subnetwork="default")

    # A bad knob is refused with what is wrong, and the knobs stay as they were.
    with pytest.raises(urllib.error.HTTPError) as bad:
        knobs(networks={"my-net": {"subnetworks": {"us-central1": {"s": {"pga": True}}}}})
    assert bad.value.code == 400 and b"privateIpGoogleAccess" in bad.value.read()
    assert knobs()["networks"] == {"default": None}


def test_networks_knob_validation():
    assert validate_networks(MY_NET)["my-net"]["subnetworks"]["us-central1"]["my-subnet"] == {
        "privateIpGoogleAccess": True
    }
    for bad, words in [
        ([], "JSON object"),
        ({"My_Net": {}}, "not a valid network name"),
        ({"n": None}, "only 'default' can be null"),
        ({"n": {"subnetworks": {"us-central1-a": {}}}}, "is not a region"),
        ({"n": {"subnetworks": {"us-central1": {"s": {"privateIpGoogleAccess": "yes"}}}}}, "true"),
        ({"n": {"subnetworks": {"us-central1": {"default": {}}}}}, "clashes with the default"),
        (
            {
                "a": {"subnetworks": {"us-central1": {"s": {}}}},
                "b": {"subnetworks": {"us-central1": {"s": {}}}},
            },
            "unique per region",
        ),
    ]:
        with pytest.raises(ApiError, match=words):
            validate_networks(bad)


def test_denied_bucket_refuses_object_writes_and_test_iam_permissions_says_so(lg, knobs):
    client = gcs.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": lg["storage"]},
    )
    denied = client.create_bucket("lg-denied-bucket")
    allowed = client.create_bucket("lg-allowed-bucket")
    denied.blob("before").upload_from_string(b"kept")
    asked = ["storage.objects.create", "storage.objects.get"]
    assert allowed.test_iam_permissions(asked) == asked
    assert denied.test_iam_permissions(asked) == asked

    # The knob takes effect at the next request: the guard reads it from the daemon's store.
    knobs(storage_denied_buckets=["lg-denied-bucket"])
    with pytest.raises(exceptions.Forbidden) as refused:
        denied.blob("new").upload_from_string(b"x", if_generation_match=0)
    text = str(refused.value)  # the client's message carries GCS's error JSON
    assert (
        '"message": "Anonymous caller does not have storage.objects.create access to the Google '
        "Cloud Storage object. Permission 'storage.objects.create' denied on resource (or it may "
        'not exist).", "domain": "global", "reason": "forbidden"'
    ) in text
    with pytest.raises(exceptions.Forbidden, match=r"storage\.objects\.delete"):
        denied.blob("before").delete()
    with pytest.raises(exceptions.Forbidden, match=r"storage\.objects\.create"):
        denied.blob("big").upload_from_string(b"y" * (300 * 1024), if_generation_match=0)
    allowed.blob("src").upload_from_string(b"s")
    with pytest.raises(exceptions.Forbidden, match=r"storage\.objects\.create"):  # copy into it
        allowed.copy_blob(allowed.blob("src"), denied, "copied")
    assert denied.blob("before").download_as_bytes() == b"kept"  # reads stay allowed
    assert [b.name for b in client.list_blobs("lg-denied-bucket")] == ["before"]
    assert denied.test_iam_permissions(asked) == ["storage.objects.get"]
    assert allowed.test_iam_permissions(asked) == asked
    with pytest.raises(exceptions.NotFound):
        client.bucket("lg-no-such-bucket").test_iam_permissions(asked)

    knobs(storage_denied_buckets=[])
    denied.blob("new").upload_from_string(b"x", if_generation_match=0)
    assert denied.test_iam_permissions(asked) == asked


def test_object_writes_are_told_from_reads():
    assert object_write("GET", "/storage/v1/b/b1/o/x?alt=media") is None
    assert object_write("GET", "/download/storage/v1/b/b1/o/x") is None
    assert object_write("POST", "/storage/v1/b") is None  # buckets.insert
    assert object_write("POST", "/upload/storage/v1/b/b1/o?uploadType=multipart") == (
        "b1",
        "storage.objects.create",
    )
    assert object_write("PUT", "/upload/storage/v1/b/b1/o?uploadType=resumable&upload_id=1")[0] == (
        "b1"
    )
    assert object_write("PATCH", "/storage/v1/b/b1/o/a%2Fb") == ("b1", "storage.objects.update")
    assert object_write("DELETE", "/storage/v1/b/b1/o/a") == ("b1", "storage.objects.delete")
    assert object_write("POST", "/storage/v1/b/b1/o/a/compose") == ("b1", "storage.objects.create")
    assert object_write("POST", "/storage/v1/b/b1/o/a/rewriteTo/b/b2/o/c") == (
        "b2",
        "storage.objects.create",
    )
    assert object_write("PUT", "/b1/dir/obj") == ("b1", "storage.objects.create")
    assert object_write("DELETE", "/b1/obj") == ("b1", "storage.objects.delete")
    assert object_write("GET", "/b1/obj") is None


def test_new_knobs_travel_as_serve_flags_and_json():
    flags = daemon.knob_flags({"storage_denied_buckets": ["a-1", "b-2"], "networks": MY_NET})
    assert flags[:2] == ["--storage-denied-buckets", "a-1,b-2"] and flags[2] == "--networks"
    parser = argparse.ArgumentParser()
    _knob_args(parser)
    knobs = _knobs(parser.parse_args(flags))
    assert knobs == {"storage_denied_buckets": ["a-1", "b-2"], "networks": MY_NET}
    config = Knobs()
    config.update_from_json(knobs_json(knobs))
    assert config.storage_denied_buckets == ["a-1", "b-2"] and config.networks == MY_NET
    for bad in (["Bad Bucket"], "a-1", [3]):
        with pytest.raises(ApiError, match="storageDeniedBuckets must be a list of bucket names"):
            config.update_from_json({"storageDeniedBuckets": bad})
