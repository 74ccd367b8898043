"""trainer/exitcodes.py and startup/startup.sh's EX_* values are one contract written twice."""

from __future__ import annotations

import re

from tests.trainer import helpers
from trainer import exitcodes

EX_LINE = re.compile(r"^readonly EX_([A-Z_]+)=([0-9]+)$", re.MULTILINE)


def _shell_codes() -> dict[str, int]:
    text = (helpers.REPO / "startup" / "startup.sh").read_text()
    return {name: int(value) for name, value in EX_LINE.findall(text)}


def _trainer_codes() -> dict[str, int]:
    return {
        name: value
        for name, value in vars(exitcodes).items()
        if name.isupper() and isinstance(value, int)
    }


def test_startup_sh_mirrors_every_trainer_exit_code():
    trainer = _trainer_codes()
    assert trainer, "no exit codes found in trainer/exitcodes.py"
    assert _shell_codes() == trainer


def test_startup_sh_own_exit_codes_do_not_collide_with_the_trainers():
    text = (helpers.REPO / "startup" / "startup.sh").read_text()
    own = {int(v) for v in re.findall(r"^readonly STARTUP_EX_[A-Z_]+=([0-9]+)$", text, re.M)}
    assert own.isdisjoint(_trainer_codes().values())
