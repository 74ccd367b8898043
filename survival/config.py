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
PROVISIONING_MODELS = ("spot", "preemptible", "standard", "flex-start")
STORAGE_READ_WRITE_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
LOGGING_WRITE_SCOPE = "https://www.googleapis.com/auth/logging.write"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# The repository root: the working tree `invoke push-code` snapshots (where tasks.py lives), and
# where packer/ and startup/ are read from.
KIT_ROOT = Path(__file__).resolve().parent.parent
# The project localgce serves when survival.project is empty (any id works there; one is used).
LOCAL_PROJECT = "local-project"
LOCAL_JOB_BUCKET = "survival-jobs"
# survival.trainer_repo, when set: a git URL startup.sh accepts (its STARTUP_RE_REPO, the same
# pattern). Empty (the default): the code travels as a git bundle in the job bucket.
TRAINER_REPO_RE = re.compile(
    r"^(https://[A-Za-z0-9.-]+(:[0-9]{1,5})?|file://)(/[A-Za-z0-9._~-]+)+$"
)

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
    # Spot only: how long instance/preempted shows TRUE before the ACPI soft-off. Empty: the
    # backend's default (GCE_PREEMPTION_NOTICE_SECONDS on gce, LOCAL_PREEMPTION_NOTICE_SECONDS on
    # local); 0: no notice.
    "preemption_notice_seconds": "",
    # A cost cap: scheduling.maxRunDuration of every VM of the job (0: none). Required (at most
    # FLEX_START_MAX_RUN_HOURS) with provisioning flex-start.
    "max_run_hours": 0.0,
    "network": "default",
    "subnetwork": "",
    "external_ip": True,
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
# Network and subnetwork names follow GCE's resource-name rule (RFC 1035, at most 63 characters).
_NETWORK_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
# Compute Engine offers one preemption-notice length for Spot VMs, 120 s (docs/gce-behaviour.md,
# "Spot and GPU scheduling options"); localgce takes any length up to it, and uses a short one by
# default so demos and tests do not wait two minutes per preemption.
GCE_PREEMPTION_NOTICE_SECONDS = 120
LOCAL_PREEMPTION_NOTICE_SECONDS = 3
# maxRunDuration / terminationTime: at least 30 s, at most 120 days on GCE; flex-start VMs run
# for at most 7 days. localgce also takes shorter durations (from 1 s), for fast tests.
GCE_MIN_RUN_SECONDS = 30
LOCAL_MIN_RUN_SECONDS = 1
MAX_RUN_HOURS = 120 * 24
FLEX_START_MAX_RUN_HOURS = 7 * 24
# Flex-start VMs come in accelerator-optimized machine families (A2, A3, A4, G2; not A4X) and H4D.
FLEX_START_MACHINE_RE = re.compile(r"^(a2|a3|a4|g2|h4d)-[a-z0-9-]+$")


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
    # Spot only (0: none): instance/preempted is TRUE this long before the ACPI soft-off.
    preemption_notice_seconds: int = 0
    # scheduling.maxRunDuration of each VM (0: none); always set with flex-start.
    max_run_hours: float = 0.0
    network: str = "default"
    subnetwork: str = ""  # empty: the network's subnetwork in the VM's region (auto mode)
    external_ip: bool = True
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def max_run_seconds(self) -> int:
        """max_run_hours in whole seconds (what scheduling.maxRunDuration carries)."""
        return round(self.max_run_hours * 3600)

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
        if isinstance(default, bool):
            # Invoke reads any value but "" and "0" as true, so "false" would mean true.
            if value not in ("0", "1"):
                raise ConfigError(
                    f"env var {var}={value[:40]!r}: use 1 (true) or 0 (false) for survival.{key}"
                )
        elif isinstance(default, int):
            try:
                int(value)
            except ValueError:
                raise ConfigError(
                    f"env var {var}={value[:40]!r}: survival.{key} must be a whole number"
                ) from None
        elif isinstance(default, float):
            try:
                float(value)
            except ValueError:
                raise ConfigError(
                    f"env var {var}={value[:40]!r}: survival.{key} must be a number"
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


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ConfigError(f"survival.{key} must be true or false, got {value!r}")


def _preemption_notice(raw: Any, backend: str, sources: dict[str, str]) -> tuple[int, dict]:
    """(seconds, sources): empty means the backend's default; GCE offers 120 s only."""
    if raw is None or str(raw).strip() == "":
        default = (
            GCE_PREEMPTION_NOTICE_SECONDS if backend == "gce" else (LOCAL_PREEMPTION_NOTICE_SECONDS)
        )
        return default, {**sources, "preemption_notice_seconds": f"derived (backend {backend})"}
    seconds = _as_int("preemption_notice_seconds", raw, 0)
    if backend == "gce" and seconds not in (0, GCE_PREEMPTION_NOTICE_SECONDS):
        raise ConfigError(
            f"survival.preemption_notice_seconds={seconds}: Compute Engine offers a "
            f"{GCE_PREEMPTION_NOTICE_SECONDS} s preemption notice only; use "
            f"{GCE_PREEMPTION_NOTICE_SECONDS}, or 0 for none"
        )
    if seconds > GCE_PREEMPTION_NOTICE_SECONDS:
        raise ConfigError(
            f"survival.preemption_notice_seconds={seconds}: use 0 (none) to "
            f"{GCE_PREEMPTION_NOTICE_SECONDS}"
        )
    return seconds, sources


def _max_run_hours(raw: Any, backend: str, provisioning: str, machine_type: str) -> float:
    """max_run_hours checked against Compute Engine's rules for maxRunDuration."""
    try:
        hours = float(raw if raw not in (None, "") else 0)
    except (TypeError, ValueError):
        raise ConfigError(
            f"survival.max_run_hours must be a number of hours (0: no limit), got {raw!r}"
        ) from None
    if not hours == hours or hours < 0:  # NaN or negative
        raise ConfigError(f"survival.max_run_hours must be 0 (no limit) or more, got {raw!r}")
    seconds = round(hours * 3600)
    if provisioning == "flex-start":
        if not seconds:
            raise ConfigError(
                "provisioning flex-start needs a run duration: set --max-run-hours (at most "
                f"{FLEX_START_MAX_RUN_HOURS}, flex-start VMs run for at most 7 days)"
            )
        if hours > FLEX_START_MAX_RUN_HOURS:
            raise ConfigError(
                f"survival.max_run_hours={hours:g}: flex-start VMs run for at most "
                f"{FLEX_START_MAX_RUN_HOURS} hours (7 days)"
            )
        if backend == "gce" and not FLEX_START_MACHINE_RE.match(machine_type):
            raise ConfigError(
                f"provisioning flex-start with machine_type {machine_type}: flex-start VMs use "
                "accelerator-optimized (a2-, a3-, a4-, g2-) or h4d- machine types"
            )
    if not seconds:
        return 0.0
    if provisioning == "preemptible":
        raise ConfigError(
            "survival.max_run_hours with provisioning preemptible: Compute Engine does not limit "
            "the run time of legacy preemptible VMs (they stop after 24 h); use spot"
        )
    minimum = GCE_MIN_RUN_SECONDS if backend == "gce" else LOCAL_MIN_RUN_SECONDS
    if seconds < minimum or hours > MAX_RUN_HOURS:
        raise ConfigError(
            f"survival.max_run_hours={hours:g}: use 0 (no limit), or {minimum} s "
            f"({minimum / 3600:.4g} h) to {MAX_RUN_HOURS} h (120 days)"
        )
    return hours


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
    if trainer_repo and not TRAINER_REPO_RE.match(trainer_repo):
        raise ConfigError(
            f"survival.trainer_repo={trainer_repo[:100]!r} is not valid: use an https:// git URL "
            "(file:// on localgce), or leave it empty to ship the code as a git bundle in the "
            "job bucket"
        )
    ssh_user = str(raw["ssh_user"] or "")
    if not ssh_user:
        ssh_user = _default_ssh_user()
        sources = {**sources, "ssh_user": "derived (local user name)"}
    _check("ssh_user", ssh_user, _USER_RE, "alice")
    scopes = _as_list("scopes", raw["scopes"])
    if not scopes:
        raise ConfigError("survival.scopes is empty: keep at least devstorage.read_write")
    machine_type = _check(
        "machine_type", str(raw["machine_type"]), _MACHINE_TYPE_RE, "n1-standard-4"
    )
    notice_seconds, sources = _preemption_notice(raw["preemption_notice_seconds"], backend, sources)
    max_run_hours = _max_run_hours(raw["max_run_hours"], backend, provisioning, machine_type)
    network = _check("network", str(raw["network"] or ""), _NETWORK_RE, "default")
    subnetwork = str(raw["subnetwork"] or "")
    if subnetwork:
        _check("subnetwork", subnetwork, _NETWORK_RE, "my-subnet (a name in the zones' region)")
        regions = sorted({zone.rsplit("-", 1)[0] for zone in zones})
        if len(regions) > 1:
            raise ConfigError(
                f"survival.subnetwork={subnetwork!r} belongs to one region, but survival.zones "
                f"span {', '.join(regions)}: keep the zones in one region, or leave subnetwork "
                "empty"
            )
    return Settings(
        backend=backend,
        project=project,
        zones=zones,
        machine_type=machine_type,
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
        preemption_notice_seconds=notice_seconds,
        max_run_hours=max_run_hours,
        network=network,
        subnetwork=subnetwork,
        external_ip=_as_bool("external_ip", raw["external_ip"]),
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
        if f.name == "trainer_repo" and not value:
            shown = f"(none: git bundles in gs://{settings.job_bucket}/code/)"
        rows.append((f.name, shown, settings.sources.get(f.name, "derived")))
    return rows
