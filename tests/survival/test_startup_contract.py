"""`invoke train` and the VM's startup.sh judge the step counts alike: a value the orchestrator
accepts is one startup.sh accepts, so a job is never refused only once its VM has booted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from survival.errors import ConfigError
from survival.request import TrainRequest, validate

STARTUP = Path(__file__).resolve().parents[2] / "startup" / "startup.sh"
EDGES = ["0", "1", "50", "999999999", "1000000000", "-1"]


def _startup_pattern(key: str) -> re.Pattern[str]:
    """The pattern startup.sh checks metadata ``key`` against (its ERE is valid Python regex)."""
    text = STARTUP.read_text()
    variable = re.search(rf'startup::value \S+ {re.escape(key)} "\$\{{(\w+)\}}"', text).group(1)
    return re.compile(re.search(rf"readonly {variable}='([^']*)'", text).group(1))


def _accepted_by_train(**counts: str) -> bool:
    flags = dict(branch="exp1", example="sklearn_digits", hparams=(), name=None, zone=None,
                 gpu=None, machine_type=None, provisioning=None, follow=False, push=False,
                 keep_alive=False)  # fmt: skip
    try:
        validate(TrainRequest.from_flags(**flags, **counts))
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("value", EDGES)
def test_train_steps_agree_with_startup(value):
    accepted_on_vm = bool(_startup_pattern("train-steps").fullmatch(value))
    assert _accepted_by_train(train_steps=value) == accepted_on_vm


@pytest.mark.parametrize("value", EDGES)
def test_checkpoint_steps_agree_with_startup(value):
    accepted_on_vm = bool(_startup_pattern("checkpoint-steps").fullmatch(value))
    assert _accepted_by_train(checkpoint_steps=value) == accepted_on_vm
