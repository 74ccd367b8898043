"""Settings of the orchestrator, read from Invoke's own config layering (never a home-made loader).

Layers, lowest first (Invoke's order): code defaults (`DEFAULTS`, wired with ``ns.configure``) →
system/user ``invoke.yaml`` files → the project ``invoke.yaml`` beside tasks.py → env vars
``INVOKE_SURVIVAL_<KEY>`` → a runtime file (``invoke -f FILE``) → a task's flags.
`Settings.from_invoke` validates the merged ``survival`` section; `sources` says which layer
each value came from, for ``invoke config``.
"""

from __future__ import annotations

import dataclasses
import getpass
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from survival.errors import ConfigError

BACKENDS = ("local", "gce")
PROVISIONING_MODELS = ("spot", "preemptible", "standard")
STORAGE_READ_WRITE_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
LOGGING_WRITE_SCOPE = "https://www.googleapis.com/auth/logging.write"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# The repository root: the working tree `invoke push-code` snapshots (where tasks.py lives), and
# where packer/ and startup/ are read from.
KIT_ROOT = Path(__file__).resolve().parent.parent
# The project localgce serves when survival.project is empty (any id works there; one is used).
LOCAL_PROJECT = "local-project"
LOCAL_JOB_BUCKET = "survival-jobs"
TRAINER_REPO_NAME = "trainer"

# Code defaults; invoke.yaml repeats them with comments (a test keeps the two in step).
DEFAULTS: dict[str, Any] = {
    "backend": "local",
    "project": "",
    "zones": ["us-central1-a", "us-central1-b", "us-central1-c"],
    "machine_type": "n1-standard-4",
    "gpu_type": "nvidia-tesla-t4",
    "gpu_count": 1,
    "provisioning": "spot",
    "image_family": "gce-survival-kit",
    "local_state_dir": ".localgce",
    "trainer_repo": "",
    "job_bucket": "",
    "service_account": "default",
    "scopes": [STORAGE_READ_WRITE_SCOPE, LOGGING_WRITE_SCOPE],
    "ssh_user": "",
    "ssh_key_path": "~/.ssh/google_compute_engine",
    "disk_size_gb": 50,
    "max_restarts": 20,
    "heartbeat_stale_seconds": 300,
}

# Invoke's layers, highest precedence first, with the words `invoke config` prints.
_LAYERS = (
    ("_overrides", "command-line override"),
    ("_runtime", "runtime file (invoke -f)"),
    ("_env", "env var INVOKE_SURVIVAL_{KEY}"),
    ("_project", "project invoke.yaml"),
    ("_user", "user ~/.invoke.yaml"),
    ("_system", "system /etc/invoke.yaml"),
    ("_collection", "code default (survival/config.py)"),
    ("_defaults", "invoke default"),
)

_PROJECT_RE = re.compile(rf"^[a-z][-a-z0-9]{{4,28}}[a-z0-9]$|^{re.escape(LOCAL_PROJECT)}$")
_ZONE_RE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
_MACHINE_TYPE_RE = re.compile(r"^[a-z][a-z0-9]*-[a-z0-9-]+$")
_GPU_TYPE_RE = re.compile(r"^nvidia-[a-z0-9-]+$")
_GPU_RE = re.compile(r"^(nvidia-[a-z0-9-]+):([0-9]+)$")
# GCE attaches 1, 2, 4 or 8 GPUs of one type to a VM (N1 shapes; A2/G2 shapes come in the same
# steps); 0 means no GPU.
GPU_COUNTS = (1, 2, 4, 8)
NO_GPU_SPECS = ("", "none", "0", "none:0")
# GCE allows image families of up to 63 characters ([a-z]([-a-z0-9]*[a-z0-9])?), but the kit names
# each image FAMILY-YYYYMMDDhhmmss (survival.bake.image_name_for) and an image name is at most 63
# characters too: 63 - len("-YYYYMMDDhhmmss") = 48. Settings and bakes both check this one rule.
IMAGE_FAMILY_MAX_CHARS = 48
IMAGE_FAMILY_RE = re.compile(rf"^[a-z]([-a-z0-9]{{0,{IMAGE_FAMILY_MAX_CHARS - 2}}}[a-z0-9])?$")
_BUCKET_RE = re.compile(r"^[a-z0-9][-a-z0-9_.]{1,61}[a-z0-9]$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Settings:
    """The validated ``survival`` settings. ``sources`` maps each key to the layer it came from."""

    backend: str
    project: str
    zones: tuple[str, ...]
    machine_type: str
    gpu_type: str
    gpu_count: int
    provisioning: str
    image_family: str
    local_state_dir: Path
    trainer_repo: str
    job_bucket: str
    service_account: str
    scopes: tuple[str, ...]
    ssh_user: str
    ssh_key_path: Path
    disk_size_gb: int
    max_restarts: int
    # The supervisor restarts a RUNNING VM whose trainer heartbeat has not moved for this long.
    heartbeat_stale_seconds: int
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def is_local(self) -> bool:
        return self.backend == "local"

    def job_dir(self, name: str) -> str:
        return f"gs://{self.job_bucket}/jobs/{name}"

    def with_flags(self, **flags: Any) -> Settings:
        """These settings with a task's flags applied (``None`` means the flag was not given)."""
        given = {k: v for k, v in flags.items() if v is not None}
        if not given:
            return self
        raw = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "sources"
        }
        # Values derived from others (project, job bucket, repo, ...) are derived again: a flag
        # such as --backend gce must not inherit what was derived for backend local.
        derived = {k for k, src in self.sources.items() if src.startswith("derived")} - set(given)
        raw.update({k: "" for k in derived})
        raw.update(given)
        sources = {k: src for k, src in self.sources.items() if k not in derived}
        sources.update({k: f"flag --{k.replace('_', '-')}" for k in given})
        return _build(raw, sources)

    @classmethod
    def from_invoke(cls, config: Any) -> Settings:
        """Validate the ``survival`` section of an Invoke config (ConfigError on bad values)."""
        section = config.get("survival") or {}
        raw = {key: section.get(key, default) for key, default in DEFAULTS.items()}
        unknown = sorted(set(section) - set(DEFAULTS))
        if unknown:
            raise ConfigError(
                f"unknown setting survival.{unknown[0]}: remove it from invoke.yaml "
                f"(known: {', '.join(DEFAULTS)})"
            )
        return _build(raw, sources_of(config))


ENV_PREFIX = "INVOKE_SURVIVAL_"


def check_env_vars(environ: Mapping[str, str]) -> None:
    """ConfigError for the first INVOKE_SURVIVAL_<KEY> that Invoke itself could not load.

    Invoke casts an env var to the type of the value it overrides (a whole number for
    max_restarts, gpu_count, disk_size_gb) and cannot read lists (zones, scopes) from the
    environment at all; either way it fails with a traceback before our validation runs. Other
    values are checked with the rest of the settings, by `Settings.from_invoke`.
    """
    for key, default in DEFAULTS.items():
        var = f"{ENV_PREFIX}{key.upper()}"
        if var not in environ:
            continue
        value = environ[var]
        if isinstance(default, list):
            raise ConfigError(
                f"env var {var}: Invoke cannot read a list from the environment; set "
                f"survival.{key} in invoke.yaml or a runtime file (invoke -f FILE)"
            )
        if isinstance(default, int) and not isinstance(default, bool):
            try:
                int(value)
            except ValueError:
                raise ConfigError(
                    f"env var {var}={value[:40]!r}: survival.{key} must be a whole number"
                ) from None


def sources_of(config: Any) -> dict[str, str]:
    """For each ``survival`` key, the highest Invoke layer that sets it."""
    sources: dict[str, str] = {}
    for key in DEFAULTS:
        for attr, label in _LAYERS:
            layer = getattr(config, attr, None) or {}
            if isinstance(layer.get("survival"), dict) and key in layer["survival"]:
                sources[key] = label.replace("{KEY}", key.upper())
                break
        else:
            sources[key] = "code default (survival/config.py)"
    return sources


def _as_list(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        raise ConfigError(f"survival.{key} must be a list (YAML list or a,b,c), got {value!r}")
    return tuple(i for i in items if i)


def _as_int(key: str, value: Any, minimum: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"survival.{key} must be a whole number, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"survival.{key} must be >= {minimum}, got {number}")
    return number


def _check(key: str, value: str, pattern: re.Pattern[str], example: str) -> str:
    if not pattern.match(value):
        raise ConfigError(f"survival.{key}={value!r} is not valid: use something like {example}")
    return value


def _build(raw: dict[str, Any], sources: dict[str, str]) -> Settings:
    backend = str(raw["backend"])
    if backend not in BACKENDS:
        raise ConfigError(f"survival.backend={backend!r}: use one of {', '.join(BACKENDS)}")
    provisioning = str(raw["provisioning"]).lower()
    if provisioning not in PROVISIONING_MODELS:
        raise ConfigError(
            f"survival.provisioning={provisioning!r}: use one of {', '.join(PROVISIONING_MODELS)}"
        )
    project = str(raw["project"] or "")
    if not project:
        if backend == "gce":
            raise ConfigError(
                "survival.project is empty with backend gce: set `project:` under `survival:` in "
                "invoke.yaml or export INVOKE_SURVIVAL_PROJECT=<your-project-id>"
            )
        project = LOCAL_PROJECT
        sources = {**sources, "project": "derived (backend local)"}
    _check("project", project, _PROJECT_RE, "my-project-123")
    zones = _as_list("zones", raw["zones"])
    if not zones:
        raise ConfigError("survival.zones is empty: list at least one zone, e.g. [us-central1-a]")
    for zone in zones:
        _check("zones", zone, _ZONE_RE, "us-central1-a")
    gpu_count = _as_int("gpu_count", raw["gpu_count"], 0)
    gpu_type = str(raw["gpu_type"] or "")
    if gpu_count:
        _check("gpu_type", gpu_type, _GPU_TYPE_RE, "nvidia-tesla-t4")
        if gpu_count not in GPU_COUNTS:
            raise ConfigError(f"survival.gpu_count={gpu_count}: use 0 (no GPU), 1, 2, 4 or 8")
    job_bucket = str(raw["job_bucket"] or "")
    if not job_bucket:
        job_bucket = LOCAL_JOB_BUCKET if backend == "local" else f"{project}-survival-jobs"
        sources = {**sources, "job_bucket": f"derived (backend {backend})"}
    _check("job_bucket", job_bucket, _BUCKET_RE, "my-project-survival-jobs")
    state_dir = Path(str(raw["local_state_dir"] or ".localgce")).expanduser()
    trainer_repo = str(raw["trainer_repo"] or "")
    if not trainer_repo:
        trainer_repo = (
            (state_dir / "git" / f"{TRAINER_REPO_NAME}.git").resolve().as_uri()
            if backend == "local"
            else f"https://source.developers.google.com/p/{project}/r/{TRAINER_REPO_NAME}"
        )
        sources = {**sources, "trainer_repo": f"derived (backend {backend})"}
    ssh_user = str(raw["ssh_user"] or "")
    if not ssh_user:
        ssh_user = _default_ssh_user()
        sources = {**sources, "ssh_user": "derived (local user name)"}
    _check("ssh_user", ssh_user, _USER_RE, "alice")
    scopes = _as_list("scopes", raw["scopes"])
    if not scopes:
        raise ConfigError("survival.scopes is empty: keep at least devstorage.read_write")
    return Settings(
        backend=backend,
        project=project,
        zones=zones,
        machine_type=_check(
            "machine_type", str(raw["machine_type"]), _MACHINE_TYPE_RE, "n1-standard-4"
        ),
        gpu_type=gpu_type,
        gpu_count=gpu_count,
        provisioning=provisioning,
        image_family=_check(
            "image_family", str(raw["image_family"]), IMAGE_FAMILY_RE, "gce-survival-kit"
        ),
        local_state_dir=state_dir,
        trainer_repo=trainer_repo,
        job_bucket=job_bucket,
        service_account=str(raw["service_account"] or "default"),
        scopes=scopes,
        ssh_user=ssh_user,
        ssh_key_path=Path(str(raw["ssh_key_path"])).expanduser(),
        disk_size_gb=_as_int("disk_size_gb", raw["disk_size_gb"], 10),
        max_restarts=_as_int("max_restarts", raw["max_restarts"], 0),
        heartbeat_stale_seconds=_as_int(
            "heartbeat_stale_seconds", raw["heartbeat_stale_seconds"], 10
        ),
        sources=sources,
    )


def parse_gpu(spec: str) -> tuple[str, int]:
    """``TYPE:COUNT`` (e.g. nvidia-tesla-t4:1) → (type, count); ``none`` (or 0) → ("", 0)."""
    if spec.lower() in NO_GPU_SPECS:
        return "", 0
    match = _GPU_RE.match(spec)
    if not match or int(match.group(2)) not in GPU_COUNTS:
        raise ConfigError(
            f"--gpu {spec!r}: use TYPE:COUNT with COUNT 1, 2, 4 or 8 (e.g. nvidia-tesla-t4:1), "
            "or none for no GPU"
        )
    return match.group(1), int(match.group(2))


def _default_ssh_user() -> str:
    # gcloud uses the local user name, lower-cased; we do the same.
    name = re.sub(r"[^a-z0-9_-]", "", getpass.getuser().lower())
    return name or "survival"


def describe(settings: Settings) -> list[tuple[str, str, str]]:
    """(key, effective value, source) rows for ``invoke config``."""
    rows = []
    for f in dataclasses.fields(settings):
        if f.name == "sources":
            continue
        value = getattr(settings, f.name)
        shown = ", ".join(value) if isinstance(value, tuple) else str(value)
        rows.append((f.name, shown, settings.sources.get(f.name, "derived")))
    return rows
