"""What `invoke train` asks for, and its validation: a light module (no cloud SDK), so the task
can build a `TrainRequest` without importing the rest of the orchestrator.

Everything the user typed is validated before anything is pushed or created, so a bad flag is
one line of error and no cloud side effect.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from survival.codepush import validate_branch
from survival.errors import ConfigError

EXAMPLES = {
    "keras_digits": "trainer.examples.keras_digits",
    "sklearn_digits": "trainer.examples.sklearn_digits",
}
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
HPARAM_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
HPARAM_WORD_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,100}$")
MAX_TRAIN_STEPS = 10**9


@dataclass(frozen=True, kw_only=True)
class TrainRequest:
    """The flags of `invoke train`, as the task received them. Their defaults and help live in
    the task's signature (survival/tasks.py); None means "not given: use the setting"."""

    branch: str
    example: str
    train_steps: int
    checkpoint_steps: int
    seed: int
    hparams: tuple[str, ...]
    name: str | None
    zone: str | None
    gpu: str | None
    machine_type: str | None
    provisioning: str | None
    follow: bool
    chaos: int
    push: bool
    keep_alive: bool


def parse_hparams(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``k=v`` pairs → a dict; values become int, float, bool or a simple word."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not HPARAM_KEY_RE.match(key):
            raise ConfigError(
                f"--hparam {pair!r}: use NAME=VALUE, e.g. --hparam learning_rate=0.01"
            )
        value: Any
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            try:
                value = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                except ValueError:
                    if not HPARAM_WORD_RE.match(raw):
                        raise ConfigError(
                            f"--hparam {key}: {raw[:40]!r} is not a number, true/false or a "
                            "simple word (letters, digits, . _ + -)"
                        ) from None
                    value = raw
        result[key] = value
    return result


def default_name(branch: str, now_unix: float) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", branch.lower()).strip("-")[:40] or "job"
    if not stem[0].isalpha():
        stem = f"job-{stem}"[:40]
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now_unix))}"


def validate(req: TrainRequest) -> tuple[str, dict[str, Any]]:
    """(module, hparams) for a request, or ConfigError on the first bad value."""
    validate_branch(req.branch)
    if req.example not in EXAMPLES:
        raise ConfigError(f"--example {req.example!r}: use one of {', '.join(EXAMPLES)}")
    if not 0 < req.train_steps <= MAX_TRAIN_STEPS:
        raise ConfigError(f"--train-steps must be between 1 and {MAX_TRAIN_STEPS}")
    if not 0 < req.checkpoint_steps <= MAX_TRAIN_STEPS:
        raise ConfigError("--checkpoint-steps must be a positive number of steps")
    if req.chaos < 0:
        raise ConfigError("--chaos must be a number of preemptions, 0 or more")
    if not 0 <= req.seed < 10**9:
        raise ConfigError("--seed must be between 0 and 999999999")
    if req.name is not None and not NAME_RE.match(req.name):
        raise ConfigError(
            f"--name {req.name!r}: use 1-63 lower-case letters, digits and '-', "
            "starting with a letter"
        )
    return EXAMPLES[req.example], parse_hparams(req.hparams)
