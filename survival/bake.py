"""Bake the training image with Packer: validate, build, read the manifest (docs/images.md).

The Packer CLI is driven as a subprocess (argv only, never a shell); the template is packer/ in
this checkout and its two builds are selected with ``-only``:

    gce    gce.googlecompute.gpu  GCE image: NVIDIA driver, CUDA, Python env, trainer
    local  local.null.local       localgce image directory: the same Python env (CPU build)

Packer 1.6.6 (Debian's) has the googlecompute builder built in; on Packer >= 1.8 the googlecompute
plugin is installed with ``packer plugins install`` when missing.

The local build registers its image with localgce from inside Packer (a shell-local step runs
``python -m survival.bake register ...``), so a finished `packer build` means a usable image.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from survival import config
from survival.config import IMAGE_FAMILY_MAX_CHARS, IMAGE_FAMILY_RE, KIT_ROOT, LOCAL_PROJECT
from survival.errors import BakeError, ConfigError, SurvivalError

PACKER_DIR = KIT_ROOT / "packer"
BUILD_ONLY = {"gce": "gce.googlecompute.gpu", "local": "local.null.local"}
GOOGLECOMPUTE_PLUGIN = "github.com/hashicorp/googlecompute"
PLUGINS_COMMAND_SINCE = (1, 8, 0)
SOURCE_FAMILIES = ("debian-12", "ubuntu-2204-lts")
MANIFEST_NAME = "packer-manifest.json"
PACKER_VERSION_TIMEOUT_SECONDS = 30
PLUGIN_INSTALL_TIMEOUT_SECONDS = 300

_LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
_LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)")

Runner = Callable[..., subprocess.CompletedProcess]


@dataclass(frozen=True)
class BakePlan:
    """Everything one bake runs: the packer commands and the variables they pass."""

    backend: str
    image_name: str
    family: str
    variables: dict[str, str]
    manifest: Path
    packer: str = "packer"
    image_dir: Path | None = None
    project: str = ""
    notes: list[str] = field(default_factory=list)

    def var_args(self) -> list[str]:
        return [arg for key, value in self.variables.items() for arg in ("-var", f"{key}={value}")]

    def command(self, action: str) -> list[str]:
        """``packer validate|build -only=<build> -var ... packer/``."""
        extra = ["-color=false"] if action == "build" else []
        return [
            self.packer,
            action,
            *extra,
            f"-only={BUILD_ONLY[self.backend]}",
            *self.var_args(),
            str(PACKER_DIR),
        ]


@dataclass(frozen=True)
class BakeResult:
    backend: str
    image_name: str
    family: str
    artifact_id: str
    image_dir: str = ""


# --- inputs ---------------------------------------------------------------------------------
def image_name_for(family: str, now: dt.datetime | None = None) -> str:
    """Image name = family + UTC timestamp (YYYYMMDDhhmmss), as the template does."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{family}-{now.astimezone(dt.UTC):%Y%m%d%H%M%S}"


def check_family(family: str) -> str:
    if not IMAGE_FAMILY_RE.match(family or ""):
        raise BakeError(
            f"image family {family!r} is not valid: lowercase letters, digits and dashes, starting "
            f"with a letter, at most {IMAGE_FAMILY_MAX_CHARS} characters (the image name adds a "
            "15-character timestamp); pass --family or set survival.image_family"
        )
    return family


def parse_gpu(spec: str) -> tuple[str, int]:
    """``TYPE:COUNT`` (e.g. nvidia-tesla-t4:1) → (type, count); ``none`` → ("", 0)."""
    try:
        return config.parse_gpu(spec)
    except ConfigError as err:
        raise BakeError(str(err)) from None


def kit_commit(root: Path = KIT_ROOT) -> str:
    """The checkout's commit (a label value), or "unknown" outside git."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out if _LABEL_VALUE_RE.match(out) and out else "unknown"


def local_plan(
    *,
    family: str,
    state_dir: str | Path,
    packer: str = "packer",
    python: str = sys.executable,
    image_name: str | None = None,
    commit: str | None = None,
) -> BakePlan:
    """The local bake: a new image directory under <state_dir>/images, registered with localgce."""
    check_family(family)
    state_dir = Path(state_dir).resolve()
    name = image_name or image_name_for(family)
    images_dir = state_dir / "images"
    manifest = state_dir / "bake" / MANIFEST_NAME
    variables = {
        "image_family": family,
        "image_name": name,
        "kit_commit": commit or kit_commit(),
        "local_images_dir": str(images_dir),
        "localgce_state_dir": str(state_dir),
        "kit_python": python,
        "pip_cache_dir": str(state_dir / "pip-cache"),
        "manifest_path": str(manifest),
    }
    return BakePlan(
        backend="local",
        image_name=name,
        family=family,
        variables=variables,
        manifest=manifest,
        packer=packer,
        image_dir=images_dir / name,
        project=LOCAL_PROJECT,
    )


def gce_plan(
    *,
    family: str,
    project: str,
    zone: str,
    machine_type: str,
    gpu: str,
    source_family: str,
    state_dir: str | Path,
    disk_size_gb: int = 50,
    service_account: str = "",
    use_os_login: bool = False,
    packer: str = "packer",
    image_name: str | None = None,
    commit: str | None = None,
) -> BakePlan:
    """The GCE bake: a build VM in ``zone`` of ``project`` with the GPU attached."""
    check_family(family)
    if not project:
        raise BakeError(
            "no GCP project: set survival.project in invoke.yaml "
            "(or INVOKE_SURVIVAL_PROJECT=my-project) for --backend gce"
        )
    if not zone:
        raise BakeError("no zone: set survival.zones in invoke.yaml for --backend gce")
    if source_family not in SOURCE_FAMILIES:
        raise BakeError(
            f"--source-family {source_family!r}: choose one of {', '.join(SOURCE_FAMILIES)}"
        )
    accelerator, count = parse_gpu(gpu)
    if service_account == "default":
        service_account = ""
    name = image_name or image_name_for(family)
    manifest = Path(state_dir).resolve() / "bake" / MANIFEST_NAME
    variables = {
        "project_id": project,
        "zone": zone,
        "image_family": family,
        "image_name": name,
        "kit_commit": commit or kit_commit(),
        "source_image_family": source_family,
        "machine_type": machine_type,
        "accelerator_type": accelerator,
        "accelerator_count": str(count),
        "disk_size_gb": str(disk_size_gb),
        "service_account_email": service_account,
        "use_os_login": "true" if use_os_login else "false",
        "manifest_path": str(manifest),
    }
    return BakePlan(
        backend="gce",
        image_name=name,
        family=family,
        variables=variables,
        manifest=manifest,
        packer=packer,
        project=project,
    )


def plan_for(
    settings: Any,
    *,
    gpu: str | None = None,
    source_family: str = "debian-12",
    use_os_login: bool = False,
) -> BakePlan:
    """The plan `invoke bake-image` runs, from the validated ``survival`` settings."""
    if settings.backend == "local":
        return local_plan(family=settings.image_family, state_dir=settings.local_state_dir)
    if gpu is None:
        gpu = f"{settings.gpu_type}:{settings.gpu_count}" if settings.gpu_count else "none"
    return gce_plan(
        family=settings.image_family,
        project=settings.project,
        zone=settings.zones[0] if settings.zones else "",
        machine_type=settings.machine_type,
        gpu=gpu,
        source_family=source_family,
        state_dir=settings.local_state_dir,
        disk_size_gb=settings.disk_size_gb,
        service_account=settings.service_account,
        use_os_login=use_os_login,
    )


def describe(plan: BakePlan) -> str:
    """What --dry-run prints: the commands (copy-pasteable) and the variables."""
    lines = [
        f"backend: {plan.backend}",
        f"image: {plan.image_name} (family {plan.family})",
        "commands:",
        "  " + shlex.join(plan.command("validate")),
        "  " + shlex.join(plan.command("build")),
        "variables:",
        *(f"  {key} = {value!r}" for key, value in plan.variables.items()),
    ]
    return "\n".join(lines)


# --- packer ---------------------------------------------------------------------------------
def find_packer(packer: str = "packer") -> str:
    path = shutil.which(packer)
    if not path:
        raise BakeError(
            f"{packer!r} not found on PATH: run `make system-deps` (installs Debian's packer) "
            "or install Packer >= 1.6.6"
        )
    return path


def packer_version(packer: str, run: Runner = subprocess.run) -> tuple[int, int, int]:
    out = run(
        [packer, "version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=PACKER_VERSION_TIMEOUT_SECONDS,
    )
    match = _VERSION_RE.search(out.stdout or "")
    if out.returncode != 0 or not match:
        raise BakeError(f"`{packer} version` failed ({(out.stderr or out.stdout).strip()!r})")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def ensure_googlecompute_plugin(packer: str, run: Runner = subprocess.run) -> str:
    """On Packer >= 1.8 install the googlecompute plugin when missing; say what was done."""
    version = packer_version(packer, run)
    if version < PLUGINS_COMMAND_SINCE:
        return f"packer {'.'.join(map(str, version))}: googlecompute is built in"
    installed = run(
        [packer, "plugins", "installed"],
        capture_output=True,
        text=True,
        check=False,
        timeout=PACKER_VERSION_TIMEOUT_SECONDS,
    )
    if installed.returncode == 0 and "googlecompute" in installed.stdout:
        return "googlecompute plugin already installed"
    result = run(
        [packer, "plugins", "install", GOOGLECOMPUTE_PLUGIN],
        capture_output=True,
        text=True,
        check=False,
        timeout=PLUGIN_INSTALL_TIMEOUT_SECONDS,
    )
    if result.returncode != 0:
        raise BakeError(
            f"`packer plugins install {GOOGLECOMPUTE_PLUGIN}` failed: "
            f"{(result.stderr or result.stdout).strip()}; install it by hand and retry"
        )
    return f"installed the {GOOGLECOMPUTE_PLUGIN} plugin"


def prepare(plan: BakePlan, run: Runner = subprocess.run) -> BakePlan:
    """What must hold before a build: packer on PATH; gce: the plugin; local: localgce running."""
    packer = find_packer(plan.packer)
    if plan.backend == "gce":
        print(f"bake: {ensure_googlecompute_plugin(packer, run)}", file=sys.stderr)
    else:
        from localgce.client import ensure_running

        ensure_running(plan.variables["localgce_state_dir"])
    return dataclasses.replace(plan, packer=packer)


def read_manifest(path: Path) -> dict[str, Any]:
    """The build of the last packer run recorded in the manifest post-processor's file."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise BakeError(f"packer wrote no manifest at {path}; look at packer's output") from err
    except json.JSONDecodeError as err:
        raise BakeError(f"{path} is not valid JSON ({err}); delete it and bake again") from err
    builds = data.get("builds") or []
    last = data.get("last_run_uuid")
    runs = [b for b in builds if b.get("packer_run_uuid") == last] or builds[-1:]
    if not runs:
        raise BakeError(f"{path} records no build; look at packer's output")
    return runs[-1]


def bake(
    plan: BakePlan, run: Runner = subprocess.run, env: dict[str, str] | None = None
) -> BakeResult:
    """packer validate, then packer build; returns what the manifest recorded."""
    plan.manifest.parent.mkdir(parents=True, exist_ok=True)
    run_env = dict(env if env is not None else os.environ)
    # Keep Packer from phoning home for update checks.
    run_env.setdefault("CHECKPOINT_DISABLE", "1")
    validate = run(plan.command("validate"), cwd=str(KIT_ROOT), env=run_env, check=False)
    if validate.returncode != 0:
        raise BakeError("packer validate failed (see above); fix the variables and retry")
    if plan.image_dir is not None:
        plan.image_dir.parent.mkdir(parents=True, exist_ok=True)
    build = run(plan.command("build"), cwd=str(KIT_ROOT), env=run_env, check=False)
    if build.returncode != 0:
        if plan.image_dir is not None and plan.image_dir.exists():
            # A half-built local image is never registered; do not leave it behind.
            shutil.rmtree(plan.image_dir, ignore_errors=True)
        raise BakeError(
            f"packer build failed (exit {build.returncode}; see above); nothing was registered"
        )
    record = read_manifest(plan.manifest)
    custom = record.get("custom_data") or {}
    name = custom.get("image_name") or record.get("artifact_id", "")
    if name != plan.image_name:
        raise BakeError(
            f"the manifest {plan.manifest} records {name!r}, expected {plan.image_name!r}"
        )
    return BakeResult(
        backend=plan.backend,
        image_name=name,
        family=custom.get("image_family", plan.family),
        artifact_id=str(record.get("artifact_id", "")),
        image_dir=custom.get("image_dir", ""),
    )


# --- local registration (run by the template's shell-local step) ---------------------------
def register_local_image(
    state_dir: Path,
    name: str,
    family: str,
    source: Path,
    labels: dict[str, str] | None = None,
    compute: Any = None,
) -> None:
    """images.insert on localgce with rawDisk.source = ``source`` (a directory with venv/)."""
    source = source.resolve()
    if not (source / "venv" / "bin" / "python").exists():
        raise BakeError(f"{source} has no venv/bin/python; python-env.sh did not finish")
    if compute is None:
        from localgce.client import NotRunning, load_endpoints
        from survival.backend import compute_for

        try:
            endpoints = load_endpoints(state_dir)
        except NotRunning as err:
            raise BakeError(str(err)) from err
        compute = compute_for(LOCAL_PROJECT, endpoints)
    compute.insert_local_image(name, family, str(source), labels or {})


def _labels(pairs: Sequence[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _LABEL_KEY_RE.match(key) or not _LABEL_VALUE_RE.match(value):
            raise BakeError(f"--label {pair!r}: use key=value with GCE label characters")
        labels[key] = value
    return labels


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m survival.bake register --state-dir D --name N --family F --source DIR``."""
    parser = argparse.ArgumentParser(prog="python -m survival.bake", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="register a local image directory with localgce")
    reg.add_argument("--state-dir", required=True, type=Path, help="localgce state directory")
    reg.add_argument("--name", required=True, help="image name (family + UTC timestamp)")
    reg.add_argument("--family", required=True, help="image family")
    reg.add_argument("--source", required=True, type=Path, help="the image directory (holds venv/)")
    reg.add_argument("--label", action="append", default=[], help="key=value image label")
    args = parser.parse_args(argv)
    try:
        check_family(args.family)
        register_local_image(
            args.state_dir, args.name, args.family, args.source, _labels(args.label)
        )
    except SurvivalError as err:
        print(f"survival.bake: registering {args.name} failed: {err}", file=sys.stderr)
        return 1
    print(f"registered image {args.name} (family {args.family}) from {args.source.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
