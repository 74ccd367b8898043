"""nvidia-driver.sh: --plan on OS fixtures, the two stages around the reboot, unsupported OSes,
markers, checksum verification."""

from __future__ import annotations

import hashlib
import re

import pytest

from tests.provisioning.helpers import FIXTURES, run_script, stub_commands, versions

KERNEL_STAGE = ["prerequisites", "kernel", "reboot"]
DRIVER_STAGE = ["repo", "headers", "driver", "cuda", "kernel-hold", "verify"]
STEPS = KERNEL_STAGE + DRIVER_STAGE
DEBIAN_KERNEL = "6.1.0-28-cloud-amd64"
UBUNTU_KERNEL = "6.8.0-1019-gcp"
APT_INSTALL = "apt-get install -y -q --no-install-recommends"
SYSTEM_TOOLS = [
    "apt-get",
    "apt-mark",
    "dpkg",
    "dpkg-query",
    "curl",
    "gpg",
    "nvidia-smi",
    "modprobe",
    "systemctl",
]


def env_for(os_fixture: str, markers, kernel: str = DEBIAN_KERNEL) -> dict[str, str]:
    return {
        "SURVIVAL_OS_RELEASE": str(FIXTURES / os_fixture),
        "SURVIVAL_MARKER_DIR": str(markers),
        "SURVIVAL_KERNEL_RELEASE": kernel,
    }


def plan_steps(out: str) -> dict[str, tuple[int, str]]:
    """--plan's `step NAME: STATE [STAGE stage] WHAT` lines → {name: (position, line)}."""
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    return {line.split()[1].rstrip(":"): (index, line) for index, line in enumerate(lines)}


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
    assert f"nvidia-driver-pinning-{pins['NVIDIA_DRIVER_BRANCH']}, then nvidia-open" in out
    assert "cuda-drivers-" not in out  # NVIDIA is removing the branch metapackages
    assert f"cuda-toolkit-{pins['CUDA_VERSION'].replace('.', '-')}" in out
    assert f"keyring sha256: {pins[sha_key]}" in out
    assert len(pins[sha_key]) == 64 and int(pins[sha_key], 16) >= 0
    assert f"/repos/{repo}/x86_64/cuda-keyring_{pins['CUDA_KEYRING_VERSION']}_all.deb" in out
    assert pins["CUDA_REPO_KEY_FINGERPRINT"] in out
    assert list(plan_steps(out)) == STEPS
    assert all(f"step {step}: run" in out for step in STEPS)
    assert not (tmp_path / "m").exists()  # --plan changes nothing


@pytest.mark.parametrize(
    ("fixture", "kernel", "flavour"),
    [
        ("os-release-debian12", DEBIAN_KERNEL, "cloud-amd64"),
        ("os-release-ubuntu2204", UBUNTU_KERNEL, "gcp"),
    ],
)
def test_plan_puts_gpg_and_the_new_kernel_before_the_reboot_and_the_driver_after(
    tmp_path, fixture, kernel, flavour
):
    """gpg is installed before the keyring's fingerprint check; the newest kernel of the running
    series and its headers (metapackages, never linux-headers-$(uname -r), which leaves the
    archive) before the reboot; the driver after the reboot; nvidia-smi after the driver."""
    result = run_script("nvidia-driver.sh", "--plan", env=env_for(fixture, tmp_path / "m", kernel))
    assert result.returncode == 0, result.stderr
    assert f"kernel: {kernel} (flavour {flavour})" in result.stdout
    steps = plan_steps(result.stdout)
    pos = {name: index for name, (index, _) in steps.items()}
    line = {name: text for name, (_, text) in steps.items()}

    assert re.search(r"apt-get install .*\bgpg\b", line["prerequisites"])
    assert "check the key fingerprint" in line["repo"] and "with gpg" in line["repo"]
    assert pos["prerequisites"] < pos["repo"]

    assert f"apt-get install linux-image-{flavour} linux-headers-{flavour}" in line["kernel"]
    assert f"linux-headers-{kernel}" not in line["kernel"]
    assert "reboot" in line["reboot"]
    assert pos["kernel"] < pos["reboot"]
    assert all("[kernel stage]" in line[step] for step in KERNEL_STAGE)

    assert pos["reboot"] < pos["repo"] < pos["driver"] < pos["verify"]
    assert all("[driver stage]" in line[step] for step in DRIVER_STAGE)
    assert "nvidia-open" in line["driver"]
    assert line["verify"].endswith("nvidia-smi")
    assert not any("nvidia-smi" in line[step] for step in STEPS if step != "verify")


def test_proprietary_modules_install_cuda_drivers(tmp_path):
    result = run_script(
        "nvidia-driver.sh", "--plan", "--modules", "proprietary",
        env=env_for("os-release-debian12", tmp_path / "m"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "driver: cuda-drivers (branch" in result.stdout
    assert "then cuda-drivers (proprietary kernel modules)" in result.stdout


@pytest.mark.parametrize(("flag", "value"), [("--modules", "closed"), ("--stage", "both")])
def test_bad_stage_or_modules_is_a_usage_error(tmp_path, flag, value):
    result = run_script(
        "nvidia-driver.sh", flag, value, env=env_for("os-release-debian12", tmp_path)
    )
    assert result.returncode == 2
    assert f"{flag} '{value}': choose" in result.stderr


def keyring_stubs(tmp_path, log):
    """Stubs for a whole run: curl "downloads" a keyring whose sum is pinned in a copy of
    versions.env, gpg reports NVIDIA's fingerprint, dpkg-query says every package is installed."""
    pins = versions()
    payload = "keyring package\n"
    env_file = tmp_path / "versions.env"
    pins["CUDA_KEYRING_SHA256_DEBIAN12"] = hashlib.sha256(payload.encode()).hexdigest()
    env_file.write_text("".join(f"{key}={value}\n" for key, value in pins.items()))
    bin_dir = tmp_path / "bin"
    stub_commands(bin_dir, log, ["apt-get", "apt-mark", "dpkg", "nvidia-smi", "modprobe"])
    stub_commands(bin_dir, log, ["systemctl"])
    stub_commands(
        bin_dir,
        log,
        ["curl"],
        script=(
            "while (($#)); do if [[ $1 == --output ]]; then "
            f"printf '{payload.strip()}\\n' > \"$2\"; fi; shift; done"
        ),
    )
    stub_commands(
        bin_dir, log, ["gpg"], script=f"echo 'fpr:::::::::{pins['CUDA_REPO_KEY_FINGERPRINT']}:'"
    )
    stub_commands(bin_dir, log, ["dpkg-query"], script="printf 'install ok installed'")
    return env_file


def test_kernel_stage_reboots_and_the_driver_stage_runs_only_after_the_reboot(tmp_path):
    log = tmp_path / "calls.log"
    markers = tmp_path / "markers"
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("boot-1\n")
    env = env_for("os-release-debian12", markers) | {
        "SURVIVAL_VERSIONS_ENV": str(keyring_stubs(tmp_path, log)),
        "SURVIVAL_BOOT_ID_FILE": str(boot_id),
    }

    kernel = run_script(
        "nvidia-driver.sh", "--stage", "kernel", env=env, path_prefix=tmp_path / "bin"
    )
    assert kernel.returncode == 0, kernel.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "apt-get update -q"
    assert calls[1].startswith(f"{APT_INSTALL} gpg ")
    assert calls[2:] == [
        f"{APT_INSTALL} linux-image-cloud-amd64 linux-headers-cloud-amd64",
        "systemctl reboot",
    ]
    assert (markers / "reboot.done").read_text() == "boot-1\n"

    # The same boot: the driver stage refuses, since the new kernel is not running yet.
    log.unlink()
    same_boot = run_script(
        "nvidia-driver.sh", "--stage", "driver", env=env, path_prefix=tmp_path / "bin"
    )
    assert same_boot.returncode == 2
    assert "reboot (systemctl reboot), then run the driver stage" in same_boot.stderr
    assert not log.exists()

    boot_id.write_text("boot-2\n")
    driver = run_script(
        "nvidia-driver.sh", "--stage", "driver", env=env, path_prefix=tmp_path / "bin"
    )
    assert driver.returncode == 0, driver.stderr
    calls = [line.split(" --no-install-recommends ")[-1] for line in log.read_text().splitlines()]
    tools = [line.split()[0] for line in log.read_text().splitlines()]
    assert tools.index("curl") < tools.index("dpkg") < tools.index("gpg")
    assert calls.index(f"linux-headers-{DEBIAN_KERNEL}") < calls.index("nvidia-open")
    assert calls.index(f"nvidia-driver-pinning-{versions()['NVIDIA_DRIVER_BRANCH']}") < calls.index(
        "nvidia-open"
    )
    assert (
        calls.index("nvidia-open") < calls.index("cuda-toolkit-12-8") < calls.index("nvidia-smi ")
    )
    assert "systemctl reboot" not in calls
    assert any(
        line.startswith("apt-mark hold") and "linux-image-cloud-amd64" in line for line in calls
    )
    assert sorted(p.name for p in markers.iterdir()) == sorted(f"{s}.done" for s in STEPS)


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
    (tmp_path / "boot_id").write_text("after-the-reboot\n")
    log = tmp_path / "calls.log"
    stub_commands(tmp_path / "bin", log, SYSTEM_TOOLS)
    result = run_script(
        "nvidia-driver.sh",
        env=env_for("os-release-ubuntu2204", markers, UBUNTU_KERNEL)
        | {"SURVIVAL_BOOT_ID_FILE": str(tmp_path / "boot_id")},
        path_prefix=tmp_path / "bin",
    )
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == ["nvidia-smi "]
    assert (markers / "verify.done").exists()


def test_keyring_checksum_mismatch_stops_before_installing(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    for step in KERNEL_STAGE:
        (markers / f"{step}.done").write_text("boot-1\n")
    (tmp_path / "boot_id").write_text("boot-2\n")
    log = tmp_path / "calls.log"
    stub_commands(
        tmp_path / "bin", log, ["apt-get", "apt-mark", "dpkg", "gpg", "nvidia-smi", "systemctl"]
    )
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
        "--stage",
        "driver",
        env=env_for("os-release-debian12", markers)
        | {"SURVIVAL_BOOT_ID_FILE": str(tmp_path / "boot_id")},
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
