"""What `invoke train` asks for, and its validation: a light module (no cloud SDK), so the task
can build a `TrainRequest` without importing the rest of the orchestrator.

Everything the user typed is validated before anything is pushed or created, so a bad flag is
one line of error and no cloud side effect.
"""

from __future__ import annotations

import importlib
import random
import re
import string
import time
from dataclasses import dataclass
from typing import Any

from survival.codepush import normalize_branch, validate_branch
from survival.errors import ConfigError

EXAMPLES = {
    "keras_digits": "trainer.examples.keras_digits",
    "sklearn_digits": "trainer.examples.sklearn_digits",
    # Checkpoint size as a knob (--hparam checkpoint_mb=100): the checkpoint path at scale.
    "numpy_wide": "trainer.examples.numpy_wide",
}
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
HPARAM_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
HPARAM_WORD_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,100}$")
# startup.sh accepts a count of at most 9 digits; refusing more here keeps the VM from failing.
MAX_TRAIN_STEPS = 10**9 - 1
# The flags' defaults. The task declares its numeric flags as text (Invoke would turn a non-number
# into a traceback while parsing), so the defaults live here, next to their validation.
DEFAULT_TRAIN_STEPS = 300
DEFAULT_CHECKPOINT_STEPS = 50
NAME_SUFFIX_CHARS = string.ascii_lowercase + string.digits
NAME_SUFFIX_LENGTH = 4
# Instance names are unique per project and zone: the random suffix keeps two trains of one
# branch in the same second apart. Only uniqueness matters, not unpredictability.
_NAME_RNG = random.Random()  # noqa: S311
_WHOLE_RE = re.compile(r"^-?[0-9]{1,12}$")
_HOURS_RE = re.compile(r"^[0-9]{1,6}(\.[0-9]{1,9})?$")


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
    # Files push-code would leave out as secrets, taken in on purpose (--include).
    include: tuple[str, ...] = ()
    # --max-run-hours: each VM's run-time cap (0: none); None: survival.max_run_hours.
    max_run_hours: float | None = None

    def __post_init__(self) -> None:
        # `--branch refs/heads/x` means branch x: push-code, the job record and the VM must all
        # see the same short name, never refs/heads/refs/heads/x.
        object.__setattr__(self, "branch", normalize_branch(self.branch))

    @classmethod
    def from_flags(
        cls,
        *,
        train_steps: Any = None,
        checkpoint_steps: Any = None,
        seed: Any = None,
        chaos: Any = None,
        max_run_hours: Any = None,
        **flags: Any,
    ) -> TrainRequest:
        """A request from the task's flags: the numeric ones arrive as text (or None: not given)
        and are turned into whole numbers here, so `--train-steps abc` is a one-line error."""
        return cls(
            train_steps=whole_number("--train-steps", train_steps, DEFAULT_TRAIN_STEPS),
            checkpoint_steps=whole_number(
                "--checkpoint-steps", checkpoint_steps, DEFAULT_CHECKPOINT_STEPS
            ),
            seed=whole_number("--seed", seed, 0),
            chaos=whole_number("--chaos", chaos, 0),
            max_run_hours=hours("--max-run-hours", max_run_hours),
            **flags,
        )


def hours(flag: str, value: Any) -> float | None:
    """``value`` (text from the command line, a number, or None: not given) as hours, >= 0."""
    if value is None:
        return None
    text = str(value).strip()
    if not _HOURS_RE.match(text):
        raise ConfigError(f"{flag} {str(value)[:40]!r}: use a number of hours, e.g. 6 or 0.5")
    return float(text)


def whole_number(flag: str, value: Any, default: int) -> int:
    """``value`` (text from the command line, an int, or None for ``default``) as an int."""
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if not _WHOLE_RE.match(text):
        raise ConfigError(f"{flag} {str(value)[:40]!r} is not a whole number")
    return int(text)


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


def default_name(branch: str, now_unix: float, rng: random.Random | None = None) -> str:
    """BRANCH-YYYYMMDD-HHMMSS-xxxx: at most 40 + 16 + 5 = 61 characters, a valid GCE name."""
    stem = re.sub(r"[^a-z0-9-]+", "-", branch.lower()).strip("-")[:40].strip("-") or "job"
    if not stem[0].isalpha():
        stem = f"job-{stem}"[:40].rstrip("-")
    chooser = rng or _NAME_RNG
    suffix = "".join(chooser.choice(NAME_SUFFIX_CHARS) for _ in range(NAME_SUFFIX_LENGTH))
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now_unix))}-{suffix}"


def check_hparams(example: str, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` checked against the example's declared hyperparameters (names, types, allowed
    values), the same declaration the trainer checks again on the VM. Importing the example
    module is cheap: its framework is imported only when a Task is built."""
    from trainer.hparams import HParamError
    from trainer.hparams import validate as validate_hparams

    spec = importlib.import_module(EXAMPLES[example]).HPARAMS
    try:
        return validate_hparams(spec, given)
    except HParamError as error:
        raise ConfigError(f"--hparam: {error} (--example {example})") from None


def validate(req: TrainRequest) -> tuple[str, dict[str, Any]]:
    """(module, hparams) for a request, or ConfigError on the first bad value."""
    validate_branch(req.branch)
    if req.example not in EXAMPLES:
        raise ConfigError(f"--example {req.example!r}: use one of {', '.join(EXAMPLES)}")
    if not 0 < req.train_steps <= MAX_TRAIN_STEPS:
        raise ConfigError(f"--train-steps must be between 1 and {MAX_TRAIN_STEPS}")
    # 0 is what the trainer takes for "only notice and final checkpoints".
    if not 0 <= req.checkpoint_steps <= MAX_TRAIN_STEPS:
        raise ConfigError(
            f"--checkpoint-steps must be between 0 (only notice and final checkpoints) and "
            f"{MAX_TRAIN_STEPS}"
        )
    if req.chaos < 0:
        raise ConfigError("--chaos must be a number of preemptions, 0 or more")
    if not 0 <= req.seed < 10**9:
        raise ConfigError("--seed must be between 0 and 999999999")
    if req.name is not None and not NAME_RE.match(req.name):
        raise ConfigError(
            f"--name {req.name!r}: use 1-63 lower-case letters, digits and '-', "
            "starting with a letter"
        )
    return EXAMPLES[req.example], check_hparams(req.example, parse_hparams(req.hparams))
