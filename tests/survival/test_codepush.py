"""push-code snapshots the working tree (dirty changes included) without touching the user's
branch, HEAD or index, and every push fast-forwards the trainer-repo branch. It leaves out files
that look like secrets (one warning line names them), honours .gitignore, and takes a named file
in on purpose with --include."""

from __future__ import annotations

from pathlib import Path

import pytest
from gitrepo import git, new_repo

from survival.codepush import push_code, require_branch, validate_branch
from survival.errors import ConfigError

SECRETS = (".env", ".env.local", "deploy/server.pem", "tls.key", "id_rsa", "id_rsa.pub",
           "gcp-credentials.json", "cert.p12")  # fmt: skip


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    files = {".gitignore": "ignored.txt\nlocal/\n", "train.py": "print('v1')\n"}
    return new_repo(tmp_path / "work", files)


def test_dirty_tree_is_pushed_and_user_state_untouched(worktree: Path, tmp_path: Path):
    remote = (tmp_path / "remote" / "trainer.git").as_uri()
    (worktree / "train.py").write_text("print('v2 uncommitted')\n")
    (worktree / "new_module.py").write_text("X = 1\n")
    (worktree / "ignored.txt").write_text("secret\n")
    git(worktree, "add", "train.py")  # something staged, to check the index survives
    head, index = git(worktree, "rev-parse", "HEAD"), git(worktree, "diff", "--cached")
    status = git(worktree, "status", "--porcelain")

    result = push_code(worktree, remote, "exp1")

    bare = tmp_path / "remote" / "trainer.git"
    assert git(bare, "rev-parse", "refs/heads/exp1") == result.commit
    assert git(bare, "show", f"{result.commit}:train.py") == "print('v2 uncommitted')"
    assert git(bare, "show", f"{result.commit}:new_module.py") == "X = 1"
    listed = git(bare, "ls-tree", "--name-only", result.commit).split()
    assert "ignored.txt" not in listed
    assert git(worktree, "rev-parse", "HEAD") == head
    assert git(worktree, "diff", "--cached") == index
    assert git(worktree, "status", "--porcelain") == status
    assert git(worktree, "branch", "--list", "exp1") == ""

    (worktree / "train.py").write_text("print('v3')\n")
    second = push_code(worktree, remote, "exp1")
    assert second.commit != result.commit
    # Fast-forward: the first snapshot stays reachable for instances still training on it.
    git(bare, "merge-base", "--is-ancestor", result.commit, second.commit)
    assert require_branch(worktree, remote, "exp1") == second.commit


def test_missing_branch_is_a_clear_error(worktree: Path, tmp_path: Path):
    remote = (tmp_path / "remote" / "trainer.git").as_uri()
    with pytest.raises(ConfigError, match=r"does not exist.*invoke push-code --branch nope"):
        require_branch(worktree, remote, "nope")


@pytest.mark.parametrize(
    "branch", ["exp1;touch /tmp/x", "$(id)", "`id`", "a\nb", "'q'", "-rf", "a..b", "x" * 200, ""]
)
def test_hostile_branch_names_rejected(branch: str):
    with pytest.raises(ConfigError, match="is not allowed"):
        validate_branch(branch)


def pushed_files(tmp_path: Path, commit: str) -> set[str]:
    bare = tmp_path / "remote" / "trainer.git"
    return set(git(bare, "ls-tree", "-r", "--name-only", commit).splitlines())


def test_secret_looking_files_are_left_out_with_one_warning(worktree: Path, tmp_path: Path):
    remote = (tmp_path / "remote" / "trainer.git").as_uri()
    for name in SECRETS:
        (worktree / name).parent.mkdir(parents=True, exist_ok=True)
        (worktree / name).write_text("API_KEY=sk-123\n")
    (worktree / "ignored.txt").write_text("x\n")
    (worktree / "local").mkdir()
    (worktree / "local" / "notes.txt").write_text("x\n")
    (worktree / "model_keys.py").write_text("KEYS = 1\n")  # not a secret by its name
    (worktree / "versions.env").write_text("PINNED=1\n")  # settings, not a dotenv file
    warnings: list[str] = []

    result = push_code(worktree, remote, "exp1", warn=warnings.append)

    files = pushed_files(tmp_path, result.commit)
    assert files == {".gitignore", "train.py", "model_keys.py", "versions.env"}
    assert sorted(result.left_out) == sorted(SECRETS)
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert all(name in warnings[0] for name in SECRETS)
    assert "--include" in warnings[0]
    # The user's working tree and index are untouched.
    assert (worktree / ".env").exists()
    assert git(worktree, "diff", "--cached") == ""


def test_include_takes_one_in_on_purpose(worktree: Path, tmp_path: Path):
    remote = (tmp_path / "remote" / "trainer.git").as_uri()
    (worktree / ".env").write_text("API_KEY=sk-123\n")
    (worktree / "server.pem").write_text("-----BEGIN-----\n")
    warnings: list[str] = []

    result = push_code(worktree, remote, "exp1", include=[".env"], warn=warnings.append)

    files = pushed_files(tmp_path, result.commit)
    assert ".env" in files and "server.pem" not in files
    assert result.left_out == ("server.pem",)
    with pytest.raises(ConfigError, match=r"--include nope\.env: no such file"):
        push_code(worktree, remote, "exp1", include=["nope.env"], warn=warnings.append)


def test_a_full_ref_is_pushed_to_the_branch_itself(worktree: Path, tmp_path: Path):
    remote = (tmp_path / "remote" / "trainer.git").as_uri()
    result = push_code(worktree, remote, "refs/heads/exp1")
    bare = tmp_path / "remote" / "trainer.git"
    assert result.branch == "exp1"
    assert git(bare, "for-each-ref", "--format=%(refname)") == "refs/heads/exp1"
