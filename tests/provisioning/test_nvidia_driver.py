"""nvidia-driver.sh: --plan on OS fixtures, unsupported OSes, markers, checksum verification."""

from __future__ import annotations

import pytest

from tests.provisioning.helpers import FIXTURES, run_script, stub_commands, versions

STEPS = ["repo", "kernel-hold", "headers", "driver", "cuda", "verify"]
SYSTEM_TOOLS = [
    "apt-get",
    "apt-mark",
    "dpkg",
    "dpkg-query",
    "curl",
    "gpg",
    "nvidia-smi",
    "modprobe",
]


def env_for(os_fixture: str, markers) -> dict[str, str]:
    return {"SURVIVAL_OS_RELEASE": str(FIXTURES / os_fixture), "SURVIVAL_MARKER_DIR": str(markers)}


@pytest.mark.parametrize(
    ("fixture", "repo", "sha_key"),
    [
        ("os-release-debian12", "debian12", "CUDA_KEYRING_SHA256_DEBIAN12"),
        ("os-release-ubuntu2204", "ubuntu2204", "CUDA_KEYRING_SHA256_UBUNTU2204"),
    ],
)
def test_plan_prints_pinned_versions_and_checksums(tmp_path, fixture, repo, sha_key):
    pins = versions()
    result = run_script("nvidia-driver.sh", "--plan", env=env_for(fixture, tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"cuda-drivers-{pins['NVIDIA_DRIVER_BRANCH']}" in out
    assert f"cuda-toolkit-{pins['CUDA_VERSION'].replace('.', '-')}" in out
    assert f"keyring sha256: {pins[sha_key]}" in out
    assert len(pins[sha_key]) == 64 and int(pins[sha_key], 16) >= 0
    assert f"/repos/{repo}/x86_64/cuda-keyring_{pins['CUDA_KEYRING_VERSION']}_all.deb" in out
    assert pins["CUDA_REPO_KEY_FINGERPRINT"] in out
    assert all(f"step {step}: run" in out for step in STEPS)
    assert not (tmp_path / "m").exists()  # --plan changes nothing


@pytest.mark.parametrize("fixture", ["os-release-rocky9", "os-release-debian11"])
def test_unsupported_os_exits_nonzero_with_a_clear_message(tmp_path, fixture):
    result = run_script("nvidia-driver.sh", "--plan", env=env_for(fixture, tmp_path / "m"))
    assert result.returncode == 3
    assert "unsupported OS" in result.stderr
    assert "Debian 12 or Ubuntu 22.04" in result.stderr


def test_missing_os_release_is_unsupported(tmp_path):
    env = {"SURVIVAL_OS_RELEASE": str(tmp_path / "nope"), "SURVIVAL_MARKER_DIR": str(tmp_path)}
    result = run_script("nvidia-driver.sh", env=env)
    assert result.returncode == 3
    assert "unsupported OS" in result.stderr


def test_second_run_with_all_markers_does_nothing(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    for step in STEPS:
        (markers / f"{step}.done").write_text("done\n")
    log = tmp_path / "calls.log"
    stub_commands(tmp_path / "bin", log, SYSTEM_TOOLS)
    result = run_script(
        "nvidia-driver.sh",
        env=env_for("os-release-debian12", markers),
        path_prefix=tmp_path / "bin",
    )
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stderr
    assert not log.exists(), log.read_text()
    plan = run_script("nvidia-driver.sh", "--plan", env=env_for("os-release-debian12", markers))
    assert all(f"step {step}: skip (done)" in plan.stdout for step in STEPS)


def test_rerun_skips_finished_steps_and_runs_the_rest(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    for step in STEPS[:-1]:
        (markers / f"{step}.done").write_text("done\n")
    log = tmp_path / "calls.log"
    stub_commands(tmp_path / "bin", log, SYSTEM_TOOLS)
    result = run_script(
        "nvidia-driver.sh",
        env=env_for("os-release-ubuntu2204", markers),
        path_prefix=tmp_path / "bin",
    )
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == ["nvidia-smi "]
    assert (markers / "verify.done").exists()


def test_keyring_checksum_mismatch_stops_before_installing(tmp_path):
    log = tmp_path / "calls.log"
    stub_commands(tmp_path / "bin", log, ["apt-get", "apt-mark", "dpkg", "gpg", "nvidia-smi"])
    # curl "downloads" a file whose sum cannot match the pin.
    stub_commands(
        tmp_path / "bin",
        log,
        ["curl"],
        script=(
            'while (($#)); do if [[ $1 == --output ]]; then echo tampered > "$2"; fi; shift; done'
        ),
    )
    result = run_script(
        "nvidia-driver.sh",
        env=env_for("os-release-debian12", tmp_path / "markers"),
        path_prefix=tmp_path / "bin",
    )
    assert result.returncode == 4
    assert "checksum mismatch" in result.stderr
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["curl"]
    assert not (tmp_path / "markers" / "repo.done").exists()


def test_unknown_argument_is_a_usage_error(tmp_path):
    result = run_script("nvidia-driver.sh", "--bogus", env=env_for("os-release-debian12", tmp_path))
    assert result.returncode == 2
    assert "--help" in result.stderr
