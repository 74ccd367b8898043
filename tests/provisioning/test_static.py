"""Static checks of the image code: shellcheck, packer validate, pins match constraints."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.provisioning.helpers import PROVISIONING, REPO, versions

PACKER_DIR = REPO / "packer"
TOOL_TIMEOUT_SECONDS = 120


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make system-deps` (scripts/system-deps.sh)")
    return path


@pytest.mark.parametrize("folder", ["provisioning", "startup", "scripts"])
def test_shellcheck_is_clean(folder):
    """shellcheck reports nothing for provisioning/ and startup/ (and make's helper)."""
    scripts = sorted(str(p) for p in (REPO / folder).glob("*.sh"))
    assert scripts, f"no shell scripts found in {folder}/"
    result = subprocess.run(
        [tool("shellcheck"), "--external-sources", "--severity=style", *scripts],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_SECONDS,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def packer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("packer"), *args],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_SECONDS,
        check=False,
        cwd=REPO,
        env={
            "PATH": "/usr/bin:/bin",
            "CHECKPOINT_DISABLE": "1",
            "HOME": str(REPO / ".pytest_cache"),
        },
    )


def test_packer_validate_gce_template_with_example_variables():
    result = packer("validate", f"-var-file={PACKER_DIR / 'example.pkrvars.hcl'}", str(PACKER_DIR))
    assert result.returncode == 0, result.stdout + result.stderr


# The gce build's variable sets: GPU and CPU-only, on-demand and preemptible build VMs. A
# preemptible VM cannot live-migrate, so every preemptible build must get on_host_maintenance
# TERMINATE (Packer and the googlecompute builder reject MIGRATE with preemptible).
GCE_VARIABLE_SETS = {
    "gpu": [],
    "gpu-preemptible": ["-var", "build_preemptible=true"],
    "gpu-proprietary-modules": ["-var", "nvidia_kernel_modules=proprietary"],
    "cpu": ["-var", "accelerator_type=", "-var", "accelerator_count=0"],
    "cpu-preemptible": [
        "-var",
        "accelerator_type=",
        "-var",
        "accelerator_count=0",
        "-var",
        "build_preemptible=true",
    ],
}


@pytest.mark.parametrize("name", sorted(GCE_VARIABLE_SETS))
def test_packer_validate_gce_build(name):
    result = packer(
        "validate",
        "-only=gce.googlecompute.gpu",
        f"-var-file={PACKER_DIR / 'example.pkrvars.hcl'}",
        *GCE_VARIABLE_SETS[name],
        str(PACKER_DIR),
    )
    assert result.returncode == 0, result.stdout + result.stderr


def provisioner_blocks(text: str) -> list[str]:
    """The gce build's provisioner blocks, in order (each up to the next block)."""
    gce = text.split('build {\n  name    = "gce"', 1)[1].split('build {\n  name    = "local"', 1)[0]
    return ["provisioner" + part for part in gce.split("provisioner")[1:]]


def test_gce_build_reboots_between_the_kernel_and_the_driver_stage():
    """The driver installer's kernel stage runs in a provisioner that expects the reboot's
    disconnect; the next one waits (pause_before) and retries its start through the boot; the
    driver stage comes after, with the scripts uploaded again (/run is a tmpfs)."""
    blocks = provisioner_blocks((PACKER_DIR / "gpu-image.pkr.hcl").read_text())
    kernel = [i for i, b in enumerate(blocks) if 'nvidia-driver.sh\\" --stage kernel' in b]
    driver = [i for i, b in enumerate(blocks) if 'nvidia-driver.sh\\" --stage driver' in b]
    assert len(kernel) == 1 and len(driver) == 1, blocks
    k, d = kernel[0], driver[0]
    assert re.search(r"^\s*expect_disconnect\s*=\s*true$", blocks[k], re.M)
    after = blocks[k + 1]
    assert re.search(r'^\s*pause_before\s*=\s*"[1-9][0-9]*s"$', after, re.M)
    assert re.search(r'^\s*start_retry_timeout\s*=\s*"[1-9][0-9]*m"$', after, re.M)
    assert k + 1 < d
    uploads = [i for i, b in enumerate(blocks) if "/provisioning/" in b and '"file"' in b]
    assert any(i < k for i in uploads) and any(k < i < d for i in uploads)
    assert "expect_disconnect" not in blocks[d]


def test_packer_validate_local_build():
    result = packer(
        "validate",
        "-only=local.null.local",
        "-var",
        "local_images_dir=/tmp/images",
        "-var",
        "localgce_state_dir=/tmp/state",
        str(PACKER_DIR),
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("source_image_family", "centos-7", "must be debian-12 or ubuntu-2204-lts"),
        ("image_family", "Bad_Family", "image_family must be lowercase"),
        ("accelerator_count", "3", "accelerator_count must be 0, 1, 2, 4 or 8"),
        ("accelerator_type", "tesla", "accelerator_type must be empty or"),
        ("nvidia_kernel_modules", "closed", "nvidia_kernel_modules must be auto, open or"),
    ],
)
def test_packer_rejects_bad_variables(variable, value, message):
    result = packer(
        "validate",
        f"-var-file={PACKER_DIR / 'example.pkrvars.hcl'}",
        "-var",
        f"{variable}={value}",
        str(PACKER_DIR),
    )
    assert result.returncode != 0
    assert message in " ".join((result.stdout + result.stderr).split())


def test_gce_build_needs_project_and_zone():
    result = packer("validate", "-only=gce.googlecompute.gpu", str(PACKER_DIR))
    assert result.returncode != 0
    assert "project_id must be specified" in result.stdout + result.stderr


def test_template_hard_codes_no_project_zone_or_bucket():
    text = "".join(p.read_text() for p in PACKER_DIR.glob("*.pkr.hcl"))
    assert not re.search(r"gs://", text)
    assert not re.search(r'"[a-z]+-[a-z]+[0-9]-[a-f]"', text), "a zone is hard-coded"
    assert re.search(r"project_id\s*=\s*var\.project_id", text)
    assert not re.search(r"^\s*required_plugins\s*\{", text, re.M)  # Packer 1.6.6 rejects it


def pins(path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)(\[[a-z-]+\])?==(\S+)$", line.strip())
        if match:
            found[match.group(1).lower().replace("_", "-")] = match.group(3)
    return found


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_requirements_match_the_repo_constraints(flavor):
    constraints = pins(REPO / "constraints.txt")
    requirements = pins(PROVISIONING / f"requirements-{flavor}.txt")
    assert len(requirements) > 20
    for name, version in requirements.items():
        wanted = constraints.get(
            name, constraints.get(name.replace("tensorflow", "tensorflow-cpu"))
        )
        assert wanted == version, (
            f"{name}=={version} in requirements-{flavor}.txt, {wanted} in constraints.txt"
        )


def test_versions_env_matches_the_requirements():
    env = versions()
    cpu = pins(PROVISIONING / "requirements-cpu.txt")
    assert cpu["tensorflow-cpu"] == env["TENSORFLOW_VERSION"]
    assert cpu["scikit-learn"] == env["SKLEARN_VERSION"]
    # The keys the Packer template parses for its labels, in the form it expects.
    assert re.fullmatch(r"[0-9]+", env["NVIDIA_DRIVER_BRANCH"])
    assert re.fullmatch(r"[0-9]+\.[0-9]+", env["CUDA_VERSION"])
    assert re.fullmatch(r"[0-9A-F]{40}", env["CUDA_REPO_KEY_FINGERPRINT"])
