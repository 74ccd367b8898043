"""The bodies of the orchestration tasks in tasks.py. Each takes the Invoke context and the
task's flags, turns errors into one-line `invoke.Exit` messages and prints what it did."""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from invoke import Exit

from survival import jobstore
from survival.config import Settings, describe
from survival.errors import SurvivalError

LOCAL_POLL_SECONDS = 0.2
GCE_POLL_SECONDS = 5.0


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Our errors become one line on stderr and exit status 1 (no traceback)."""
    try:
        yield
    except SurvivalError as err:
        raise Exit(f"error: {err}", code=1) from None


def settings(c: Any, **flags: Any) -> Settings:
    return Settings.from_invoke(c.config).with_flags(**flags)


def show_config(c: Any) -> None:
    with user_errors():
        current = settings(c)
    width = max(len(k) for k, _, _ in describe(current))
    print(f"{'setting'.ljust(width)}  value  [source]")
    for key, value, source in describe(current):
        print(f"{key.ljust(width)}  {value}  [{source}]")


def push_code(c: Any, worktree: Path | str, branch: str) -> str:
    from survival.backend import open_cloud
    from survival.codepush import push_code as push

    with user_errors():
        cloud = open_cloud(settings(c))
        result = push(_tree(worktree), cloud.settings.trainer_repo, branch)
    print(f"pushed {result.commit} to {result.branch} of {result.remote}")
    return result.commit


def _flags_for_machine(gpu: str | None, **flags: Any) -> dict[str, Any]:
    from survival.launch import parse_gpu

    if gpu is not None:
        if gpu.lower() in ("none", "0", "none:0"):
            flags.update(gpu_count=0)
        else:
            flags["gpu_type"], flags["gpu_count"] = parse_gpu(gpu)
    return flags


def _tree(worktree: Path | str) -> Path:
    """The working tree: a directory, or the tasks.py file inside it."""
    path = Path(worktree).resolve()
    return path.parent if path.is_file() else path


def train(
    c: Any,
    worktree: Path | str,
    *,
    branch: str,
    example: str,
    train_steps: int,
    checkpoint_steps: int,
    seed: int,
    hparams: list[str],
    name: str | None,
    zone: str | None,
    gpu: str | None,
    machine_type: str | None,
    provisioning: str | None,
    follow: bool,
    chaos: int,
    push: bool,
    keep_alive: bool,
) -> None:
    from survival.backend import open_cloud
    from survival.chaos import Chaos
    from survival.launch import TrainRequest, launch, validate

    with user_errors():
        flags = _flags_for_machine(gpu, machine_type=machine_type, provisioning=provisioning)
        current = settings(c, **flags)
        if zone is not None:
            # --zone puts that zone first; the others stay as fallbacks.
            current = current.with_flags(zones=[zone, *(z for z in current.zones if z != zone)])
        req = TrainRequest(
            branch=branch,
            example=example,
            train_steps=train_steps,
            checkpoint_steps=checkpoint_steps,
            seed=seed,
            hparams=tuple(hparams),
            name=name,
            push=push,
            keep_alive=keep_alive,
        )
        validate(req)
        # Chaos picks rehearsal moments, not secrets: a plain PRNG is right.
        rng = random.Random()  # noqa: S311
        plan = Chaos.plan(chaos, train_steps, rng) if chaos else None
        if plan and not current.is_local:
            print(
                f"WARNING: --chaos {chaos} will call simulateMaintenanceEvent on a real GCE "
                "instance (billed; counts against the per-region rate limit)"
            )
        cloud = open_cloud(current)
        launched = launch(cloud, _tree(worktree), req)
        if follow:
            _supervise(cloud, launched.job.name, plan)
        else:
            print(f"not following: `invoke watch {launched.job.name}` supervises it later")


def _supervise(cloud: Any, name: str, plan: Any = None) -> None:
    from survival.launch import Launched
    from survival.progress import open_job_dir
    from survival.report import summary
    from survival.supervisor import Supervisor, Timing

    current = cloud.settings
    job, machine, extra = jobstore.load(current.local_state_dir, name)
    launched = Launched(job, machine, machine.zone, extra)
    zones = (machine.zone, *(z for z in current.zones if z != machine.zone))
    supervisor = Supervisor(
        cloud.compute,
        name=name,
        zone=machine.zone,
        zones=zones,
        job_dir=open_job_dir(job.job_dir),
        make_body=launched.make_body,
        max_restarts=current.max_restarts,
        chaos=plan,
        # localgce calls are free and local: poll fast so chaos lands mid-attempt.
        timing=Timing(poll_seconds=LOCAL_POLL_SECONDS if current.is_local else GCE_POLL_SECONDS),
    )
    outcome = supervisor.run()
    if outcome.zone != machine.zone:
        import dataclasses

        machine = dataclasses.replace(machine, zone=outcome.zone)
        jobstore.save(current.local_state_dir, job, machine, extra)
    for line in summary(name, machine, outcome.progress, outcome.restarts):
        print(line)


def watch(c: Any, name: str) -> None:
    from survival.backend import open_cloud

    with user_errors():
        cloud = open_cloud(settings(c))
        _supervise(cloud, name)


def _latest_job(current: Settings) -> str:
    from survival.errors import ConfigError

    folder = Path(current.local_state_dir) / "jobs"
    records = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not records:
        raise ConfigError("no jobs launched from here yet: start one with `invoke train -b X`")
    return records[-1].stem


def _instance(cloud: Any, name: str) -> Any:
    from survival.errors import ConfigError

    current = cloud.settings
    zones = current.zones
    if name in jobstore.names(current.local_state_dir):
        _, machine, _ = jobstore.load(current.local_state_dir, name)
        zones = (machine.zone, *(z for z in zones if z != machine.zone))
    for zone in zones:
        info = cloud.compute.get_instance(zone, name)
        if info is not None:
            return info
    raise ConfigError(f"no instance {name!r} in {', '.join(zones)}: see `invoke status`")


def ssh_logs(c: Any, name: str | None, follow: bool) -> str:
    from survival.backend import open_cloud
    from survival.logs import show_logs
    from survival.sshkeys import ensure_key, publish_key

    with user_errors():
        cloud = open_cloud(settings(c))
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
    from survival.backend import open_cloud
    from survival.instance_spec import JOB_LABEL
    from survival.progress import open_job_dir, read_progress
    from survival.report import print_table, status_row

    with user_errors():
        cloud = open_cloud(settings(c))
        current = cloud.settings
        instances = {i.name: i for i in cloud.compute.list_instances(current.zones, JOB_LABEL)}
        now = time.time()
        rows = []
        for name in sorted(set(instances) | set(jobstore.names(current.local_state_dir))):
            job = machine = None
            if name in jobstore.names(current.local_state_dir):
                job, machine, _ = jobstore.load(current.local_state_dir, name)
            info = instances.get(name)
            job_dir = job.job_dir if job else (info.metadata.get("job-dir") if info else None)
            progress = read_progress(open_job_dir(job_dir)) if job_dir else None
            steps = job.train_steps if job else None
            rows.append(status_row(name, info, machine, steps, progress, now))
    print_table(rows)
    return rows


def preempt(c: Any, name: str) -> None:
    from survival.backend import open_cloud

    with user_errors():
        cloud = open_cloud(settings(c))
        info = _instance(cloud, name)
        if not cloud.settings.is_local:
            print(f"WARNING: simulating a maintenance event on real GCE instance {name}")
        cloud.compute.preempt_instance(info.zone, name)
    print(f"preempted {name} in {info.zone}")


def down(c: Any, name: str | None, all_jobs: bool) -> None:
    from survival.backend import open_cloud
    from survival.errors import ConfigError
    from survival.instance_spec import JOB_LABEL

    with user_errors():
        if bool(name) == bool(all_jobs):
            raise ConfigError("give one job NAME or --all (see `invoke status`)")
        cloud = open_cloud(settings(c))
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
    from survival.backend import open_cloud
    from survival.plot import plot_timeline
    from survival.progress import open_job_dir

    with user_errors():
        cloud = open_cloud(settings(c))
        job_dir = open_job_dir(cloud.settings.job_dir(name))
        target = Path(output or f"{name}-timeline.png")
        plot_timeline(name, job_dir.metrics(), job_dir.attempts(), target)
    print(f"wrote {target}")
    return target
