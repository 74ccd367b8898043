"""`invoke train` checks what the user typed before anything exists: hyperparameters against the
example's declaration, the numeric flags, the branch, the env vars. Each mistake is one line on
stderr, exit status 1, and no emulator, push or VM."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from survival.errors import ConfigError
from survival.request import NAME_RE, TrainRequest, default_name, validate

REPO = Path(__file__).resolve().parents[2]


def invoke(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True,
        timeout=120, check=False, env=env,
    )  # fmt: skip


@pytest.fixture
def env(tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_SURVIVAL_")}
    clean["INVOKE_SURVIVAL_LOCAL_STATE_DIR"] = str(tmp_path / "state")
    return clean


def request(**overrides) -> TrainRequest:
    fields = dict(
        branch="exp1", example="keras_digits", train_steps=300, checkpoint_steps=50, seed=0,
        hparams=(), name=None, zone=None, gpu=None, machine_type=None, provisioning=None,
        follow=False, chaos=0, push=True, keep_alive=False,
    )  # fmt: skip
    fields.update(overrides)
    return TrainRequest(**fields)


@pytest.mark.parametrize(
    ("args", "env_extra", "words"),
    [
        (["--hparam", "foo=1"], {}, "unknown hyperparameter 'foo'"),
        (["--hparam", "batch_size=abc"], {}, "'batch_size' must be int"),
        (["--hparam", "batch_size=0"], {}, "'batch_size' must be int from 1"),
        (["--hparam", "learning_rate=-1"], {}, "'learning_rate' must be float from"),
        (["--train-steps", "abc"], {}, "--train-steps 'abc' is not a whole number"),
        (["--branch", "x" * 300], {}, "too long (300 characters"),
        ([], {"INVOKE_SURVIVAL_MAX_RESTARTS": "abc"}, "INVOKE_SURVIVAL_MAX_RESTARTS='abc'"),
    ],
)
def test_bad_input_is_one_line_before_anything_exists(env, tmp_path, args, env_extra, words):
    if "--branch" not in args:
        args = ["--branch", "exp1", *args]
    result = invoke("train", *args, env={**env, **env_extra})
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("error: ") and words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    # No emulator was started for it (so nothing pushed to its repo, no instance created).
    assert not (tmp_path / "state").exists()


def test_hparams_are_checked_against_the_example_and_coerced():
    module, hparams = validate(request(hparams=("learning_rate=1", "batch_size=16")))
    assert module == "trainer.examples.keras_digits"
    assert hparams == {"learning_rate": 1.0, "batch_size": 16}
    # keras_digits has hidden_units, sklearn_digits does not.
    with pytest.raises(ConfigError, match=r"unknown hyperparameter 'hidden_units'.*alpha"):
        validate(request(example="sklearn_digits", hparams=("hidden_units=8",)))


def test_the_scalable_example_is_offered_with_its_size_knob_checked():
    module, hparams = validate(request(example="numpy_wide", hparams=("checkpoint_mb=100",)))
    assert module == "trainer.examples.numpy_wide" and hparams == {"checkpoint_mb": 100}
    with pytest.raises(ConfigError, match="checkpoint_mb"):
        validate(request(example="numpy_wide", hparams=("checkpoint_mb=0",)))


def test_checkpoint_steps_zero_is_allowed_as_the_trainer_allows_it():
    from trainer.examples.keras_digits import KerasDigits
    from trainer.runner import build_parser

    validate(request(checkpoint_steps=0))
    args = build_parser(KerasDigits, "t").parse_args(["--checkpoint-steps", "0"])
    assert args.checkpoint_steps == 0
    with pytest.raises(ConfigError, match="--checkpoint-steps must be between 0"):
        validate(request(checkpoint_steps=-1))


def test_numeric_flags_arrive_as_text_and_become_numbers():
    req = TrainRequest.from_flags(
        branch="exp1", example="keras_digits", train_steps="40", checkpoint_steps=None,
        seed="7", hparams=(), name=None, zone=None, gpu=None, machine_type=None,
        provisioning=None, follow=False, chaos=None, push=True, keep_alive=False,
    )  # fmt: skip
    assert (req.train_steps, req.checkpoint_steps, req.seed, req.chaos) == (40, 50, 7, 0)


def test_full_ref_branch_is_normalised_never_doubled():
    req = request(branch="refs/heads/exp1")
    assert req.branch == "exp1"
    validate(req)
    with pytest.raises(ConfigError, match="give a branch name"):
        validate(request(branch="refs/tags/exp1"))


def test_default_names_differ_in_the_same_second_and_are_valid_gce_names():
    rng = random.Random(1)
    now = 1_800_000_000.0
    names = {default_name("exp1", now, rng) for _ in range(50)}
    assert len(names) == 50
    longest = default_name("B" * 300 + "-x", now, rng)
    for name in (*names, longest, default_name("9lives", now, rng), default_name("--", now, rng)):
        assert len(name) <= 63 and NAME_RE.match(name), name
    # The RNG is injected: the same seed gives the same name.
    assert default_name("exp1", now, random.Random(5)) == default_name(
        "exp1", now, random.Random(5)
    )
