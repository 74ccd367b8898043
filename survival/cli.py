"""The bodies of the tasks in survival/tasks.py. Each takes the Invoke context and the task's
flags, prints what it did, and turns our errors into one-line `invoke.Exit` messages through
`user_errors` (the only place that happens).

survival/tasks.py imports this module inside each task, so `invoke --list` never loads it; the
google SDKs are imported lazily below it (survival/sdk.py, survival/backend.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from invoke import Exit

from localgce import daemon
from survival import bake, jobstore
from survival.backend import Cloud, open_cloud
from survival.chaos import Chaos
from survival.codepush import push_code as push
from survival.compute import InstanceInfo
from survival.config import KIT_ROOT, Settings, describe, parse_gpu
from survival.errors import ConfigError, SurvivalError
from survival.images import format_table
from survival.instance_spec import JOB_LABEL
from survival.launch import Launched, launch
from survival.logs import show_logs
from survival.placement import zones_from
from survival.plot import plot_timeline
from survival.progress import read_progress
from survival.report import print_table, status_row, summary
from survival.request import TrainRequest, validate
from survival.sshkeys import ensure_key, publish_key
from survival.supervisor import Supervisor, Timing

LOCAL_POLL_SECONDS = 0.2
GCE_POLL_SECONDS = 5.0


@contextlib.contextmanager
def user_errors(prefix: str = "error", *also: type[Exception]) -> Iterator[None]:
    """Our errors (and the ``also`` ones, from other packages) become one line on stderr,
    ``PREFIX: message``, and exit status 1 (no traceback)."""
    try:
        yield
    except (SurvivalError, *also) as err:
        raise Exit(f"{prefix}: {err}", code=1) from None


def settings(c: Any, **flags: Any) -> Settings:
    return Settings.from_invoke(c.config).with_flags(**flags)


# --- localgce --------------------------------------------------------------------------------
def localgce_state_dir(c: Any, state_dir: str | None) -> str:
    """--state-dir, else survival.local_state_dir (read raw: localgce needs no other setting)."""
    if state_dir:
        return state_dir
    section = c.config.get("survival", {})
    return section.get("local_state_dir", ".localgce") if hasattr(section, "get") else ".localgce"


def localgce_start(c: Any, state_dir: str | None, knobs: dict[str, Any], ssh: bool) -> None:
    """``knobs``: localgce.config.Knobs field names; None values are left at their defaults."""
    given = {name: float(value) for name, value in knobs.items() if value is not None}
    with user_errors("localgce.start", daemon.DaemonError):
        endpoints = daemon.start(localgce_state_dir(c, state_dir), knobs=given, ssh_enabled=ssh)
    print(f"localgce running (pid {endpoints['pid']}): compute {endpoints['compute']}")
    print(f"  storage {endpoints['storage']}, git {endpoints['git']}")


def localgce_stop(c: Any, state_dir: str | None) -> None:
    directory = localgce_state_dir(c, state_dir)
    stopped = daemon.stop(directory)
    print("localgce stopped" if stopped else f"localgce was not running ({directory})")


def localgce_status(c: Any, state_dir: str | None) -> None:
    directory = localgce_state_dir(c, state_dir)
    endpoints = daemon.status(directory)
    if endpoints is None:
        raise Exit(f"localgce is not running for {directory}; start it: invoke localgce.start")
    for key in ("compute", "storage", "git", "pid"):
        print(f"{key:8} {endpoints[key]}")


# --- jobs ------------------------------------------------------------------------------------
def show_config(c: Any) -> None:
    with user_errors():
        current = settings(c)
    width = max(len(k) for k, _, _ in describe(current))
    print(f"{'setting'.ljust(width)}  value  [source]")
    for key, value, source in describe(current):
        print(f"{key.ljust(width)}  {value}  [{source}]")


def push_code(c: Any, branch: str) -> str:
    with user_errors():
        cloud = open_cloud(settings(c), job_bucket=False)
        result = push(KIT_ROOT, cloud.settings.trainer_repo, branch)
    print(f"pushed {result.commit} to {result.branch} of {result.remote}")
    return result.commit


def train(c: Any, req: TrainRequest) -> None:
    """Validate everything (flags, settings, the chaos plan) before anything is pushed or created;
    then launch, and supervise unless --no-follow."""
    with user_errors():
        gpu_type, gpu_count = parse_gpu(req.gpu) if req.gpu is not None else (None, None)
        current = settings(
            c,
            machine_type=req.machine_type,
            provisioning=req.provisioning,
            gpu_type=gpu_type,
            gpu_count=gpu_count,
        )
        if req.zone is not None:
            # --zone puts that zone first; the others stay as fallbacks.
            current = current.with_flags(zones=zones_from(req.zone, current.zones))
        validate(req)
        # Chaos picks rehearsal moments, not secrets: a plain PRNG is right.
        rng = random.Random()  # noqa: S311
        plan = Chaos.plan(req.chaos, req.train_steps, rng) if req.chaos else None
        if plan and not current.is_local:
            print(
                f"WARNING: --chaos {req.chaos} will call simulateMaintenanceEvent on a real GCE "
                "instance (billed; counts against the per-region rate limit)"
            )
        cloud = open_cloud(current)
        launched = launch(cloud, KIT_ROOT, req)
        if req.follow:
            _supervise(cloud, launched, plan)
        else:
            print(f"not following: `invoke watch {launched.job.name}` supervises it later")


def _supervise(cloud: Cloud, launched: Launched, plan: Chaos | None = None) -> None:
    current = cloud.settings
    job, machine = launched.job, launched.machine
    supervisor = Supervisor(
        cloud.compute,
        name=job.name,
        zone=machine.zone,
        zones=current.zones,
        job_dir=cloud.open_job_dir(job.job_dir),
        make_body=launched.make_body,
        max_restarts=current.max_restarts,
        chaos=plan,
        # localgce calls are free and local: poll fast so chaos lands mid-attempt.
        timing=Timing(poll_seconds=LOCAL_POLL_SECONDS if current.is_local else GCE_POLL_SECONDS),
    )
    outcome = supervisor.run()
    if outcome.zone != machine.zone:
        machine = dataclasses.replace(machine, zone=outcome.zone)
        jobstore.save(current.local_state_dir, job, machine, launched.extra_metadata)
    for line in summary(job.name, machine, outcome.progress, outcome.restarts):
        print(line)


def watch(c: Any, name: str) -> None:
    with user_errors():
        cloud = open_cloud(settings(c))
        _supervise(cloud, Launched(*jobstore.load(cloud.settings.local_state_dir, name)))


def _latest_job(current: Settings) -> str:
    folder = Path(current.local_state_dir) / "jobs"
    records = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not records:
        raise ConfigError("no jobs launched from here yet: start one with `invoke train -b X`")
    return records[-1].stem


def _instance(cloud: Cloud, name: str) -> InstanceInfo:
    """The job's instance: looked for in its recorded zone first, then in survival.zones."""
    current = cloud.settings
    zones = current.zones
    if name in jobstore.names(current.local_state_dir):
        _, machine, _ = jobstore.load(current.local_state_dir, name)
        zones = zones_from(machine.zone, zones)
    for zone in zones:
        info = cloud.compute.get_instance(zone, name)
        if info is not None:
            return info
    raise ConfigError(f"no instance {name!r} in {', '.join(zones)}: see `invoke status`")


def ssh_logs(c: Any, name: str | None, follow: bool) -> str:
    with user_errors():
        cloud = open_cloud(settings(c), job_bucket=False)
        current = cloud.settings
        info = _instance(cloud, name or _latest_job(current))
        public = ensure_key(current.ssh_key_path, current.ssh_user)
        if publish_key(cloud.compute, current.ssh_user, public):
            print(f"ssh-logs: published {current.ssh_key_path}.pub in project ssh-keys")
        try:
            return show_logs(
                cloud.compute, info, current.ssh_user, current.ssh_key_path, follow=follow
            )
        except BrokenPipeError:
            # The reader went away (`invoke ssh-logs NAME | head`): stop quietly, as tail does.
            # Point stdout at /dev/null so the interpreter's final flush cannot fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return "closed"


def status(c: Any) -> list[list[str]]:
    with user_errors():
        cloud = open_cloud(settings(c))
        current = cloud.settings
        instances = {i.name: i for i in cloud.compute.list_instances(current.zones, JOB_LABEL)}
        recorded = set(jobstore.names(current.local_state_dir))
        now = time.time()
        rows = []
        for name in sorted(set(instances) | recorded):
            job = machine = None
            if name in recorded:
                job, machine, _ = jobstore.load(current.local_state_dir, name)
            info = instances.get(name)
            job_dir = job.job_dir if job else (info.metadata.get("job-dir") if info else None)
            progress = read_progress(cloud.open_job_dir(job_dir)) if job_dir else None
            steps = job.train_steps if job else None
            rows.append(status_row(name, info, machine, steps, progress, now))
    print_table(rows)
    return rows


def preempt(c: Any, name: str) -> None:
    with user_errors():
        cloud = open_cloud(settings(c), job_bucket=False)
        info = _instance(cloud, name)
        if not cloud.settings.is_local:
            print(f"WARNING: simulating a maintenance event on real GCE instance {name}")
        cloud.compute.preempt_instance(info.zone, name)
    print(f"preempted {name} in {info.zone}")


def down(c: Any, name: str | None, all_jobs: bool) -> None:
    with user_errors():
        if bool(name) == bool(all_jobs):
            raise ConfigError("give one job NAME or --all (see `invoke status`)")
        cloud = open_cloud(settings(c), job_bucket=False)
        if all_jobs:
            targets = cloud.compute.list_instances(cloud.settings.zones, JOB_LABEL)
        else:
            targets = [_instance(cloud, name)]
        for info in targets:
            cloud.compute.delete_instance(info.zone, info.name)
            print(f"deleted {info.name} in {info.zone} (job dir kept)")
        if not targets:
            print("no job instances to delete")


def plot(c: Any, name: str, output: str | None) -> Path:
    with user_errors():
        cloud = open_cloud(settings(c))
        job_dir = cloud.open_job_dir(cloud.settings.job_dir(name))
        target = Path(output or f"{name}-timeline.png")
        plot_timeline(name, job_dir.metrics(), job_dir.attempts(), target)
    print(f"wrote {target}")
    return target


# --- images ----------------------------------------------------------------------------------
def bake_image(
    c: Any,
    *,
    backend: str | None,
    family: str | None,
    gpu: str | None,
    source_family: str,
    os_login: bool,
    dry_run: bool,
) -> None:
    with user_errors("bake-image"):
        current = settings(c, backend=backend, image_family=family)
        plan = bake.plan_for(current, gpu=gpu, source_family=source_family, use_os_login=os_login)
        if dry_run:
            print(bake.describe(plan))
            return
        result = bake.bake(bake.prepare(plan))
    print(f"image {result.image_name} (family {result.family}) baked on {result.backend}")


def images_list(c: Any, family: str | None, backend: str | None) -> None:
    with user_errors("images"):
        current = settings(c, backend=backend, image_family=family)
        found = open_cloud(current, job_bucket=False).compute.list_images(current.image_family)
    print(format_table(found, current.image_family))


def images_deprecate(c: Any, name: str, replacement: str, backend: str | None) -> None:
    with user_errors("images.deprecate"):
        cloud = open_cloud(settings(c, backend=backend), job_bucket=False)
        cloud.compute.deprecate_image(name, replacement=replacement)
    print(f"image {name} is DEPRECATED" + (f" (replacement {replacement})" if replacement else ""))
