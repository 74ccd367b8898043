"""push-code: snapshot the working tree (uncommitted changes included) and deliver it to the VMs.

The user's branch, index and HEAD are never touched: the snapshot is built in a temporary index
(GIT_INDEX_FILE), written with write-tree and committed with commit-tree. It is then delivered
one of two ways, chosen by ``survival.trainer_repo``:

- empty (the default, on both backends): a ``git bundle`` of the snapshot commit is written to the
  job bucket as ``gs://BUCKET/code/<commit>.bundle`` (``if_generation_match=0``: an existing bundle
  of that commit is kept, never rewritten) and ``code/branches/<branch>`` records the branch's
  newest commit (for ``--no-push``). The commit's only parent is HEAD and it is dated like HEAD,
  so pushing unchanged code again gives the same commit and uploads nothing. The VM downloads the
  bundle with its own service account (startup.sh, trainer/codefetch.py).
- a git URL: the commit is pushed by hash to refs/heads/BRANCH of that remote. Its parents are the
  user's HEAD and the branch's current tip there, so every push fast-forwards and every earlier
  snapshot stays fetchable by the instances still training on it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from survival.errors import ConfigError

CSR_HOST = "https://source.developers.google.com"
# Where bundles live in the job bucket: code/<commit>.bundle, and code/branches/<branch> holding
# the branch's newest pushed commit.
BUNDLE_PREFIX = "code"
BRANCH_TIPS_PREFIX = f"{BUNDLE_PREFIX}/branches"
# Custom object metadata naming the commit a bundle holds (checked when the object already exists).
BUNDLE_COMMIT_METADATA = "survival-commit"
COMMIT_RE = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
# The date of a snapshot made where the repository has no commit yet (2000-01-01T00:00:00Z): any
# fixed value does, so that the same tree gives the same commit.
NO_HEAD_DATE = "946684800 +0000"
# A branch name we accept: git's own rules plus no shell metacharacters at all, so the value is
# harmless wherever it travels (metadata, logs, startup.sh validates it again).
BRANCH_MAX_CHARS = 100
BRANCH_RE = re.compile(
    r"^(?!.*\.\.)(?!.*//)(?!.*\.lock$)[A-Za-z0-9][A-Za-z0-9._/-]{0,99}(?<![./])$"
)
FULL_REF_PREFIX = "refs/heads/"
# File names that usually hold credentials. push-code leaves them out of the snapshot (the
# trainer repo is shared with every VM and whoever can read it) unless --include names them.
# Dotenv files are `.env` and `.env.*`; `NAME.env` is how projects (ours: provisioning/
# versions.env) name plain settings files, so it is not taken for one.
SECRET_PATTERNS = (".env", ".env.*", "*.pem", "*.key", "id_rsa*", "*credentials*.json", "*.p12")
SNAPSHOT_AUTHOR = {
    "GIT_AUTHOR_NAME": "gce-survival-kit push-code",
    "GIT_AUTHOR_EMAIL": "push-code@gce-survival-kit.invalid",
    "GIT_COMMITTER_NAME": "gce-survival-kit push-code",
    "GIT_COMMITTER_EMAIL": "push-code@gce-survival-kit.invalid",
}


@dataclass(frozen=True)
class PushResult:
    commit: str
    branch: str
    # Where the code went: the git remote, or the bundle's gs:// URL.
    remote: str
    # Files of the working tree left out because they look like secrets.
    left_out: tuple[str, ...] = ()
    # The bundle's gs:// URL when the code went to the job bucket, else "".
    bundle_url: str = ""
    # False when the bundle of this commit was already in the bucket (nothing uploaded).
    uploaded: bool = True

    @property
    def summary(self) -> str:
        if not self.bundle_url:
            return f"pushed {self.commit} to {self.branch} of {self.remote}"
        how = "uploaded" if self.uploaded else "already in the bucket"
        return f"pushed {self.commit} (branch {self.branch}) as {self.bundle_url} ({how})"


def bundle_url(bucket: str, commit: str) -> str:
    """The gs:// URL of the bundle of ``commit`` in ``bucket``."""
    return f"gs://{bucket}/{BUNDLE_PREFIX}/{commit}.bundle"


class BundleStore:
    """Snapshot bundles in the job bucket, through a google-cloud-storage client (the one
    survival.backend makes: ADC on GCE, fake-gcs-server on localgce)."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket_name = bucket

    @property
    def _bucket(self) -> Any:
        if self.client is None:
            raise ConfigError("no Cloud Storage client for the job bucket (internal error)")
        return self.client.bucket(self.bucket_name)

    def url(self, commit: str) -> str:
        return bundle_url(self.bucket_name, commit)

    @contextlib.contextmanager
    def _errors(self, what: str, missing_ok: bool = False) -> Iterator[None]:
        """Denied and missing-bucket answers as one-line ConfigErrors. ``missing_ok``: a 404
        (the object is absent; the bucket was checked when the client was made) is re-raised."""
        from google.api_core import exceptions

        try:
            yield
        except (exceptions.Forbidden, exceptions.Unauthorized) as error:
            raise ConfigError(
                f"{what}: access to gs://{self.bucket_name} denied ({_first_line(error)}); your "
                "account needs roles/storage.objectUser on the job bucket"
            ) from None
        except exceptions.NotFound as error:
            if missing_ok:
                raise
            raise ConfigError(
                f"{what}: gs://{self.bucket_name} not found ({_first_line(error)}); create the "
                "job bucket or set survival.job_bucket"
            ) from None

    def put(self, commit: str, path: Path) -> bool:
        """Upload the bundle file of ``commit`` unless the bucket has it; True if uploaded.
        ``if_generation_match=0`` makes the server refuse (412) when the object exists: then
        the existing object must be a non-empty bundle of the same commit."""
        from google.api_core import exceptions

        url = self.url(commit)
        blob = self._bucket.blob(f"{BUNDLE_PREFIX}/{commit}.bundle")
        blob.metadata = {BUNDLE_COMMIT_METADATA: commit}
        try:
            with self._errors(f"upload of {url}"):
                blob.upload_from_filename(
                    str(path), content_type="application/octet-stream", if_generation_match=0
                )
        except exceptions.PreconditionFailed:
            # Already there (an earlier push of the same code, or our own first try whose reply
            # was lost and was retried): keep it, after checking what it is.
            with self._errors(f"check of {url}"):
                found = self._bucket.get_blob(f"{BUNDLE_PREFIX}/{commit}.bundle")
            self._check_existing(found, commit, url)
            return False
        return True

    @staticmethod
    def _check_existing(found: Any, commit: str, url: str) -> None:
        if found is None:
            raise ConfigError(f"{url} was reported to exist but cannot be read; push again")
        holds = (found.metadata or {}).get(BUNDLE_COMMIT_METADATA)
        if not found.size or holds != commit:
            raise ConfigError(
                f"{url} exists but is not push-code's bundle of {commit[:12]} (size "
                f"{found.size}, commit {holds!r}); delete it with `gcloud storage rm {url}` "
                "and push again"
            )

    def has(self, commit: str) -> bool:
        url = self.url(commit)
        with self._errors(f"check of {url}"):
            found = self._bucket.get_blob(f"{BUNDLE_PREFIX}/{commit}.bundle")
        if found is None:
            return False
        self._check_existing(found, commit, url)
        return True

    def set_tip(self, branch: str, commit: str) -> None:
        blob = self._bucket.blob(f"{BRANCH_TIPS_PREFIX}/{branch}")
        with self._errors(f"update of gs://{self.bucket_name}/{BRANCH_TIPS_PREFIX}/{branch}"):
            blob.upload_from_string(f"{commit}\n", content_type="text/plain")

    def tip(self, branch: str) -> str | None:
        """The newest commit pushed for ``branch``, or None if it was never pushed."""
        from google.api_core import exceptions

        name = f"{BRANCH_TIPS_PREFIX}/{branch}"
        try:
            with self._errors(f"read of gs://{self.bucket_name}/{name}", missing_ok=True):
                data = self._bucket.blob(name).download_as_bytes()
        except exceptions.NotFound:
            return None
        commit = data.decode(errors="replace").strip()
        if not COMMIT_RE.match(commit):
            raise ConfigError(
                f"gs://{self.bucket_name}/{name} does not hold a commit; push again with "
                f"`invoke push-code --branch {branch}`"
            )
        return commit


def _first_line(error: Exception) -> str:
    text = getattr(error, "message", None) or str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def normalize_branch(branch: str) -> str:
    """``refs/heads/x`` → ``x``: the kit always pushes to refs/heads/BRANCH itself."""
    if isinstance(branch, str) and branch.startswith(FULL_REF_PREFIX):
        return branch[len(FULL_REF_PREFIX) :]
    return branch


def validate_branch(branch: str) -> str:
    """The branch's short name (``refs/heads/`` dropped), or ConfigError saying what is wrong."""
    branch = normalize_branch(branch)
    if isinstance(branch, str) and len(branch) > BRANCH_MAX_CHARS:
        raise ConfigError(
            f"branch {branch[:20]!r}... is not allowed: it is too long ({len(branch)} "
            f"characters; at most {BRANCH_MAX_CHARS})"
        )
    if isinstance(branch, str) and branch.startswith("refs/"):
        raise ConfigError(
            f"branch {branch!r} is not allowed: give a branch name, e.g. --branch exp1 "
            "(push-code writes refs/heads/BRANCH)"
        )
    if not BRANCH_RE.match(branch or ""):
        raise ConfigError(
            f"branch {branch!r} is not allowed: use letters, digits and . _ / - only "
            "(e.g. --branch exp1)"
        )
    return branch


def _git(args: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise ConfigError(f"git {args[0]} failed: {detail[-1] if detail else proc.returncode}")
    return proc.stdout.strip()


def credential_args(remote: str) -> list[str]:
    """``-c`` options for CSR: gcloud's credential helper when gcloud is installed."""
    if remote.startswith(CSR_HOST) and shutil.which("gcloud"):
        key = f"credential.{CSR_HOST}.helper"
        # The empty value resets helpers from the user's config; the constant helper string is
        # how `gcloud source repos clone` configures it (it is git that runs it, not us).
        return ["-c", f"{key}=", "-c", f"{key}=!gcloud auth git-helper --ignore-unknown $@"]
    return []


def ensure_local_remote(remote: str) -> None:
    """Create the bare repository behind a file:// URL on first use (localgce's trainer repo)."""
    parsed = urlparse(remote)
    if parsed.scheme != "file":
        return
    path = Path(parsed.path)
    if not (path / "HEAD").exists():
        path.mkdir(parents=True, exist_ok=True)
        _git(["init", "--quiet", "--bare", str(path)], cwd=path)


def remote_branch_tip(worktree: Path, remote: str, branch: str) -> str | None:
    """The commit of refs/heads/BRANCH in the remote, or None if the branch does not exist."""
    out = _git([*credential_args(remote), "ls-remote", remote, f"refs/heads/{branch}"], worktree)
    return out.split()[0] if out else None


def looks_secret(path: str) -> bool:
    name = path.rpartition("/")[2]
    return any(fnmatch.fnmatchcase(name.lower(), pattern) for pattern in SECRET_PATTERNS)


def _included(toplevel: Path, worktree: Path, include: Iterable[str]) -> list[str]:
    """--include FILE arguments as paths relative to the top of the working tree."""
    paths = []
    for item in include:
        path = (worktree / item).resolve()
        if not path.is_file():
            raise ConfigError(f"--include {item}: no such file in {worktree}")
        try:
            paths.append(path.relative_to(toplevel.resolve()).as_posix())
        except ValueError:
            raise ConfigError(f"--include {item}: not inside the working tree {toplevel}") from None
    return paths


def snapshot(
    worktree: Path,
    message: str,
    extra_parent: str | None = None,
    include: Iterable[str] = (),
    dated_like_head: bool = False,
) -> tuple[str, tuple[str, ...]]:
    """Commit the working tree as it is (tracked + untracked, minus what .gitignore ignores and
    files that look like secrets, unless ``include`` names them) without touching the user's
    index or refs; return the commit hash and the files left out as secrets.
    ``dated_like_head``: the commit takes HEAD's commit date instead of the time now, so the
    same tree on the same HEAD always gives the same commit."""
    toplevel = Path(_git(["rev-parse", "--show-toplevel"], worktree))
    head = _git(["rev-parse", "--verify", "--quiet", "HEAD"], toplevel, check=False) or None
    wanted = _included(toplevel, worktree, include)
    dates = {}
    if dated_like_head:
        date = _git(["show", "-s", "--format=%ct %z", head], toplevel) if head else NO_HEAD_DATE
        dates = {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    with tempfile.TemporaryDirectory(prefix="survival-index-") as tmp:
        env = {
            **os.environ,
            **SNAPSHOT_AUTHOR,
            **dates,
            "GIT_INDEX_FILE": str(Path(tmp) / "index"),
            # Paths below are file names, never patterns (a file may be called "*.pem").
            "GIT_LITERAL_PATHSPECS": "1",
        }
        if head:
            _git(["read-tree", head], toplevel, env)
        _git(["add", "--all", "--", "."], toplevel, env)
        staged = _git(["ls-files", "-z"], toplevel, env).split("\0")
        left_out = tuple(p for p in staged if p and looks_secret(p) and p not in wanted)
        if left_out:
            _git(["rm", "--cached", "--quiet", "--", *left_out], toplevel, env)
        if wanted:
            # Asked for by name: taken even where .gitignore would leave it out.
            _git(["add", "--force", "--", *wanted], toplevel, env)
        tree = _git(["write-tree"], toplevel, env)
        parents: list[str] = []
        for parent in (head, extra_parent):
            if parent and parent not in parents:
                parents += ["-p", parent]
        commit = _git(["commit-tree", tree, *parents, "-m", message], toplevel, env)
    return commit, left_out


def _warn(line: str) -> None:
    print(line, file=sys.stderr)


def _warn_left_out(left_out: tuple[str, ...], warn: Callable[[str], None]) -> None:
    if left_out:
        warn(
            f"push-code: WARNING: left out {len(left_out)} file(s) that look like secrets: "
            f"{', '.join(left_out)} (push one on purpose with --include FILE)"
        )


def write_bundle(worktree: Path, commit: str, branch: str, path: Path) -> None:
    """Write a bundle of ``commit`` (and its history) to ``path``, with the one ref
    refs/heads/BRANCH. ``git bundle create`` needs a ref to name, and the user's refs are not
    ours to touch: the ref is made in a throwaway bare repository that borrows the working
    tree's objects (objects/info/alternates), so nothing is copied and nothing is left behind."""
    common = Path(_git(["rev-parse", "--git-common-dir"], worktree))
    objects = (common if common.is_absolute() else (worktree / common)).resolve() / "objects"
    with tempfile.TemporaryDirectory(prefix="survival-bundle-") as tmp:
        repo = Path(tmp) / "snapshot.git"
        _git(["init", "--quiet", "--bare", str(repo)], cwd=Path(tmp))
        (repo / "objects" / "info" / "alternates").write_text(f"{objects}\n")
        env = {**os.environ, "GIT_DIR": str(repo)}
        _git(["update-ref", f"refs/heads/{branch}", commit], cwd=Path(tmp), env=env)
        _git(["bundle", "create", "--quiet", str(path), f"refs/heads/{branch}"], Path(tmp), env)


def push_bundle(
    worktree: Path,
    bundles: BundleStore,
    branch: str,
    include: Iterable[str] = (),
    warn: Callable[[str], None] = _warn,
) -> PushResult:
    """Snapshot ``worktree`` and write its bundle to the job bucket (once per commit); record
    the commit as the branch's newest. Secret-looking files are left out as for a remote."""
    branch = validate_branch(branch)
    commit, left_out = snapshot(
        worktree,
        f"push-code snapshot for branch {branch}",
        include=include,
        dated_like_head=True,
    )
    _warn_left_out(left_out, warn)
    with tempfile.TemporaryDirectory(prefix="survival-push-") as tmp:
        path = Path(tmp) / f"{commit}.bundle"
        write_bundle(worktree, commit, branch, path)
        uploaded = bundles.put(commit, path)
    bundles.set_tip(branch, commit)
    url = bundles.url(commit)
    return PushResult(commit, branch, url, left_out, bundle_url=url, uploaded=uploaded)


def push_code(
    worktree: Path,
    remote: str,
    branch: str,
    include: Iterable[str] = (),
    warn: Callable[[str], None] = _warn,
    bundles: BundleStore | None = None,
) -> PushResult:
    """Snapshot ``worktree`` and push it to refs/heads/BRANCH of ``remote``; with no remote
    (``""``, the default ``survival.trainer_repo``) write its bundle to ``bundles`` instead.
    Files that look like secrets are left out (one ``warn`` line names them) unless
    ``include`` names them."""
    if not remote:
        return push_bundle(worktree, _need(bundles), branch, include, warn)
    branch = validate_branch(branch)
    ensure_local_remote(remote)
    tip = remote_branch_tip(worktree, remote, branch)
    if tip:
        # Bring the tip's objects in so commit-tree can name it as a parent (FETCH_HEAD only).
        _git(
            [*credential_args(remote), "fetch", "--quiet", remote, f"refs/heads/{branch}"], worktree
        )
    commit, left_out = snapshot(
        worktree, f"push-code snapshot for branch {branch}", extra_parent=tip, include=include
    )
    _warn_left_out(left_out, warn)
    _git(
        [*credential_args(remote), "push", "--quiet", remote, f"{commit}:refs/heads/{branch}"],
        worktree,
    )
    return PushResult(commit=commit, branch=branch, remote=remote, left_out=left_out)


def _need(bundles: BundleStore | None) -> BundleStore:
    if bundles is None:
        raise ConfigError("survival.trainer_repo is empty but no job bucket was opened (internal)")
    return bundles


def require_branch(
    worktree: Path, remote: str, branch: str, bundles: BundleStore | None = None
) -> str:
    """The tip of an already pushed branch (in ``remote``, or with no remote the newest bundle
    pushed for it), or a clear error saying how to push it."""
    branch = validate_branch(branch)
    if not remote:
        store = _need(bundles)
        commit = store.tip(branch)
        if commit is None or not store.has(commit):
            where = f"gs://{store.bucket_name}/{BUNDLE_PREFIX}/"
            raise ConfigError(
                f"branch {branch!r} has no bundle in {where}: run `invoke push-code --branch "
                f"{branch}` or drop --no-push"
            )
        return commit
    ensure_local_remote(remote)
    tip = remote_branch_tip(worktree, remote, branch)
    if not tip:
        raise ConfigError(
            f"branch {branch!r} does not exist in {remote}: run `invoke push-code --branch "
            f"{branch}` or drop --no-push"
        )
    return tip
