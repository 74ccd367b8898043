"""trainer.codefetch, the VM side of code delivery: it downloads a gs:// object with the VM's own
token from the metadata server, and says in one line what is wrong when it cannot (a URL that is
not gs://BUCKET/OBJECT, no token, a VM without a Cloud Storage scope, a missing object)."""

from __future__ import annotations

import json
import uuid

import pytest

from trainer import codefetch
from trainer.codefetch import FetchError

TOKEN_KEY = "instance/service-accounts/default/token"
SCOPES_KEY = "instance/service-accounts/default/scopes"
READ_WRITE = "https://www.googleapis.com/auth/devstorage.read_write"
LOGGING = "https://www.googleapis.com/auth/logging.write"


@pytest.fixture
def vm(metadata_server, monkeypatch):
    """The metadata server of a VM with the kit's default scopes and a token."""
    monkeypatch.setenv("GCE_METADATA_HOST", metadata_server.host)
    metadata_server.set(TOKEN_KEY, json.dumps({"access_token": "ya29.t", "expires_in": 3599}))
    metadata_server.set(SCOPES_KEY, f"{READ_WRITE}\n{LOGGING}\n")
    metadata_server.set("project/project-id", "test-project")
    return metadata_server


@pytest.mark.parametrize(
    "url",
    ["https://h/x.bundle", "gs://b/x.bundle", "gs://bucket/", "gs://bucket/a/../x.bundle",
     "gs://bucket/x y", "gs://Bucket/x"],
)  # fmt: skip
def test_only_gs_bucket_object_urls_are_taken(url):
    with pytest.raises(FetchError, match="is not a gs://BUCKET/OBJECT URL"):
        codefetch.parse_url(url)


def test_a_vm_without_a_storage_scope_is_told_which_setting_to_fix(vm, tmp_path):
    vm.set(SCOPES_KEY, f"{LOGGING}\n")
    with pytest.raises(FetchError) as refused:
        codefetch.download("gs://bucket/code/x.bundle", tmp_path / "x.bundle")
    message = str(refused.value)
    assert "no Cloud Storage scope" in message and "survival.scopes" in message
    assert "\n" not in message


def test_no_token_is_a_clear_error(vm, tmp_path):
    vm.set(TOKEN_KEY, "not json")
    with pytest.raises(FetchError, match="no access token from the metadata server"):
        codefetch.download("gs://bucket/code/x.bundle", tmp_path / "x.bundle")


def test_an_object_is_downloaded_whole_and_a_missing_one_says_to_push(vm, gcs_env, tmp_path):
    from trainer.storage import _gcs_client

    bucket = f"codefetch-{uuid.uuid4().hex[:8]}"
    _gcs_client().create_bucket(bucket).blob("code/c.bundle").upload_from_string(b"x" * 1000)

    size = codefetch.download(f"gs://{bucket}/code/c.bundle", tmp_path / "c.bundle")

    assert size == 1000 and (tmp_path / "c.bundle").read_bytes() == b"x" * 1000
    assert any(TOKEN_KEY in path for path in vm.requests)
    with pytest.raises(FetchError, match="over the 999-byte limit"):
        codefetch.download(f"gs://{bucket}/code/c.bundle", tmp_path / "d.bundle", max_bytes=999)
    assert not (tmp_path / "d.bundle").exists()
    with pytest.raises(FetchError, match=r"does not exist; push the code again"):
        codefetch.download(f"gs://{bucket}/code/none.bundle", tmp_path / "e.bundle")
