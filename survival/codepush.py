"""push-code: snapshot the working tree (uncommitted changes included) onto a trainer-repo branch.

The user's branch, index and HEAD are never touched: the snapshot is built in a temporary index
(GIT_INDEX_FILE), written with write-tree, committed with commit-tree and pushed by hash to
refs/heads/BRANCH. The new commit's parents are the user's HEAD and the branch's current tip in
the trainer repo, so every push fast-forwards and every earlier snapshot stays fetchable by the
instances still training on it.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from survival.errors import ConfigError

CSR_HOST = "https://source.developers.google.com"
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
    remote: str
    # Files of the working tree left out because they look like secrets.
    left_out: tuple[str, ...] = ()


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
) -> tuple[str, tuple[str, ...]]:
    """Commit the working tree as it is (tracked + untracked, minus what .gitignore ignores and
    files that look like secrets, unless ``include`` names them) without touching the user's
    index or refs; return the commit hash and the files left out as secrets."""
    toplevel = Path(_git(["rev-parse", "--show-toplevel"], worktree))
    head = _git(["rev-parse", "--verify", "--quiet", "HEAD"], toplevel, check=False) or None
    wanted = _included(toplevel, worktree, include)
    with tempfile.TemporaryDirectory(prefix="survival-index-") as tmp:
        env = {
            **os.environ,
            **SNAPSHOT_AUTHOR,
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


def push_code(
    worktree: Path,
    remote: str,
    branch: str,
    include: Iterable[str] = (),
    warn: Callable[[str], None] = _warn,
) -> PushResult:
    """Snapshot ``worktree`` and push it to refs/heads/BRANCH of ``remote``. Files that look like
    secrets are left out (one ``warn`` line names them) unless ``include`` names them."""
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
    if left_out:
        warn(
            f"push-code: WARNING: left out {len(left_out)} file(s) that look like secrets: "
            f"{', '.join(left_out)} (push one on purpose with --include FILE)"
        )
    _git(
        [*credential_args(remote), "push", "--quiet", remote, f"{commit}:refs/heads/{branch}"],
        worktree,
    )
    return PushResult(commit=commit, branch=branch, remote=remote, left_out=left_out)


def require_branch(worktree: Path, remote: str, branch: str) -> str:
    """The tip of an already pushed branch, or a clear error saying how to push it."""
    branch = validate_branch(branch)
    ensure_local_remote(remote)
    tip = remote_branch_tip(worktree, remote, branch)
    if not tip:
        raise ConfigError(
            f"branch {branch!r} does not exist in {remote}: run `invoke push-code --branch "
            f"{branch}` or drop --no-push"
        )
    return tip
