"""push-code leaves out files that look like secrets (one warning line names them), honours
.gitignore, and takes a named file in on purpose with --include."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from survival.codepush import push_code
from survival.errors import ConfigError

SECRETS = (".env", ".env.local", "deploy/server.pem", "tls.key", "id_rsa", "id_rsa.pub",
           "gcp-credentials.json", "cert.p12")  # fmt: skip


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
    (tree / ".gitignore").write_text("ignored.txt\nlocal/\n")
    (tree / "train.py").write_text("print('v1')\n")
    git(tree, "add", ".")
    git(tree, "commit", "-qm", "v1")
    return tree


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
    warnings: list[str] = []

    result = push_code(worktree, remote, "exp1", warn=warnings.append)

    files = pushed_files(tmp_path, result.commit)
    assert files == {".gitignore", "train.py", "model_keys.py"}
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
