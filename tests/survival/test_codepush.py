"""push-code snapshots the working tree (dirty changes included) without touching the user's
branch, HEAD or index, and every push fast-forwards the trainer-repo branch."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from survival.codepush import push_code, require_branch, validate_branch
from survival.errors import ConfigError


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    tree = tmp_path / "work"
    tree.mkdir()
    git(tree, "init", "-q", "-b", "main")
    git(tree, "config", "user.email", "dev@example.invalid")
    git(tree, "config", "user.name", "Dev")
    (tree / ".gitignore").write_text("ignored.txt\n")
    (tree / "train.py").write_text("print('v1')\n")
    git(tree, "add", ".")
    git(tree, "commit", "-qm", "v1")
    return tree


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
