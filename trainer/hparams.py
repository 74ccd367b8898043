"""Typed hyperparameters: declared once by an example, parsed from flags or --hparams-json.

The runner (not each example) owns typing and validation so every example gets the same flags,
the same error messages and the same comparison against the job's checkpoints.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class HParamError(ValueError):
    """Bad hyperparameter input; the message says what to fix."""


@dataclass(frozen=True)
class HParam:
    """One hyperparameter: its type (int, float, str or bool), default and help text, and the
    values it may take: ``minimum``/``maximum`` (inclusive) for numbers, ``choices`` for words.

    The bounds are part of the declaration because a value of the right type can still make a run
    useless (a negative learning rate diverges and still reaches DONE); the orchestrator checks
    them before a VM exists and the runner checks them again on the VM.
    """

    type: type
    default: Any
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None

    def allowed(self) -> str:
        """The accepted values in words, e.g. "int from 1 to 1024"."""
        if self.choices is not None:
            return "one of " + ", ".join(json.dumps(c) for c in self.choices)
        if self.minimum is not None and self.maximum is not None:
            return f"{self.type.__name__} from {self.minimum:g} to {self.maximum:g}"
        if self.minimum is not None:
            return f"{self.type.__name__} >= {self.minimum:g}"
        if self.maximum is not None:
            return f"{self.type.__name__} <= {self.maximum:g}"
        return self.type.__name__

    def check(self, name: str, value: Any) -> Any:
        """``value`` (already of the declared type) if it is allowed, else HParamError."""
        if self.type is float and not math.isfinite(value):
            raise HParamError(f"hyperparameter {name!r} must be a finite number, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise HParamError(f"hyperparameter {name!r} must be {self.allowed()}, got {value!r}")
        too_low = self.minimum is not None and value < self.minimum
        too_high = self.maximum is not None and value > self.maximum
        if too_low or too_high:
            raise HParamError(f"hyperparameter {name!r} must be {self.allowed()}, got {value!r}")
        return value

    def coerce(self, name: str, value: Any) -> Any:
        """Check a JSON value against the declared type; ints are accepted for floats."""
        if self.type is bool:
            if isinstance(value, bool):
                return value
        elif self.type is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif self.type is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        elif isinstance(value, self.type):
            return value
        raise HParamError(
            f"hyperparameter {name!r} must be {self.type.__name__}, got {json.dumps(value)}"
        )


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_flags(parser: argparse.ArgumentParser, spec: dict[str, HParam]) -> None:
    """One typed flag per hyperparameter (default None: 'not given', so JSON can supply it)."""
    group = parser.add_argument_group("hyperparameters (also settable with --hparams-json)")
    for name, param in spec.items():
        group.add_argument(
            flag_name(name),
            dest=f"hp_{name}",
            type=_parse_bool if param.type is bool else param.type,
            default=None,
            help=f"{param.help}; {param.allowed()} (default {param.default!r})",
        )
    parser.add_argument(
        "--hparams-json",
        default=None,
        help="hyperparameters as a JSON object, e.g. '{\"learning_rate\": 0.01}'; "
        "explicit flags win over it",
    )


def resolve(spec: dict[str, HParam], args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then --hparams-json, then explicit flags. Raises HParamError on bad input."""
    values = {name: param.default for name, param in spec.items()}
    if args.hparams_json:
        try:
            given = json.loads(args.hparams_json)
        except json.JSONDecodeError as error:
            raise HParamError(f"--hparams-json is not valid JSON: {error}") from None
        if not isinstance(given, dict):
            raise HParamError('--hparams-json must be a JSON object like {"learning_rate": 0.01}')
        unknown = sorted(set(given) - set(spec))
        if unknown:
            raise HParamError(
                f"unknown hyperparameter(s) {', '.join(unknown)} in --hparams-json; "
                f"this example accepts: {', '.join(sorted(spec))}"
            )
        for name, value in given.items():
            values[name] = spec[name].coerce(name, value)
    for name in spec:
        value = getattr(args, f"hp_{name}")
        if value is not None:
            values[name] = value
    for name, value in values.items():
        spec[name].check(name, value)
    return values


def validate(spec: Mapping[str, HParam], given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` (JSON-like values, e.g. parsed from NAME=VALUE flags) checked against ``spec``:
    known names, declared types and allowed values. Returns the coerced values given (not the
    defaults); HParamError names the first bad one and what is accepted."""
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise HParamError(
            f"unknown hyperparameter {unknown[0]!r}; this example accepts: "
            + ", ".join(f"{name} ({spec[name].allowed()})" for name in sorted(spec))
        )
    checked = {}
    for name, value in given.items():
        param = spec[name]
        checked[name] = param.check(name, param.coerce(name, value))
    return checked


def differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Human-readable lines, one per key whose value differs between saved and wanted."""
    lines = []
    for name in sorted(set(saved) | set(wanted)):
        if saved.get(name, "<unset>") != wanted.get(name, "<unset>"):
            lines.append(
                f"{name}: job has {json.dumps(saved.get(name))}, "
                f"this run asks for {json.dumps(wanted.get(name))}"
            )
    return lines
