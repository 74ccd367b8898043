"""`invoke train`: validate the request, push the code, resolve the image, create the instance.

Everything the user typed is validated before anything is pushed or created, so a bad flag is
one line of error and no cloud side effect.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from survival import jobstore
from survival.backend import Cloud
from survival.codepush import CSR_HOST, push_code, require_branch, validate_branch
from survival.compute import Compute
from survival.errors import CapacityError, ConfigError
from survival.instance_spec import JobSpec, MachineSpec, build_instance

EXAMPLES = {
    "keras_digits": "trainer.examples.keras_digits",
    "sklearn_digits": "trainer.examples.sklearn_digits",
}
SOURCE_READ_SCOPE = "https://www.googleapis.com/auth/source.read_only"
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
HPARAM_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
HPARAM_WORD_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,100}$")
GPU_RE = re.compile(r"^(nvidia-[a-z0-9-]+):([0-9]{1,2})$")
MAX_TRAIN_STEPS = 10**9


@dataclass(frozen=True)
class TrainRequest:
    branch: str
    example: str = "keras_digits"
    train_steps: int = 300
    checkpoint_steps: int = 50
    seed: int = 0
    hparams: tuple[str, ...] = ()
    name: str | None = None
    push: bool = True
    keep_alive: bool = False


def parse_hparams(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``k=v`` pairs → a dict; values become int, float, bool or a simple word."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not HPARAM_KEY_RE.match(key):
            raise ConfigError(
                f"--hparam {pair!r}: use NAME=VALUE, e.g. --hparam learning_rate=0.01"
            )
        value: Any
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            try:
                value = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                except ValueError:
                    if not HPARAM_WORD_RE.match(raw):
                        raise ConfigError(
                            f"--hparam {key}: {raw[:40]!r} is not a number, true/false or a "
                            "simple word (letters, digits, . _ + -)"
                        ) from None
                    value = raw
        result[key] = value
    return result


def parse_gpu(value: str) -> tuple[str, int]:
    match = GPU_RE.match(value or "")
    if not match:
        raise ConfigError(
            f"--gpu {value!r}: use TYPE:COUNT, e.g. --gpu nvidia-tesla-t4:1 (or none:0)"
        )
    return match.group(1), int(match.group(2))


def default_name(branch: str, now_unix: float) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", branch.lower()).strip("-")[:40] or "job"
    if not stem[0].isalpha():
        stem = f"job-{stem}"[:40]
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now_unix))}"


def validate(req: TrainRequest) -> tuple[str, dict[str, Any]]:
    """(module, hparams) for a request, or ConfigError on the first bad value."""
    validate_branch(req.branch)
    if req.example not in EXAMPLES:
        raise ConfigError(f"--example {req.example!r}: use one of {', '.join(EXAMPLES)}")
    if not 0 < req.train_steps <= MAX_TRAIN_STEPS:
        raise ConfigError(f"--train-steps must be between 1 and {MAX_TRAIN_STEPS}")
    if not 0 < req.checkpoint_steps <= MAX_TRAIN_STEPS:
        raise ConfigError("--checkpoint-steps must be a positive number of steps")
    if not 0 <= req.seed < 10**9:
        raise ConfigError("--seed must be between 0 and 999999999")
    if req.name is not None and not NAME_RE.match(req.name):
        raise ConfigError(
            f"--name {req.name!r}: use 1-63 lower-case letters, digits and '-', "
            "starting with a letter"
        )
    return EXAMPLES[req.example], parse_hparams(req.hparams)


def scopes_for(repo_url: str, scopes: tuple[str, ...]) -> tuple[str, ...]:
    """Least privilege: add source.read_only only when the VM must clone from CSR."""
    if repo_url.startswith(CSR_HOST) and SOURCE_READ_SCOPE not in scopes:
        return (*scopes, SOURCE_READ_SCOPE)
    return scopes


def create_with_fallback(
    compute: Compute,
    zones: tuple[str, ...],
    make_body: Callable[[str], dict[str, Any]],
    out: Callable[[str], None],
) -> str:
    """Insert in the first zone with capacity; the zone used. CapacityError if none has any."""
    last: CapacityError | None = None
    for zone in zones:
        try:
            compute.insert_instance(zone, make_body(zone))
            return zone
        except CapacityError as err:
            out(f"train: no capacity in {zone} ({err.code}); trying the next zone")
            last = err
    assert last is not None
    raise ConfigError(
        f"no capacity in any of {', '.join(zones)} ({last.code}): add zones to survival.zones, "
        "try --provisioning standard, or retry later"
    )


@dataclass(frozen=True)
class Launched:
    job: JobSpec
    machine: MachineSpec
    zone: str
    extra_metadata: dict[str, str]

    def make_body(self, zone: str) -> dict[str, Any]:
        machine = dataclasses.replace(self.machine, zone=zone)
        return build_instance(machine, self.job, self.extra_metadata)


def launch(
    cloud: Cloud,
    worktree: Path,
    req: TrainRequest,
    *,
    out: Callable[[str], None] = print,
    now_unix: float | None = None,
    extra_metadata: dict[str, str] | None = None,
) -> Launched:
    """Validate, push, resolve the image, create the instance (zone fallback); record the job."""
    settings = cloud.settings
    module, hparams = validate(req)
    name = req.name or default_name(req.branch, time.time() if now_unix is None else now_unix)
    if req.push:
        pushed = push_code(worktree, settings.trainer_repo, req.branch)
        commit = pushed.commit
        out(f"push-code: {req.branch} -> {commit} ({settings.trainer_repo})")
    else:
        commit = require_branch(worktree, settings.trainer_repo, req.branch)
    image = cloud.compute.image_from_family(settings.image_family)
    job = JobSpec(
        name=name,
        repo_url=settings.trainer_repo,
        branch=req.branch,
        commit=commit,
        module=module,
        job_dir=settings.job_dir(name),
        train_steps=req.train_steps,
        checkpoint_steps=req.checkpoint_steps,
        seed=req.seed,
        hparams_json=json.dumps(hparams, sort_keys=True),
        keep_alive=req.keep_alive,
    )
    machine = MachineSpec(
        zone=settings.zones[0],
        machine_type=settings.machine_type,
        gpu_type=settings.gpu_type,
        gpu_count=settings.gpu_count,
        provisioning=settings.provisioning,
        image=image,
        disk_size_gb=settings.disk_size_gb,
        service_account=settings.service_account,
        scopes=scopes_for(settings.trainer_repo, settings.scopes),
    )
    launched = Launched(job, machine, machine.zone, dict(extra_metadata or {}))
    zone = create_with_fallback(cloud.compute, settings.zones, launched.make_body, out)
    launched = dataclasses.replace(
        launched, zone=zone, machine=dataclasses.replace(machine, zone=zone)
    )
    jobstore.save(settings.local_state_dir, launched.job, launched.machine, launched.extra_metadata)
    out(
        f"train: created {name} in {zone} ({settings.provisioning}, {settings.machine_type}"
        f"{f', {settings.gpu_count}x {settings.gpu_type}' if settings.gpu_count else ''}); "
        f"job dir {job.job_dir}"
    )
    return launched
