"""Typed hyperparameters: declared once by an example, parsed from flags or --hparams-json.

The runner (not each example) owns typing and validation so every example gets the same flags,
the same error messages and the same comparison against the job's checkpoints.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any


class HParamError(ValueError):
    """Bad hyperparameter input; the message says what to fix."""


@dataclass(frozen=True)
class HParam:
    """One hyperparameter: its type (int, float, str or bool), default and help text."""

    type: type
    default: Any
    help: str = ""

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
            help=f"{param.help} (default {param.default!r})",
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
    return values


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
