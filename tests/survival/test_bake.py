"""The Packer driver: plans, dry-run text, plugin install, manifest reading, failure handling."""

from __future__ import annotations

import datetime as dt
import json
import shlex
import subprocess

import pytest

from survival import bake, config
from survival.errors import ConfigError


class FakeRunner:
    """Records argv; answers from a {first-two-args: CompletedProcess} table."""

    def __init__(self, answers: dict[tuple[str, ...], tuple[int, str]]):
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, argv, **kwargs):
        self.calls.append(list(argv))
        key = tuple(argv[1:3]) if tuple(argv[1:3]) in self.answers else tuple(argv[1:2])
        code, out = self.answers.get(key, (0, ""))
        return subprocess.CompletedProcess(argv, code, stdout=out, stderr="")


def test_image_name_is_family_plus_utc_timestamp():
    when = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert bake.image_name_for("kit", when) == "kit-20260304030607"


@pytest.mark.parametrize("family", ["", "Kit", "1kit", "kit-", "k" * 51, "kit;rm"])
def test_bad_family_is_refused(family, tmp_path):
    with pytest.raises(bake.BakeError, match="--family"):
        bake.local_plan(family=family, state_dir=tmp_path)


def test_family_limit_leaves_room_for_the_timestamp_in_the_image_name(tmp_path):
    longest = "k" * config.IMAGE_FAMILY_MAX_CHARS
    plan = bake.local_plan(family=longest, state_dir=tmp_path, commit="c")
    assert len(plan.image_name) == 63  # GCE's limit for an image name
    too_long = longest + "k"
    with pytest.raises(bake.BakeError, match="--family"):
        bake.local_plan(family=too_long, state_dir=tmp_path, commit="c")
    # The settings apply the same rule, so a configured family can always be baked.
    from invoke import Config

    with pytest.raises(ConfigError, match="image_family"):
        config.Settings.from_invoke(Config(overrides={"survival": {"image_family": too_long}}))


@pytest.mark.parametrize(
    "spec", ["nvidia-tesla-t4:1", "nvidia-l4:8", "none", "nvidia-tesla-t4:3", "nvidia-t4:16"]
)
def test_train_and_bake_accept_the_same_gpu_specs(spec):
    # GCE attaches 1, 2, 4 or 8 GPUs: `invoke train --gpu` used to accept any count up to 99.
    try:
        expected = config.parse_gpu(spec)
    except ConfigError:
        assert spec.endswith((":3", ":16"))
        with pytest.raises(bake.BakeError, match="TYPE:COUNT"):
            bake.parse_gpu(spec)
    else:
        assert bake.parse_gpu(spec) == expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("nvidia-tesla-t4:1", ("nvidia-tesla-t4", 1)),
        ("nvidia-l4:8", ("nvidia-l4", 8)),
        ("none", ("", 0)),
    ],
)
def test_parse_gpu(spec, expected):
    assert bake.parse_gpu(spec) == expected


@pytest.mark.parametrize("spec", ["t4:1", "nvidia-tesla-t4", "nvidia-tesla-t4:3", "nvidia-l4:x"])
def test_parse_gpu_rejects(spec):
    with pytest.raises(bake.BakeError, match="TYPE:COUNT"):
        bake.parse_gpu(spec)


def gce_kwargs(tmp_path, **over):
    kwargs = dict(
        family="kit",
        project="my-project-123",
        zone="europe-west4-a",
        machine_type="n1-standard-8",
        gpu="nvidia-tesla-t4:2",
        source_family="ubuntu-2204-lts",
        state_dir=tmp_path,
        service_account="default",
        commit="abc123",
        image_name="kit-20260101000000",
    )
    kwargs.update(over)
    return kwargs


def test_gce_plan_passes_settings_as_variables(tmp_path):
    plan = bake.gce_plan(**gce_kwargs(tmp_path))
    assert plan.variables["project_id"] == "my-project-123"
    assert plan.variables["zone"] == "europe-west4-a"
    assert plan.variables["accelerator_type"] == "nvidia-tesla-t4"
    assert plan.variables["accelerator_count"] == "2"
    assert plan.variables["source_image_family"] == "ubuntu-2204-lts"
    assert plan.variables["service_account_email"] == ""  # "default" = the project's default SA
    build = plan.command("build")
    assert build[:2] == [plan.packer, "build"]
    assert "-only=gce.googlecompute.gpu" in build
    assert build[-1] == str(bake.PACKER_DIR)
    at = build.index("machine_type=n1-standard-8")
    assert build[at - 1] == "-var"


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"project": ""}, "survival.project"),
        ({"zone": ""}, "survival.zones"),
        ({"source_family": "centos-7"}, "--source-family"),
        ({"gpu": "nvidia-tesla-t4:3"}, "TYPE:COUNT"),
    ],
)
def test_gce_plan_says_what_to_fix(tmp_path, over, message):
    with pytest.raises(bake.BakeError, match=message):
        bake.gce_plan(**gce_kwargs(tmp_path, **over))


def test_dry_run_text_is_the_commands_and_variables(tmp_path):
    plan = bake.local_plan(family="kit", state_dir=tmp_path, commit="c0ffee", image_name="kit-1")
    text = bake.describe(plan)
    lines = text.splitlines()
    build_line = next(line.strip() for line in lines if line.strip().startswith("packer build"))
    assert shlex.split(build_line) == plan.command("build")
    assert f"local_images_dir = '{tmp_path.resolve() / 'images'}'" in text
    assert plan.image_dir == tmp_path.resolve() / "images" / "kit-1"


def test_plugin_is_built_in_on_old_packer():
    run = FakeRunner({("version",): (0, "Packer v1.6.6\n")})
    assert "built in" in bake.ensure_googlecompute_plugin("packer", run)
    assert run.calls == [["packer", "version"]]


def test_plugin_is_installed_when_missing_on_new_packer():
    run = FakeRunner({("version",): (0, "Packer v1.11.2\n"), ("plugins", "installed"): (0, "")})
    assert "installed the" in bake.ensure_googlecompute_plugin("packer", run)
    assert ["packer", "plugins", "install", bake.GOOGLECOMPUTE_PLUGIN] in run.calls


def test_plugin_present_is_left_alone():
    listing = (
        "/root/.packer.d/plugins/github.com/hashicorp/googlecompute/"
        "packer-plugin-googlecompute_v1.1.6\n"
    )
    run = FakeRunner({("version",): (0, "Packer v1.9.4\n"), ("plugins", "installed"): (0, listing)})
    assert "already installed" in bake.ensure_googlecompute_plugin("packer", run)
    assert all(call[1:3] != ["plugins", "install"] for call in run.calls)


def test_plugin_install_failure_says_what_to_do():
    run = FakeRunner(
        {
            ("version",): (0, "Packer v1.10.0\n"),
            ("plugins", "installed"): (0, ""),
            ("plugins", "install"): (1, "no network"),
        }
    )
    with pytest.raises(bake.BakeError, match="install it by hand"):
        bake.ensure_googlecompute_plugin("packer", run)


def write_manifest(path, builds, last):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"builds": builds, "last_run_uuid": last}))


def test_read_manifest_takes_the_last_run(tmp_path):
    path = tmp_path / "m.json"
    builds = [
        {"packer_run_uuid": "old", "artifact_id": "kit-1", "custom_data": {"image_name": "kit-1"}},
        {"packer_run_uuid": "new", "artifact_id": "kit-2", "custom_data": {"image_name": "kit-2"}},
        {"packer_run_uuid": "older", "artifact_id": "kit-0", "custom_data": {}},
    ]
    write_manifest(path, builds, "new")
    assert bake.read_manifest(path)["artifact_id"] == "kit-2"


def test_read_manifest_errors(tmp_path):
    with pytest.raises(bake.BakeError, match="no manifest"):
        bake.read_manifest(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(bake.BakeError, match="not valid JSON"):
        bake.read_manifest(tmp_path / "bad.json")


def test_bake_validates_then_builds_and_reads_the_manifest(tmp_path):
    plan = bake.gce_plan(**gce_kwargs(tmp_path))

    def run(argv, **kwargs):
        if argv[1] == "build":
            write_manifest(
                plan.manifest,
                [{"packer_run_uuid": "u", "artifact_id": plan.image_name, "custom_data": {}}],
                "u",
            )
        return subprocess.CompletedProcess(argv, 0)

    result = bake.bake(plan, run=run, env={})
    assert result.image_name == plan.image_name
    assert result.artifact_id == plan.image_name


def test_bake_stops_when_validate_fails(tmp_path):
    plan = bake.gce_plan(**gce_kwargs(tmp_path))
    run = FakeRunner({("validate",): (1, "")})
    with pytest.raises(bake.BakeError, match="packer validate failed"):
        bake.bake(plan, run=run, env={})
    assert [call[1] for call in run.calls] == ["validate"]


def test_failed_local_build_removes_the_half_built_image(tmp_path):
    plan = bake.local_plan(family="kit", state_dir=tmp_path, commit="c", image_name="kit-9")

    def run(argv, **kwargs):
        if argv[1] == "build":
            (plan.image_dir / "venv").mkdir(parents=True)
            return subprocess.CompletedProcess(argv, 1)
        return subprocess.CompletedProcess(argv, 0)

    with pytest.raises(bake.BakeError, match="nothing was registered"):
        bake.bake(plan, run=run, env={})
    assert not plan.image_dir.exists()


def test_register_refuses_a_directory_without_an_environment(tmp_path, capsys):
    code = bake.main(
        ["register", "--state-dir", str(tmp_path), "--name", "kit-1", "--family", "kit",
         "--source", str(tmp_path)]
    )  # fmt: skip
    assert code == 1
    assert "no venv/bin/python" in capsys.readouterr().err
