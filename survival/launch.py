"""`invoke train`: validate the request, push the code, resolve the image, create the instance.

The request is validated (survival.request) before anything is pushed or created, so a bad flag
is one line of error and no cloud side effect.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from survival import jobstore
from survival.backend import Cloud
from survival.codepush import CSR_HOST, push_code, require_branch
from survival.instance_spec import JobSpec, MachineSpec, build_instance
from survival.placement import place
from survival.request import TrainRequest, default_name, validate

SOURCE_READ_SCOPE = "https://www.googleapis.com/auth/source.read_only"


def scopes_for(repo_url: str, scopes: tuple[str, ...]) -> tuple[str, ...]:
    """Least privilege: add source.read_only only when the VM must clone from CSR."""
    if repo_url.startswith(CSR_HOST) and SOURCE_READ_SCOPE not in scopes:
        return (*scopes, SOURCE_READ_SCOPE)
    return scopes


@dataclass(frozen=True)
class Launched:
    """A created job: what its instance is made of, so it can be made again in any zone."""

    job: JobSpec
    machine: MachineSpec
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
    launched = Launched(job, machine, dict(extra_metadata or {}))
    zone = place(
        cloud.compute, settings.zones, launched.make_body, lambda line: out(f"train: {line}")
    )
    launched = dataclasses.replace(launched, machine=dataclasses.replace(machine, zone=zone))
    jobstore.save(settings.local_state_dir, launched.job, launched.machine, launched.extra_metadata)
    out(
        f"train: created {name} in {zone} ({settings.provisioning}, {settings.machine_type}"
        f"{f', {settings.gpu_count}x {settings.gpu_type}' if settings.gpu_count else ''}); "
        f"job dir {job.job_dir}"
    )
    return launched
