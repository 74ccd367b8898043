"""Invoke's config layering feeds Settings; every layer is reported; bad values are one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from invoke import Config
from invoke.util import yaml

from survival.config import DEFAULTS, Settings
from survival.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _config(monkeypatch, env=None, runtime=None, tmp_path=None):
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    kwargs = {"project_location": str(REPO)}
    if runtime:
        path = tmp_path / "runtime.yaml"
        path.write_text(yaml.safe_dump({"survival": runtime}))
        kwargs["runtime_path"] = str(path)
    config = Config(**kwargs)
    config.load_collection({"survival": DEFAULTS})
    config.load_project()
    config.load_runtime()
    config.load_shell_env()
    return config


def test_project_file_and_defaults_agree_on_keys():
    data = yaml.safe_load((REPO / "invoke.yaml").read_text())["survival"]
    assert set(data) == set(DEFAULTS)


def test_layers_and_sources(monkeypatch, tmp_path):
    config = _config(
        monkeypatch,
        env={"INVOKE_SURVIVAL_MACHINE_TYPE": "n1-standard-8"},
        runtime={"gpu_count": 0},
        tmp_path=tmp_path,
    )
    s = Settings.from_invoke(config)
    assert s.backend == "local" and s.sources["backend"] == "project invoke.yaml"
    assert s.machine_type == "n1-standard-8"
    assert s.sources["machine_type"] == "env var INVOKE_SURVIVAL_MACHINE_TYPE"
    assert s.gpu_count == 0 and s.sources["gpu_count"] == "runtime file (invoke -f)"
    assert s.project == "local-project" and s.sources["project"].startswith("derived")
    # No trainer_repo: the code travels as a bundle in the job bucket, on both backends.
    assert s.trainer_repo == "" and s.job_bucket == "survival-jobs"
    flagged = s.with_flags(provisioning="standard", zone=None)
    assert flagged.provisioning == "standard"
    assert flagged.sources["provisioning"] == "flag --provisioning"


def test_gce_without_project_says_what_to_fill(monkeypatch):
    config = _config(monkeypatch, env={"INVOKE_SURVIVAL_BACKEND": "gce"})
    with pytest.raises(ConfigError, match=r"survival\.project is empty") as err:
        Settings.from_invoke(config)
    assert "\n" not in str(err.value)


def test_a_backend_flag_derives_project_bucket_and_repo_again(monkeypatch):
    local = Settings.from_invoke(_config(monkeypatch))
    assert local.project == "local-project"
    # --backend gce must not inherit the project derived for backend local.
    with pytest.raises(ConfigError, match=r"survival\.project is empty"):
        local.with_flags(backend="gce")
    monkeypatch.setenv("INVOKE_SURVIVAL_PROJECT", "my-proj-1")
    configured = Settings.from_invoke(_config(monkeypatch))
    gce = configured.with_flags(backend="gce")
    assert gce.project == "my-proj-1" and gce.sources["backend"] == "flag --backend"
    assert gce.job_bucket == "my-proj-1-survival-jobs"
    assert gce.trainer_repo == ""


def test_gce_defaults(monkeypatch):
    config = _config(
        monkeypatch, env={"INVOKE_SURVIVAL_BACKEND": "gce", "INVOKE_SURVIVAL_PROJECT": "my-proj-1"}
    )
    s = Settings.from_invoke(config)
    assert s.trainer_repo == ""  # a bundle in the job bucket, never Cloud Source Repositories
    assert s.job_bucket == "my-proj-1-survival-jobs"
    assert "https://www.googleapis.com/auth/cloud-platform" not in s.scopes


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("provisioning", "cheap", "use one of spot"),
        ("zones", "nowhere", "us-central1-a"),
        ("gpu_count", "two", "whole number"),
        ("backend", "aws", "use one of local, gce"),
    ],
)
def test_bad_values_are_one_line(monkeypatch, key, value, words):
    config = _config(monkeypatch)
    config.survival[key] = [value] if key == "zones" else value
    with pytest.raises(ConfigError, match=words) as err:
        Settings.from_invoke(config)
    assert "\n" not in str(err.value)
