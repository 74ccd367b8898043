"""The default code delivery: push-code writes a git bundle of the snapshot commit to the job
bucket, gs://BUCKET/code/<commit>.bundle, once per commit (if_generation_match=0: a second push
of the same code finds it there and uploads nothing), records the branch's newest commit for
--no-push, and `invoke train` puts the bundle URL and the commit in the instance's metadata.
The bucket is fake-gcs-server, reached through the google-cloud-storage client as on GCE."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from gitrepo import git, new_repo

from survival.codepush import (
    BUNDLE_COMMIT_METADATA,
    BundleStore,
    bundle_url,
    push_code,
    require_branch,
)
from survival.config import TRAINER_REPO_RE, Settings, describe
from survival.errors import ConfigError
from survival.instance_spec import KEY_BUNDLE, KEY_COMMIT, KEY_REPO, JobSpec

STARTUP = Path(__file__).resolve().parents[2] / "startup" / "startup.sh"
BUCKET_PREFIX = "codepush-bundle"


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    return new_repo(tmp_path / "work", {"train.py": "print('v1')\n"})


@pytest.fixture
def bundles(fake_gcs) -> BundleStore:
    """A bucket of its own per test (code/ and code/branches/ start empty)."""
    from survival.backend import storage_client

    client = storage_client("local-project", fake_gcs)
    bucket = f"{BUCKET_PREFIX}-{uuid.uuid4().hex[:12]}"
    client.create_bucket(bucket)
    return BundleStore(client, bucket)


def _blob(bundles: BundleStore, commit: str):
    return bundles.client.bucket(bundles.bucket_name).get_blob(f"code/{commit}.bundle")


def _bundle_heads(bundles: BundleStore, commit: str, tmp_path: Path) -> str:
    local = tmp_path / "downloaded.bundle"
    _blob(bundles, commit).download_to_filename(str(local))
    check = tmp_path / "check"
    if not check.exists():
        git(tmp_path, "init", "-q", str(check))
    git(check, "bundle", "verify", "--quiet", str(local))
    return git(check, "bundle", "list-heads", str(local))


def test_the_bundle_is_written_once_and_an_unchanged_push_uploads_nothing(
    worktree, bundles, tmp_path
):
    (worktree / "train.py").write_text("print('v2 uncommitted')\n")
    (worktree / ".env").write_text("API_KEY=sk-123\n")
    head, status = git(worktree, "rev-parse", "HEAD"), git(worktree, "status", "--porcelain")
    warnings: list[str] = []

    first = push_code(worktree, "", "exp1", warn=warnings.append, bundles=bundles)

    assert first.bundle_url == f"gs://{bundles.bucket_name}/code/{first.commit}.bundle"
    assert first.remote == first.bundle_url and first.uploaded
    assert first.left_out == (".env",) and len(warnings) == 1
    blob = _blob(bundles, first.commit)
    assert blob.metadata == {BUNDLE_COMMIT_METADATA: first.commit} and blob.size > 0
    generation = blob.generation
    # A complete bundle with one branch, exp1, at the snapshot commit; its parent is HEAD.
    assert _bundle_heads(bundles, first.commit, tmp_path) == f"{first.commit} refs/heads/exp1"
    assert git(worktree, "show", f"{first.commit}:train.py") == "print('v2 uncommitted')"
    assert git(worktree, "rev-parse", f"{first.commit}^") == head
    assert ".env" not in git(worktree, "ls-tree", "--name-only", first.commit).split()
    # The user's refs, HEAD and status are untouched (no branch made for the bundle).
    assert git(worktree, "rev-parse", "HEAD") == head
    assert git(worktree, "status", "--porcelain") == status
    assert git(worktree, "for-each-ref", "--format=%(refname)") == "refs/heads/main"

    second = push_code(worktree, "", "exp1", warn=warnings.append, bundles=bundles)

    assert second.commit == first.commit and not second.uploaded
    assert "already in the bucket" in second.summary
    assert _blob(bundles, first.commit).generation == generation
    assert require_branch(worktree, "", "exp1", bundles) == first.commit

    (worktree / "train.py").write_text("print('v3')\n")
    third = push_code(worktree, "", "exp1", warn=warnings.append, bundles=bundles)

    assert third.commit != first.commit and third.uploaded
    assert require_branch(worktree, "", "exp1", bundles) == third.commit
    # The earlier bundle stays for the VMs still training on it.
    assert _blob(bundles, first.commit).generation == generation


def test_an_object_under_the_bundle_name_that_is_not_ours_is_refused(worktree, bundles):
    first = push_code(worktree, "", "exp1", bundles=bundles)
    bucket = bundles.client.bucket(bundles.bucket_name)
    bucket.blob(f"code/{first.commit}.bundle").upload_from_string(b"not a bundle")

    with pytest.raises(ConfigError) as refused:
        push_code(worktree, "", "exp1", bundles=bundles)

    message = str(refused.value)
    assert "\n" not in message
    assert f"exists but is not push-code's bundle of {first.commit[:12]}" in message
    assert f"gcloud storage rm {first.bundle_url}" in message


def test_no_push_needs_a_pushed_bundle_of_the_branch(worktree, bundles):
    with pytest.raises(ConfigError) as missing:
        require_branch(worktree, "", "exp2", bundles)
    assert "\n" not in str(missing.value)
    assert "has no bundle in gs://" in str(missing.value)
    assert "`invoke push-code --branch exp2` or drop --no-push" in str(missing.value)

    pushed = push_code(worktree, "", "exp2", bundles=bundles)
    assert require_branch(worktree, "", "exp2", bundles) == pushed.commit

    # The branch's record points at a bundle someone deleted: the same clear error.
    bundles.client.bucket(bundles.bucket_name).blob(f"code/{pushed.commit}.bundle").delete()
    with pytest.raises(ConfigError, match="has no bundle in gs://"):
        require_branch(worktree, "", "exp2", bundles)


def _job(**changes) -> JobSpec:
    fields = dict(name="j", repo_url="", branch="exp1", commit="c" * 40, module="m",
                  job_dir="gs://b/jobs/j", train_steps=1, checkpoint_steps=0, seed=0,
                  hparams_json="{}")  # fmt: skip
    fields.update(changes)
    return JobSpec(**fields)


def test_metadata_names_exactly_one_code_source():
    url = bundle_url("survival-jobs", "c" * 40)
    assert url == f"gs://survival-jobs/code/{'c' * 40}.bundle"
    bundled = _job(bundle_url=url).metadata()
    assert bundled[KEY_BUNDLE] == url and bundled[KEY_COMMIT] == "c" * 40
    assert KEY_REPO not in bundled
    remote = _job(repo_url="https://github.com/org/trainer.git").metadata()
    assert remote[KEY_REPO] == "https://github.com/org/trainer.git" and KEY_BUNDLE not in remote


def _startup_pattern(variable: str) -> str:
    return re.search(rf"readonly {variable}='([^']*)'", STARTUP.read_text()).group(1)


def test_startup_takes_the_kits_bundle_urls_and_no_wider_bucket_than_the_job_dirs():
    bundle_re, job_dir_re = (
        _startup_pattern("STARTUP_RE_BUNDLE"),
        _startup_pattern("STARTUP_RE_JOB_DIR"),
    )
    bucket = r"^gs://[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]"
    assert bundle_re.startswith(bucket) and job_dir_re.startswith(bucket)
    for commit in ("a" * 40, "b" * 64):
        assert re.fullmatch(bundle_re, bundle_url("survival-jobs", commit))
        assert re.fullmatch(bundle_re, bundle_url("my-project-1-survival-jobs", commit))
    hex40 = "a" * 40
    bad_urls = (
        f"https://h/code/{hex40}.bundle",
        f"gs://b/code/{hex40}.bundle",  # a bucket name is at least 3 characters
        f"gs://bucket/code/{hex40[:39]}.bundle",
        "gs://bucket/code/x.bundle",
        f"gs://bucket/{hex40}.bundle\n",
        f"gs://bucket/a b/{hex40}.bundle",
    )
    for bad in bad_urls:
        assert not re.fullmatch(bundle_re, bad), bad


def test_a_trainer_repo_setting_is_a_url_startup_accepts():
    assert TRAINER_REPO_RE.pattern == _startup_pattern("STARTUP_RE_REPO")
    ok = Settings.from_invoke({"survival": {"trainer_repo": "https://github.com/org/trainer.git"}})
    assert ok.trainer_repo == "https://github.com/org/trainer.git"
    default = Settings.from_invoke({"survival": {}})
    rows = {key: value for key, value, _ in describe(default)}
    assert rows["trainer_repo"] == "(none: git bundles in gs://survival-jobs/code/)"
    for bad in ("gs://survival-jobs/code", "git@github.com:org/trainer.git", "https://h/x;id"):
        with pytest.raises(ConfigError) as refused:
            Settings.from_invoke({"survival": {"trainer_repo": bad}})
        assert "\n" not in str(refused.value)
        assert "leave it empty to ship the code as a git bundle" in str(refused.value)


class _Compute:
    """Just enough Compute for `launch`: records the instance bodies it is asked to insert."""

    project = "local-project"

    def __init__(self):
        self.inserts = []

    def image_from_family(self, family):
        return f"global/images/{family}"

    def insert_instance(self, zone, body):
        self.inserts.append((zone, body))

    def get_instance(self, zone, name):
        return None


def test_train_puts_the_bundle_url_and_commit_in_the_instance_metadata(worktree, bundles, tmp_path):
    from survival.backend import Cloud
    from survival.launch import launch
    from survival.request import TrainRequest
    from trainer.jobdir import JobDir

    state = str(tmp_path / "state")
    settings = Settings.from_invoke(
        {"survival": {"local_state_dir": state, "job_bucket": bundles.bucket_name}}
    )

    class TestCloud(Cloud):
        def open_job_dir(self, url):
            return JobDir.open(str(tmp_path / "jobs" / url.rsplit("/", 1)[1]))

    cloud = TestCloud(settings, _Compute(), bundles.client)
    request = TrainRequest(
        branch="exp1", example="sklearn_digits", train_steps=20, checkpoint_steps=10, seed=0,
        hparams=(), name="job1", zone=None, gpu=None, machine_type=None, provisioning=None,
        follow=False, chaos=0, push=True, keep_alive=False,
    )  # fmt: skip
    lines: list[str] = []

    launched = launch(cloud, worktree, request, out=lines.append)

    commit = launched.job.commit
    url = f"gs://{bundles.bucket_name}/code/{commit}.bundle"
    assert _blob(bundles, commit) is not None
    assert f"push-code: exp1 -> {commit} ({url})" in lines
    ((_, body),) = cloud.compute.inserts
    items = {item["key"]: item["value"] for item in body["metadata"]["items"]}
    assert items[KEY_BUNDLE] == url and items[KEY_COMMIT] == commit
    assert KEY_REPO not in items
    # No Cloud Source Repositories scope for a bundle: storage is all the VM needs.
    assert not any("source" in scope for scope in body["serviceAccounts"][0]["scopes"])
