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


def test_chaos_beyond_the_steps_is_one_line_before_anything_is_pushed_or_created(tmp_path):
    import os

    state_dir = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_SURVIVAL_")}
    env["INVOKE_SURVIVAL_LOCAL_STATE_DIR"] = str(state_dir)
    result = invoke("train", "--branch", "exp1", "--chaos", "5", "--train-steps", "3", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("error: --chaos 5 needs more --train-steps than 3")
    assert result.stdout == ""
    # No emulator was started for it (so nothing pushed to its repo, no instance created).
    assert not state_dir.exists()


def test_down_takes_a_name_or_all_without_shadowing_the_builtin():
    import copy
    import inspect

    from invoke.parser import Parser, ParserContext

    import tasks

    down = tasks.ns.tasks["down"]
    assert "all" not in inspect.signature(down.body).parameters
    # get_arguments consumes the task's help: parse with a copy.
    context = ParserContext(name="down", args=copy.deepcopy(down).get_arguments())
    by_name = Parser(contexts=[context]).parse_argv(["down", "job1"])[0]
    assert by_name.as_kwargs == {"all_": "job1"}
    every = Parser(contexts=[context]).parse_argv(["down", "--all"])[0]
    assert every.as_kwargs == {"all_": True}
    # Neither: Invoke refuses it before the task runs (it has no optional positionals).
    neither = invoke("down")
    assert neither.returncode == 1 and neither.stderr.strip().count("\n") == 0
