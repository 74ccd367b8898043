"""Each example declares its hyperparameters with allowed values; the runner refuses others on
the VM (the orchestrator checks the same declaration before a VM exists), and the declaration is
importable without the example's framework."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trainer.examples import keras_digits, sklearn_digits
from trainer.hparams import HParam, HParamError, resolve, validate
from trainer.runner import build_parser, main


@pytest.mark.parametrize("example", [keras_digits.KerasDigits, sklearn_digits.SklearnDigits])
@pytest.mark.parametrize(
    "argv",
    [
        ["--learning-rate", "-1"],
        ["--batch-size", "0"],
        ["--hparams-json", '{"batch_size": 100000}'],
        ["--hparams-json", '{"learning_rate": NaN}'],
    ],
)
def test_runner_refuses_values_outside_the_declaration(example, argv):
    args = build_parser(example, "t").parse_args(["--job-dir", "/nonexistent", *argv])
    with pytest.raises(HParamError, match="must be"):
        resolve(example.hparams, args)


def test_runner_main_exits_with_a_usage_error_before_touching_the_job_dir(tmp_path, capsys):
    job = tmp_path / "job"
    with pytest.raises(SystemExit) as stop:
        main(sklearn_digits.SklearnDigits, ["--job-dir", str(job), "--learning-rate", "-1"])
    assert stop.value.code == 2
    assert "'learning_rate' must be float from" in capsys.readouterr().err
    assert not job.exists()


def test_defaults_are_inside_their_own_ranges():
    for spec in (keras_digits.HPARAMS, sklearn_digits.HPARAMS):
        assert validate(spec, {n: p.default for n, p in spec.items()})


def test_validate_names_types_and_choices():
    spec = {"opt": HParam(str, "adam", "optimizer", choices=("adam", "sgd")),
            "n": HParam(int, 1, "count", minimum=1)}  # fmt: skip
    assert validate(spec, {"opt": "sgd", "n": 3}) == {"opt": "sgd", "n": 3}
    with pytest.raises(HParamError, match=r"must be one of \"adam\", \"sgd\""):
        validate(spec, {"opt": "rmsprop"})
    with pytest.raises(HParamError, match="must be int"):
        validate(spec, {"n": 1.5})
    with pytest.raises(HParamError, match="unknown hyperparameter 'x'"):
        validate(spec, {"x": 1})


def test_declarations_import_without_the_framework_or_the_runner():
    code = (
        "import sys, trainer.examples.keras_digits as k, trainer.examples.sklearn_digits as s;"
        "assert k.HPARAMS and s.HPARAMS;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'sklearn', 'skops') or m == 'trainer.runner'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "[]"
