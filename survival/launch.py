"""`invoke train`: validate the request, push the code, resolve the image, create the instance.

The request is validated (survival.request) before anything is pushed or created, so a bad flag
is one line of error and no cloud side effect.

A job name is a job dir, and a job dir trains one model: its spec (branch, module, steps, seed,
hyperparameters) is recorded in ``JOB_DIR/SPEC.json`` by the first launch (if absent). A later
`train` with the same name and another spec is refused before anything is pushed or created; the
same spec continues the job. Each launch starts a new *run*: a previous run's FAILED marker is
moved to ``JOB_DIR/failed-runs/`` first, so it can never end this run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from survival import jobstore
from survival.backend import Cloud
from survival.codepush import CSR_HOST, BundleStore, bundle_url, push_code, require_branch
from survival.errors import ConfigError
from survival.instance_spec import JobSpec, MachineSpec, build_instance
from survival.placement import place
from survival.request import TrainRequest, default_name, validate
from trainer.jobdir import JobDir
from trainer.storage import ABSENT_GENERATION, PreconditionFailed

SOURCE_READ_SCOPE = "https://www.googleapis.com/auth/source.read_only"
SPEC_FILE = "SPEC.json"
FAILED_RUNS_DIR = "failed-runs"
# Instance metadata naming the run that created the instance (startup.sh ignores it).
KEY_RUN_ID = "survival-run-id"
# What makes two trains of one name the same job. Not the commit: push-code snapshots the working
# tree into a new commit on every `train`, so re-running the same command (the way to continue a
# job) would otherwise always be "different". A new commit of the job's branch is a code update
# of the same job (a crash fix, say): the trainer still refuses to resume a checkpoint with other
# hyperparameters (exit 64), and the commit a job ran with is recorded in SPEC.json and the job
# record. Not checkpoint_steps or keep_alive either: they change how the job runs, not its model.
SPEC_KEYS = ("branch", "module", "train_steps", "seed", "hparams")


def spec_of(job: JobSpec) -> dict[str, Any]:
    """The job's spec as SPEC.json records it (the commit is recorded, not compared)."""
    return {
        "branch": job.branch,
        "commit": job.commit,
        "module": job.module,
        "train_steps": job.train_steps,
        "seed": job.seed,
        "hparams": json.loads(job.hparams_json),
    }


def spec_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key old -> new`` for every compared key the two specs disagree on (a key missing from
    ``old``, e.g. a spec rebuilt from an older DONE summary, is not compared)."""
    return [
        f"{key} {json.dumps(old[key], sort_keys=True)} -> {json.dumps(new[key], sort_keys=True)}"
        for key in SPEC_KEYS
        if key in old and old[key] != new[key]
    ]


def recorded_spec(job_dir: JobDir, fallback: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The job's spec: SPEC.json; for a job dir older than SPEC.json, ``fallback`` (this
    machine's job record), else what its DONE summary says."""
    data = job_dir.store.read(SPEC_FILE)
    if data is not None:
        try:
            value = json.loads(data)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
    if fallback is not None:
        return fallback
    done = job_dir.done()
    if done:
        keys = {"steps": "train_steps", "seed": "seed", "hparams": "hparams"}
        return {ours: done[theirs] for theirs, ours in keys.items() if theirs in done}
    return None


def check_spec(name: str, job_dir: JobDir, spec: dict[str, Any], fallback: Any = None) -> None:
    """ConfigError (one line, before any cloud side effect) when job ``name`` exists with
    another spec."""
    old = recorded_spec(job_dir, fallback)
    diffs = spec_differences(old, spec) if old else []
    if diffs:
        raise ConfigError(
            f"job {name} exists with another spec ({'; '.join(diffs)}): continue it with "
            f"`invoke watch {name}`, or start a new job with another --name"
        )


def claim_spec(name: str, job_dir: JobDir, spec: dict[str, Any]) -> None:
    """Write SPEC.json if absent; if another launch wrote one first, it must agree."""
    data = (json.dumps(spec, sort_keys=True) + "\n").encode()
    try:
        job_dir.store.write(SPEC_FILE, data, if_generation=ABSENT_GENERATION)
    except PreconditionFailed:
        check_spec(name, job_dir, spec)


def new_run_id(now_unix: float) -> str:
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now_unix))}-{secrets.token_hex(3)}"


def archive_failed(job_dir: JobDir, run_id: str, out: Callable[[str], None]) -> None:
    """Move a previous run's FAILED marker out of the way before a new run starts. A marker
    belongs to the run that wrote it: left in place it would end the new run at once."""
    found = job_dir.store.read_with_generation("FAILED")
    if found is None:
        return
    data, generation = found
    target = f"{FAILED_RUNS_DIR}/FAILED-before-{run_id}.json"
    job_dir.store.write(target, data)
    # Rewritten meanwhile (generation moved): not the marker we archived, so leave it.
    with contextlib.suppress(PreconditionFailed):
        job_dir.store.delete("FAILED", if_generation=generation)
    try:
        reason = json.loads(data).get("reason")
    except (ValueError, AttributeError):
        reason = None
    out(f"the previous run's FAILED marker ({reason}) is kept as {job_dir.url}/{target}")


def check_no_instance(cloud: Cloud, name: str) -> None:
    """A job's instance must not exist when a run starts: its run is still going."""
    for zone in cloud.settings.zones:
        if cloud.compute.get_instance(zone, name) is not None:
            raise ConfigError(
                f"instance {name} exists in {zone}: continue the job with `invoke watch {name}`, "
                f"or delete it first with `invoke down {name}`"
            )


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


@dataclass(frozen=True)
class Prepared:
    """A run checked and ready to start: its spec claimed in the job dir, its code pushed, a
    previous run's FAILED marker archived. What starts it (a VM, a Batch job) comes next."""

    job: JobSpec
    machine: MachineSpec
    run_id: str
    now_unix: float


def machine_for(settings: Any, image: str) -> MachineSpec:
    """The VM shape the settings ask for (the first zone; placement may pick another)."""
    return MachineSpec(
        zone=settings.zones[0],
        machine_type=settings.machine_type,
        gpu_type=settings.gpu_type,
        gpu_count=settings.gpu_count,
        provisioning=settings.provisioning,
        image=image,
        disk_size_gb=settings.disk_size_gb,
        service_account=settings.service_account,
        scopes=scopes_for(settings.trainer_repo, settings.scopes),
        preemption_notice_seconds=settings.preemption_notice_seconds,
        max_run_seconds=settings.max_run_seconds,
        network=settings.network,
        subnetwork=settings.subnetwork,
        external_ip=settings.external_ip,
    )


def push_for(cloud: Cloud, worktree: Path, req: Any, out: Callable[[str], None]) -> str:
    """Push the working tree (or find the pushed branch with --no-push); the commit. No
    trainer_repo: the code travels as a bundle in the job bucket (survival/codepush.py)."""
    settings = cloud.settings
    bundles = None if settings.trainer_repo else BundleStore(cloud.storage, settings.job_bucket)
    if req.push:
        pushed = push_code(
            worktree, settings.trainer_repo, req.branch, include=req.include, bundles=bundles
        )
        out(f"push-code: {req.branch} -> {pushed.commit} ({pushed.remote})")
        return pushed.commit
    return require_branch(worktree, settings.trainer_repo, req.branch, bundles)


def prepare_run(
    cloud: Cloud,
    worktree: Path,
    req: TrainRequest,
    *,
    out: Callable[[str], None] = print,
    now_unix: float | None = None,
    also_check: Callable[[str], None] = lambda name: None,
) -> Prepared:
    """Everything a new run needs before anything is started, for every engine: validate the
    request, refuse another spec under this name (and a live instance; ``also_check(name)`` for
    the engine's own checks), push the code, resolve the image, claim the spec, archive a
    previous run's FAILED marker."""
    settings = cloud.settings
    module, hparams = validate(req)
    now = time.time() if now_unix is None else now_unix
    name = req.name or default_name(req.branch, now)
    job_dir = cloud.open_job_dir(settings.job_dir(name))
    wanted = {
        "branch": req.branch,
        "module": module,
        "train_steps": req.train_steps,
        "seed": req.seed,
        "hparams": json.loads(json.dumps(hparams, sort_keys=True)),
    }
    fallback = None
    if name in jobstore.names(settings.local_state_dir):
        fallback = spec_of(jobstore.load(settings.local_state_dir, name)[0])
    check_spec(name, job_dir, wanted, fallback)
    check_no_instance(cloud, name)
    also_check(name)
    commit = push_for(cloud, worktree, req, out)
    machine = machine_for(settings, cloud.compute.image_from_family(settings.image_family))
    job = JobSpec(
        name=name,
        repo_url=settings.trainer_repo,
        bundle_url="" if settings.trainer_repo else bundle_url(settings.job_bucket, commit),
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
    claim_spec(name, job_dir, spec_of(job))
    run_id = new_run_id(now)
    archive_failed(job_dir, run_id, lambda line: out(f"train: {line}"))
    return Prepared(job, machine, run_id, now)


def launch(
    cloud: Cloud,
    worktree: Path,
    req: TrainRequest,
    *,
    out: Callable[[str], None] = print,
    now_unix: float | None = None,
    extra_metadata: dict[str, str] | None = None,
) -> Launched:
    """Prepare the run, create the instance (zone fallback); record the job."""
    settings = cloud.settings
    run = prepare_run(cloud, worktree, req, out=out, now_unix=now_unix)
    job, machine, run_id = run.job, run.machine, run.run_id
    launched = Launched(job, machine, {**(extra_metadata or {}), KEY_RUN_ID: run_id})
    zone = place(
        cloud.compute, settings.zones, launched.make_body, lambda line: out(f"train: {line}")
    )
    launched = dataclasses.replace(launched, machine=dataclasses.replace(machine, zone=zone))
    jobstore.save(
        settings.local_state_dir,
        launched.job,
        launched.machine,
        launched.extra_metadata,
        run_id=run_id,
        launched_unix=run.now_unix,
    )
    out(
        f"train: created {job.name} in {zone} ({settings.provisioning}, {settings.machine_type}"
        f"{f', {settings.gpu_count}x {settings.gpu_type}' if settings.gpu_count else ''}); "
        f"job dir {job.job_dir}"
    )
    return launched


def restart_run(cloud: Cloud, launched: Launched, out: Callable[[str], None] = print) -> Launched:
    """A new run of a job that was taken down (`invoke watch` after `invoke down`): a new run
    id, the old run's FAILED marker archived, the down mark and serial position cleared. The
    supervisor then finds no instance and creates it."""
    now = time.time()
    run_id = new_run_id(now)
    archive_failed(cloud.open_job_dir(launched.job.job_dir), run_id, out)
    launched = dataclasses.replace(
        launched, extra_metadata={**launched.extra_metadata, KEY_RUN_ID: run_id}
    )
    jobstore.save(
        cloud.settings.local_state_dir,
        launched.job,
        launched.machine,
        launched.extra_metadata,
        run_id=run_id,
        launched_unix=now,
    )
    out(f"{launched.job.name} was taken down; bringing it back (run {run_id})")
    return launched
