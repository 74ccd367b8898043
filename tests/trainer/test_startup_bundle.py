"""startup/startup.sh fetches the trainer code from a git bundle in Cloud Storage (metadata key
trainer-bundle), with the VM's own access token from the metadata server, and refuses any bundle
that is not exactly trainer-commit: a bundle of another commit under that name, or a URL that is
not a gs:// object of a bucket as the job dir allows it. Each refusal is one line in FAILED.

startup.sh runs as on a VM, minus the VM: a fake metadata server holds the job's metadata and
the service account's token, the job dir and the bundle are on fake-gcs-server, and
LOCALGCE_ROOT keeps every path startup.sh writes inside a temp dir."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from gitrepo import git

from tests.trainer import helpers
from tests.trainer.fake_metadata import FakeMetadataServer
from trainer.jobdir import JobDir

BUCKET = "startup-bundle-tests"
TOKEN = "ya29.test-token-from-the-metadata-server"  # a fake one
STORAGE_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
MODULE = "trainer.examples.sklearn_digits"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def code(tmp_path_factory):
    """A repository whose branch `exp` holds this tree's trainer/ (commit ``good``) and a second
    commit on top (``other``); bundles of each, as push-code writes them."""
    root = tmp_path_factory.mktemp("code")
    repo = root / "repo"
    shutil.copytree(
        helpers.REPO / "trainer", repo / "trainer", ignore=shutil.ignore_patterns("__pycache__")
    )
    git(repo, "init", "--quiet", "--initial-branch=exp")
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", "trainer")
    good = git(repo, "rev-parse", "HEAD")
    git(repo, "commit", "--quiet", "--allow-empty", "-m", "another snapshot")
    other = git(repo, "rev-parse", "HEAD")
    bundles = {}
    for name, commit in (("good", good), ("other", other)):
        git(repo, "update-ref", "refs/heads/exp", commit)
        bundles[name] = root / f"{name}.bundle"
        git(repo, "bundle", "create", "--quiet", str(bundles[name]), "refs/heads/exp")
    return {"good": good, "other": other, "bundles": bundles}


@pytest.fixture
def vm_root():
    # Not under pytest's 0700 tmp dirs: startup.sh may drop to an unprivileged user.
    root = Path(tempfile.mkdtemp(prefix="survival-startup-bundle-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def bucket(gcs_env):
    from google.api_core.exceptions import Conflict

    from trainer.storage import _gcs_client

    client = _gcs_client()
    with contextlib.suppress(Conflict):  # made by an earlier test of the session
        client.create_bucket(BUCKET)
    return client.bucket(BUCKET)


def _upload(bucket, local: Path, commit: str) -> str:
    """Put ``local`` where push-code puts the bundle of ``commit``, under a fresh prefix."""
    name = f"t-{uuid.uuid4().hex[:8]}/code/{commit}.bundle"
    bucket.blob(name).upload_from_filename(str(local))
    return f"gs://{BUCKET}/{name}"


def _boot(vm_root: Path, attributes: dict[str, str]) -> tuple[int, str, FakeMetadataServer]:
    """Run startup.sh to its end on a fresh disk; (exit status, its output, metadata server)."""
    metadata = FakeMetadataServer(
        {
            "instance/attributes/": "".join(f"{key}\n" for key in attributes),
            **{f"instance/attributes/{key}": value for key, value in attributes.items()},
            "instance/service-accounts/default/token": json.dumps(
                {"access_token": TOKEN, "expires_in": 3599, "token_type": "Bearer"}
            ),
            "instance/service-accounts/default/scopes": f"{STORAGE_SCOPE}\n",
            "project/project-id": "test-project",
        }
    )
    disk = vm_root / "disk"
    image_python = disk / "opt/survival/venv/bin/python"
    image_python.parent.mkdir(parents=True)
    # A script, not a symlink: a symlinked venv Python would not find its pyvenv.cfg.
    image_python.write_text(f'#!/bin/sh\nexec "{helpers.sys.executable}" "$@"\n')
    image_python.chmod(0o755)
    env = helpers.trainer_env({"GCE_METADATA_HOST": metadata.host, "LOCALGCE_ROOT": str(disk)})
    metadata.start()
    try:
        result = subprocess.run(
            ["bash", str(helpers.REPO / "startup/startup.sh")],
            env=env, cwd=helpers.REPO, capture_output=True, text=True,
            timeout=helpers.WAIT_SECONDS, check=False,
        )  # fmt: skip
    finally:
        metadata.stop()
    return result.returncode, result.stdout + result.stderr, metadata


def _attributes(job_url: str, commit: str, **extra: str) -> dict[str, str]:
    return {
        "job-dir": job_url,
        "trainer-branch": "exp",
        "trainer-commit": commit,
        "trainer-module": MODULE,
        "train-steps": "5",
        "checkpoint-steps": "0",
        "keep-alive": "true",  # no power-off: the script just ends
        **extra,
    }


def _job_url() -> str:
    return f"gs://{BUCKET}/job-{uuid.uuid4().hex[:8]}"


def test_the_bundle_is_downloaded_with_the_vms_token_and_its_commit_trained(bucket, code, vm_root):
    job_url = _job_url()
    url = _upload(bucket, code["bundles"]["good"], code["good"])

    rc, output, metadata = _boot(vm_root, _attributes(job_url, code["good"], **{
        "trainer-bundle": url}))  # fmt: skip

    assert rc == 0, output
    assert f"fetched commit {code['good'][:12]} from {url}" in output, output
    # The token came from the metadata server, as on GCE.
    assert any("service-accounts/default/token" in path for path in metadata.requests)
    src = vm_root / "disk/var/lib/survival/src"
    assert git(src, "rev-parse", "HEAD") == code["good"]
    # The downloaded bundle is not left on the disk.
    assert list((vm_root / "disk/var/lib/survival/code").iterdir()) == []
    job = JobDir.open(job_url)
    assert job.failed() is None and job.done()["steps"] == 5


def test_a_bundle_of_another_commit_is_refused_in_one_line(bucket, code, vm_root):
    """The object named for commit ``good`` holds ``other``: FAILED, and nothing is run."""
    job_url = _job_url()
    url = _upload(bucket, code["bundles"]["other"], code["good"])

    rc, output, _ = _boot(vm_root, _attributes(job_url, code["good"], **{
        "trainer-bundle": url}))  # fmt: skip

    assert rc == 1, output
    failed = JobDir.open(job_url).failed()
    assert failed is not None, output
    reason = failed["reason"]
    assert "\n" not in reason
    assert reason == (
        f"validation error: {url} holds commit {code['other']}, not trainer-commit "
        f"{code['good']}; push the code again"
    )
    assert "attempt 1" not in output and JobDir.open(job_url).done() is None


@pytest.mark.parametrize(
    ("bundle", "words"),
    [
        ("https://example.com/code/{commit}.bundle", "trainer-bundle has an invalid value"),
        ("file:///tmp/code/{commit}.bundle", "trainer-bundle has an invalid value"),
        ("gs://{bucket}/code/{commit}.bundle;id", "trainer-bundle has an invalid value"),
        ("gs://{bucket}/code/$(id)/{commit}.bundle", "trainer-bundle has an invalid value"),
        ("gs://UPPER/code/{commit}.bundle", "trainer-bundle has an invalid value"),
        ("gs://{bucket}/code/x.bundle", "trainer-bundle has an invalid value"),
        ("gs://{bucket}/../{commit}.bundle", "trainer-bundle has an invalid value (a .. segment)"),
        ("gs://{bucket}/code/{other}.bundle", "not the bundle of trainer-commit"),
    ],
)
def test_a_bundle_url_outside_the_allowed_pattern_is_refused(bucket, code, vm_root, bundle, words):
    job_url = _job_url()
    value = bundle.format(bucket=BUCKET, commit=code["good"], other=code["other"])

    rc, output, metadata = _boot(vm_root, _attributes(job_url, code["good"], **{
        "trainer-bundle": value}))  # fmt: skip

    assert rc == 1, output
    reason = JobDir.open(job_url).failed()["reason"]
    assert reason.startswith("validation error: ") and words in reason, reason
    assert "\n" not in reason
    # Refused before anything was downloaded: no token was even asked for.
    assert not any("service-accounts" in path for path in metadata.requests)


@pytest.mark.parametrize(
    ("keys", "words"),
    [
        ({}, "neither trainer-bundle nor trainer-repo"),
        ({"trainer-repo": "file:///tmp/r.git", "trainer-bundle": "BUNDLE"}, "both"),
    ],
)
def test_exactly_one_code_source_is_required(bucket, code, vm_root, keys, words):
    job_url = _job_url()
    url = f"gs://{BUCKET}/code/{code['good']}.bundle"
    keys = {key: url if value == "BUNDLE" else value for key, value in keys.items()}

    rc, output, _ = _boot(vm_root, _attributes(job_url, code["good"], **keys))

    assert rc == 1, output
    reason = JobDir.open(job_url).failed()["reason"]
    assert reason.startswith("validation error: ") and words in reason, reason


def test_a_missing_bundle_fails_with_what_to_do(bucket, code, vm_root):
    job_url = _job_url()
    url = f"gs://{BUCKET}/t-{uuid.uuid4().hex[:8]}/code/{code['good']}.bundle"

    rc, output, _ = _boot(vm_root, _attributes(job_url, code["good"], **{
        "trainer-bundle": url}))  # fmt: skip

    assert rc == 1, output
    reason = JobDir.open(job_url).failed()["reason"]
    assert reason == (
        f"cannot fetch the code: {url} does not exist; push the code again "
        "(`invoke push-code --branch BRANCH`)"
    )
