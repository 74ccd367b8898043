"""Acceptance 5: `invoke --list` shows every task with a summary, every flag has help, and user
errors are one line that says what to do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OUR_TASKS = ("config", "push-code", "train", "watch", "ssh-logs", "status", "preempt", "down",
             "jobs.plot")  # fmt: skip


def invoke(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True,
        timeout=120, check=False, env=env,
    )  # fmt: skip


def test_list_shows_every_task_with_a_summary():
    out = invoke("--list").stdout
    for name in OUR_TASKS:
        line = next((x for x in out.splitlines() if x.strip().startswith(name + " ")), "")
        assert len(line.split(None, 1)) == 2, f"{name} has no summary in:\n{out}"


@pytest.mark.parametrize("name", OUR_TASKS)
def test_every_flag_has_help(name):
    import tasks

    task = {t.name: t for t in tasks.ns.tasks.values()}.get(name.split(".")[-1])
    if task is None:
        task = tasks.ns.collections["jobs"].tasks["plot"]
    import inspect

    params = list(inspect.signature(task.body).parameters)[1:]  # all but the context
    helps = task.help or {}
    for param in params:
        assert helps.get(param), f"{name} --{param} has no help"


def test_user_errors_are_one_line(tmp_path):
    import os

    env = {**os.environ, "INVOKE_SURVIVAL_BACKEND": "gce"}
    result = invoke("config", env=env)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "INVOKE_SURVIVAL_PROJECT" in result.stderr
    bad = invoke("train", "--branch", "exp1;touch /tmp/x", "--no-follow")
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0
    assert "is not allowed" in bad.stderr
