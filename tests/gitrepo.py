"""Git for tests: one `git` runner with a test identity, and a repository made from files.

A plain module next to tests/conftest.py, imported as ``from gitrepo import git, new_repo``
(like polling.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

IDENTITY = ("-c", "user.name=test", "-c", "user.email=test@example.invalid")


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo``; its stdout, stripped (a failure raises CalledProcessError)."""
    return subprocess.run(
        ["git", "-C", str(repo), *IDENTITY, *args],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip


def new_repo(path: Path, files: dict[str, str], branch: str = "main") -> Path:
    """A repository at ``path`` whose first commit on ``branch`` holds ``files``."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "--quiet", f"--initial-branch={branch}")
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "--quiet", "-m", "v1")
    return path
