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
from survival import bake, batch_engine, jobstore
from survival.backend import Cloud, open_cloud
from survival.chaos import Chaos
from survival.codepush import BundleStore
from survival.codepush import push_code as push
from survival.compute import InstanceInfo
from survival.config import KIT_ROOT, Settings, describe, parse_gpu
from survival.doctor import check_cloud, diagnose, failures, print_checks
from survival.errors import ConfigError, SurvivalError
from survival.images import format_table
from survival.instance_spec import JOB_LABEL
from survival.launch import Launched, launch, restart_run
from survival.logs import show_logs
from survival.placement import zones_from
from survival.plot import plot_timeline
from survival.progress import read_progress
from survival.report import COLUMNS as STATUS_COLUMNS
from survival.report import print_table, status_row, summary
from survival.request import TrainRequest, default_name, validate
from survival.sdk import compute_v1
from survival.sshkeys import ensure_key, publish_key
from survival.supervisor import Supervisor, Timing

LOCAL_POLL_SECONDS = 0.2
# On GCE each poll costs two Compute calls (instances.get, serial output from the last offset):
# 20 s keeps a job at about six calls a minute (docs/gce-behaviour.md, "The supervisor's API
# rate"), far below the per-minute API rate quotas, while a preempted VM still waits at most one
# poll for its restart.
GCE_POLL_SECONDS = 20.0
# localgce calls are free: retries after an injected or real outage need not wait long.
LOCAL_BACKOFF_INITIAL_SECONDS = 0.2
LOCAL_BACKOFF_MAX_SECONDS = 1.0
LOCAL_SAME_ZONE_PAUSE_SECONDS = 0.2


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


def push_code(c: Any, branch: str, include: tuple[str, ...] = ()) -> str:
    with user_errors():
        current = settings(c)
        bundles = None
        if not current.trainer_repo:
            # The default: a bundle in the job bucket (on localgce, fake-gcs-server: started).
            bundles = BundleStore(open_cloud(current).storage, current.job_bucket)
        result = push(KIT_ROOT, current.trainer_repo, branch, include=include, bundles=bundles)
    print(result.summary)
    return result.commit


def request_settings(c: Any, req: TrainRequest) -> Settings:
    """The settings with the request's machine flags applied (train and sweep alike)."""
    gpu_type, gpu_count = parse_gpu(req.gpu) if req.gpu is not None else (None, None)
    current = settings(
        c,
        machine_type=req.machine_type,
        provisioning=req.provisioning,
        max_run_hours=req.max_run_hours,
        gpu_type=gpu_type,
        gpu_count=gpu_count,
    )
    if req.zone is not None:
        # --zone puts that zone first; the others stay as fallbacks.
        current = current.with_flags(zones=zones_from(req.zone, current.zones))
    return current


def check_engine(engine: str) -> str:
    if engine not in batch_engine.ENGINES:
        raise ConfigError(
            f"--engine {engine[:40]!r}: use vms (a supervised VM, the default) or batch "
            "(a Cloud Batch job, no supervisor needed)"
        )
    return engine


def train(c: Any, req: TrainRequest, engine: str = jobstore.ENGINE_VMS) -> None:
    """Validate everything (flags, settings, the chaos plan) before anything is pushed or created;
    then launch, and supervise unless --no-follow. ``engine`` batch submits a Batch job instead
    and returns once it is queued."""
    with user_errors():
        check_engine(engine)
        current = request_settings(c, req)
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
        preflight(cloud)
        if engine == jobstore.ENGINE_BATCH:
            _submit_batch(cloud, req)
            return
        if not req.follow:
            launched = launch(cloud, KIT_ROOT, req)
            print(f"not following: `invoke watch {launched.job.name}` supervises it later")
            return
        # The name is fixed first so the supervisor lock is taken before anything is created.
        name = req.name or default_name(req.branch, time.time())
        req = dataclasses.replace(req, name=name)
        load_sdk_before_supervising()
        with jobstore.supervisor_lock(current.local_state_dir, name):
            try:
                launched = launch(cloud, KIT_ROOT, req)
            except KeyboardInterrupt:
                raise Exit(
                    f"interrupted while launching {name}: see `invoke status`; if it was "
                    f"created, `invoke watch {name}` supervises it",
                    code=INTERRUPTED_EXIT,
                ) from None
            _supervise(cloud, launched, plan)


def preflight_batch(cloud: Cloud) -> Any:
    """The Batch API check before anything is pushed or created; the BatchJobs on success."""
    from survival.doctor import check_batch

    batch = batch_engine.batch_for(cloud.settings)
    check = check_batch(cloud.settings, batch)
    if not check.ok:
        print_checks([check])
        raise ConfigError(f"preflight: {check.name} failed: {check.fix}; nothing was created")
    return batch


def _submit_batch(cloud: Cloud, req: TrainRequest) -> None:
    """One Batch job with one task; returns once Batch has it queued (with --chaos, once the
    rehearsal preemptions are made: Batch does the rest)."""
    batch = preflight_batch(cloud)
    submitted = batch_engine.submit_train(cloud, batch, KIT_ROOT, req)
    job, machine = submitted.job, submitted.machine
    gpus = f", {machine.gpu_count}x {machine.gpu_type}" if machine.gpu_count else ""
    print(
        f"train: submitted {job.name} as Batch job {submitted.batch_job['name']} "
        f"({batch_engine.state_of(submitted.batch_job)}; {machine.provisioning}, "
        f"{machine.machine_type}{gpus}); job dir {job.job_dir}"
    )
    print(
        "train: Batch runs it to the end and retries it after preemptions; nothing here needs "
        "to keep running"
    )
    print(
        f"train: follow it with `invoke watch {job.name}`; `invoke status` shows it; "
        f"`invoke down {job.name}` deletes the Batch job (the job dir is kept)"
    )
    if req.chaos:
        job_dir = cloud.open_job_dir(job.job_dir)
        batch_chaos(cloud, batch, submitted.batch_job["name"], lambda point: _lease_step(job_dir),
                    req.chaos, req.train_steps)  # fmt: skip


def _lease_step(job_dir: Any) -> int:
    return int((job_dir.lease() or {}).get("step") or 0)


def batch_chaos(
    cloud: Cloud,
    batch: Any,
    batch_job: str,
    step_of: Any,
    count: int,
    train_steps: int,
    order: list[int] | None = None,
) -> int:
    """--chaos N on Batch: preempt task VMs N times at random steps, then return; Batch retries
    the tasks (the rehearsal is the only thing that waits here)."""
    # Chaos picks rehearsal moments, not secrets: a plain PRNG is right.
    rng = random.Random()  # noqa: S311
    targets = batch_engine.chaos_targets(count, train_steps, rng)
    current = cloud.settings
    made = batch_engine.rehearse_preemptions(
        batch, cloud.compute, batch_job, step_of, targets, order=order,
        poll_seconds=LOCAL_POLL_SECONDS if current.is_local else GCE_POLL_SECONDS,
        timeout_seconds=batch_engine.CHAOS_TIMEOUT_SECONDS,
    )  # fmt: skip
    print(f"chaos: {made} of {count} preemption(s) made; Batch retries the tasks to the end")
    return made


def preflight(cloud: Cloud) -> None:
    """`invoke doctor`'s checks, before anything is pushed or created: on any ✗ the table is
    printed and the train refused (on localgce too: the checks cost a few local calls there)."""
    checks = check_cloud(cloud.settings, cloud.compute, cloud.storage)
    failed = failures(checks)
    if failed:
        print_checks(checks)
        raise ConfigError(
            f"preflight: {len(failed)} check(s) failed ({', '.join(c.name for c in failed)}); "
            "fix each ✗ in the table above (`invoke doctor` shows it again), nothing was created"
        )


def doctor(c: Any, backend: str | None = None, engine: str = jobstore.ENGINE_VMS) -> list[Any]:
    """Run the preflight checks and print them as one table; exit 1 when any failed."""
    with user_errors("doctor"):
        current = settings(c, backend=backend)
        checks = diagnose(current, check_engine(engine))
    print_checks(checks)
    failed = failures(checks)
    if failed:
        raise Exit(f"doctor: {len(failed)} of {len(checks)} checks failed: fix each ✗ above")
    print(f"doctor: all {len(checks)} checks passed")
    return checks


# Exit status after Ctrl-C, as a shell reports a process killed by SIGINT (128 + 2).
INTERRUPTED_EXIT = 130


def load_sdk_before_supervising() -> None:
    """Import the Compute SDK before taking a job. A Ctrl-C that lands inside that import (it
    takes seconds) leaves the module half loaded, and the interrupt line could then not look up
    the VM to say what it is doing."""
    compute_v1()


def _status_now(compute: Any, zone: str, name: str) -> str | None:
    """The instance's status, asked once (Ctrl-C came before the supervisor's first look); None
    when it cannot be had: the interrupt must end the command, not wait on an outage."""
    try:
        info = compute.get_instance(zone, name)
    except Exception:  # any failure only means we cannot say
        return None
    return info.status if info else None


def _vm_state(status: str | None) -> str:
    if status in ("PROVISIONING", "STAGING", "RUNNING"):
        return "keeps running"
    if status in ("STOPPING", "SUSPENDING"):
        return "is stopping"
    if status in ("TERMINATED", "STOPPED", "SUSPENDED"):
        return "is stopped"
    return "is left as it is"


def _supervise(cloud: Cloud, launched: Launched, plan: Chaos | None = None) -> None:
    """Run the supervisor (the caller holds the job's supervisor lock) and print the outcome."""
    current = cloud.settings
    state_dir = current.local_state_dir
    job, machine = launched.job, launched.machine
    serial = jobstore.read(state_dir, job.name).get("serial") or {}

    def save_serial(instance: str | None, offset: int) -> None:
        jobstore.update(state_dir, job.name, serial={"instance": instance, "next": offset})

    # The daemon whose endpoints the clients were built on: a restarted localgce (after a
    # crash, `invoke localgce.start`) has new ports and a new token, so the old clients would
    # fail forever; the supervisor asks for new ones after a transient error.
    known = {"pid": (daemon.read_endpoints(Path(state_dir)) or {}).get("pid")}

    def reconnect() -> tuple[Any, Any] | None:
        if not current.is_local:
            return None
        endpoints = daemon.read_endpoints(Path(state_dir))
        if not endpoints or endpoints.get("pid") == known["pid"]:
            return None
        try:
            fresh = open_cloud(current, start=False)
        except Exception:  # half started, or gone again: the next transient error asks again
            return None
        known["pid"] = endpoints.get("pid")
        return fresh.compute, fresh.open_job_dir(job.job_dir)

    supervisor = Supervisor(
        cloud.compute,
        name=job.name,
        zone=machine.zone,
        zones=current.zones,
        job_dir=cloud.open_job_dir(job.job_dir),
        make_body=launched.make_body,
        max_restarts=current.max_restarts,
        chaos=plan,
        timing=_timing(current),
        keep_alive=job.keep_alive,
        taken_down=lambda: jobstore.down_marked(state_dir, job.name),
        serial=(serial.get("instance"), int(serial.get("next") or 0)),
        on_serial=save_serial,
        reconnect=reconnect,
    )
    try:
        outcome = supervisor.run()
    except KeyboardInterrupt:
        status = supervisor.last_status
        status = status or _status_now(supervisor.compute, supervisor.zone, job.name)
        raise Exit(
            f"interrupted: {job.name} {_vm_state(status)}; "
            f"`invoke watch {job.name}` resumes supervision",
            code=INTERRUPTED_EXIT,
        ) from None
    finally:
        if supervisor.zone != machine.zone:
            machine = dataclasses.replace(machine, zone=supervisor.zone)
            jobstore.update_machine(state_dir, job.name, machine)
    if outcome.taken_down:
        return
    for line in summary(job.name, machine, outcome.progress, outcome.restarts):
        print(line)


def _timing(current: Settings) -> Timing:
    if not current.is_local:
        return Timing(
            poll_seconds=GCE_POLL_SECONDS, heartbeat_stale_seconds=current.heartbeat_stale_seconds
        )
    # localgce calls are free and local: poll fast so chaos lands mid-attempt.
    return Timing(
        poll_seconds=LOCAL_POLL_SECONDS,
        backoff_initial_seconds=LOCAL_BACKOFF_INITIAL_SECONDS,
        backoff_max_seconds=LOCAL_BACKOFF_MAX_SECONDS,
        heartbeat_stale_seconds=current.heartbeat_stale_seconds,
        same_zone_pause_seconds=LOCAL_SAME_ZONE_PAUSE_SECONDS,
    )


def watch(c: Any, name: str) -> None:
    with user_errors():
        cloud = open_cloud(settings(c), start=False)
        state_dir = cloud.settings.local_state_dir
        if jobstore.engine_of(jobstore.read(state_dir, name)) == jobstore.ENGINE_BATCH:
            _watch_batch(cloud, name)
            return
        launched = Launched(*jobstore.load(state_dir, name))
        load_sdk_before_supervising()
        with jobstore.supervisor_lock(state_dir, name):
            if jobstore.down_marked(state_dir, name) is not None:
                # Taken down: watching brings the job back as a new run (its instance is
                # created again, and a FAILED marker of the old run must not end the new one).
                launched = restart_run(cloud, launched, lambda line: print(f"watch: {line}"))
            _supervise(cloud, launched)


def _watch_batch(cloud: Cloud, name: str) -> None:
    """Follow a Batch job: its state, its tasks and the job dir's progress, until it ends.
    Interrupting only stops following; Batch runs the job either way."""
    current = cloud.settings
    record = jobstore.read(current.local_state_dir, name)
    job, machine, _ = jobstore.load(current.local_state_dir, name)
    batch_job = record["batch_jobs"][-1]
    job_dir = cloud.open_job_dir(job.job_dir)
    batch = batch_engine.batch_for(current)

    def describe(found: dict[str, Any] | None) -> str:
        progress = read_progress(job_dir)
        tasks = batch_engine.task_counts(found)
        task_text = ", ".join(f"{count} {state}" for state, count in sorted(tasks.items()))
        return (
            f"tasks {task_text or '-'}; step {progress.step}/{job.train_steps}, "
            f"attempts {progress.stats.attempts}, preemptions {progress.preemptions}"
        )

    print(f"watch: following Batch job {batch_job} (Ctrl-C stops following, not the job)")
    poll = LOCAL_POLL_SECONDS if current.is_local else GCE_POLL_SECONDS
    try:
        followed = batch_engine.follow(
            batch, batch_job, describe, poll_seconds=poll, out=lambda line: print(f"watch: {line}")
        )
    except KeyboardInterrupt:
        raise Exit(
            f"stopped following {name}; Batch keeps running it (`invoke watch {name}` follows "
            "it again)",
            code=INTERRUPTED_EXIT,
        ) from None
    progress = read_progress(job_dir)
    if progress.done:
        for line in summary(name, machine, progress, 0):
            if not line.lstrip().startswith("restarts"):
                print(line)
        return
    reason = (progress.failed or {}).get("reason") or f"the Batch job is {followed.state}"
    raise ConfigError(f"job {name} did not finish: {reason}")


def _latest_job(current: Settings) -> str:
    folder = Path(current.local_state_dir) / "jobs"
    records = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not records:
        raise ConfigError("no jobs launched from here yet: start one with `invoke train -b X`")
    return records[-1].stem


def _instance(cloud: Cloud, name: str) -> InstanceInfo:
    """The job's instance: looked for in its recorded zone first, then in survival.zones. A
    Batch job's is the VM of its running task."""
    current = cloud.settings
    zones = current.zones
    if name in jobstore.names(current.local_state_dir) and (
        jobstore.engine_of(jobstore.read(current.local_state_dir, name)) == jobstore.ENGINE_BATCH
    ):
        for info in cloud.compute.list_instances(zones, batch_engine.VM_LABEL):
            if info.labels.get(batch_engine.VM_LABEL) == name and info.status == "RUNNING":
                return info
        raise ConfigError(f"Batch job {name} has no running task VM now: see `invoke status`")
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
        cloud = open_cloud(settings(c), job_bucket=False, start=False)
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


def status(c: Any, name: str | None = None) -> list[list[str]]:
    """Every job and sweep (one row each); with ``name``, that job, or one row per point of
    that sweep."""
    from survival import sweep, sweep_cli

    with user_errors():
        cloud = open_cloud(settings(c), start=False)
        current = cloud.settings
        now = time.time()
        if name is not None:
            record = sweep.read_record(current.local_state_dir, name)
            if record is not None:
                rows = sweep_cli.point_rows(cloud, record, now)
                print_table(rows, columns=sweep_cli.POINT_COLUMNS, title=f"sweep {name}")
                return rows
        instances = {i.name: i for i in cloud.compute.list_instances(current.zones, JOB_LABEL)}
        recorded = set(jobstore.names(current.local_state_dir))
        rows = []
        batch = None
        listed = sorted(set(instances) | recorded)
        if name is not None:
            if name not in listed:
                raise ConfigError(f"no job or sweep named {name!r}: see `invoke status`")
            listed = [name]
        else:
            points = sweep_cli.sweep_jobs(current.local_state_dir)
            listed = [job for job in listed if job not in points]
            for sweep_name in sweep.names(current.local_state_dir):
                record = sweep.read_record(current.local_state_dir, sweep_name)
                if record is not None:
                    rows.append(sweep_cli.sweep_row(cloud, record, now))
        for name in listed:
            job = machine = None
            if name in recorded:
                record = _read_record(current, name)
                if isinstance(record, Path):
                    rows.append(_unreadable_row(name, record))
                    continue
                job, machine = record
                raw = jobstore.read(current.local_state_dir, name)
                if jobstore.engine_of(raw) == jobstore.ENGINE_BATCH:
                    batch = batch or batch_engine.batch_for(current)
                    rows.append(_batch_row(cloud, batch, name, raw, job, machine, now))
                    continue
            info = instances.get(name)
            job_dir = job.job_dir if job else (info.metadata.get("job-dir") if info else None)
            progress = read_progress(cloud.open_job_dir(job_dir)) if job_dir else None
            steps = job.train_steps if job else None
            keep_alive = bool(job and job.keep_alive)
            rows.append(status_row(name, info, machine, steps, progress, now, keep_alive))
    print_table(rows)
    return rows


def _batch_row(
    cloud: Cloud, batch: Any, name: str, record: dict[str, Any], job: Any, machine: Any, now: float
) -> list[str]:
    """A Batch job's status row: Batch's state of its newest Batch job, progress from the job
    dir, the job's region in the zone column."""
    found = batch.get(record["batch_jobs"][-1]) if record.get("batch_jobs") else None
    progress = read_progress(cloud.open_job_dir(job.job_dir))
    row = status_row(name, None, machine, job.train_steps, progress, now)
    state = f"Batch {batch_engine.state_of(found)}"
    if progress.done:
        state += " / DONE"
    elif progress.failed:
        state += " / FAILED"
    row[1] = batch.location
    row[2] = state
    return row


def _read_record(current: Settings, name: str) -> tuple[Any, Any] | Path:
    """(job, machine) of a local job record, or the record's path when it cannot be read (cut
    short, hand-edited, from another kit version): one bad file must not hide every other job."""
    try:
        job, machine, _ = jobstore.load(current.local_state_dir, name)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        # jobstore keeps one <name>.json per job under <local_state_dir>/jobs/.
        return Path(current.local_state_dir) / "jobs" / f"{name}.json"
    return job, machine


def _unreadable_row(name: str, path: Path) -> list[str]:
    row = [name, "-", f"UNREADABLE record {path}"]
    return row + [""] * (len(STATUS_COLUMNS) - len(row))


def preempt(c: Any, name: str) -> None:
    with user_errors():
        cloud = open_cloud(settings(c), job_bucket=False, start=False)
        info = _instance(cloud, name)
        if not cloud.settings.is_local:
            print(f"WARNING: simulating a maintenance event on real GCE instance {name}")
        cloud.compute.preempt_instance(info.zone, info.name)
    print(f"preempted {info.name} in {info.zone}")


def _down_batch(cloud: Cloud, names: list[str]) -> int:
    """Delete the Batch jobs of the recorded batch-engine jobs among ``names``; how many."""
    state_dir = cloud.settings.local_state_dir
    batch = None
    deleted = 0
    for name in names:
        try:
            record = jobstore.read(state_dir, name)
        except (ConfigError, OSError, ValueError):
            continue
        if jobstore.engine_of(record) != jobstore.ENGINE_BATCH:
            continue
        jobstore.mark_down(state_dir, name, time.time())
        batch = batch or batch_engine.batch_for(cloud.settings)
        for batch_job in record.get("batch_jobs") or []:
            if batch_engine.is_active(batch.get(batch_job)) and batch.delete(batch_job):
                deleted += 1
                print(f"deleted Batch job {batch_job} of {name} (job dir kept)")
    return deleted


def down(c: Any, name: str | None, all_jobs: bool) -> None:
    with user_errors():
        if bool(name) == bool(all_jobs):
            raise ConfigError("give one job NAME or --all (see `invoke status`)")
        cloud = open_cloud(settings(c), job_bucket=False, start=False)
        state_dir = cloud.settings.local_state_dir
        from survival import sweep, sweep_cli

        record = sweep.read_record(state_dir, name) if name else None
        if record is not None:
            sweep_cli.down(cloud, record)
            return
        if (
            not all_jobs
            and name in jobstore.names(state_dir)
            and jobstore.engine_of(jobstore.read(state_dir, name)) == jobstore.ENGINE_BATCH
        ):
            if not _down_batch(cloud, [name]):
                print(f"{name}: its Batch job has already ended (job dir kept)")
            return
        if all_jobs:
            _down_batch(cloud, jobstore.names(state_dir))
            for sweep_name in sweep.names(state_dir):
                found = sweep.read_record(state_dir, sweep_name)
                if found is not None and found["engine"] == jobstore.ENGINE_BATCH:
                    sweep_cli.down(cloud, found)
        # Recorded before the delete, so a supervisor never sees the instance gone without
        # also seeing why, and never creates it again.
        if all_jobs:
            targets = cloud.compute.list_instances(cloud.settings.zones, JOB_LABEL)
            for info in targets:
                jobstore.mark_down(state_dir, info.name, time.time())
        else:
            marked = jobstore.mark_down(state_dir, name, time.time())
            try:
                targets = [_instance(cloud, name)]
            except ConfigError:
                if not marked:
                    raise
                print(f"{name} has no instance; marked down (its supervisor stops)")
                return
        for info in targets:
            cloud.compute.delete_instance(info.zone, info.name)
            print(f"deleted {info.name} in {info.zone} (job dir kept)")
        if not targets:
            print("no job instances to delete")


def plot(c: Any, name: str, output: str | None) -> Path:
    with user_errors():
        cloud = open_cloud(settings(c), start=False)
        job_dir = cloud.open_job_dir(cloud.settings.job_dir(name))
        metrics, attempts = job_dir.metrics(), job_dir.attempts()
        recorded = name in jobstore.names(cloud.settings.local_state_dir)
        if not metrics and not attempts and not recorded:
            raise ConfigError(
                f"unknown job {name!r}: no record here and nothing in {job_dir.url} "
                "(see `invoke status`)"
            )
        target = Path(output or f"{name}-timeline.png")
        plot_timeline(name, metrics, attempts, target)
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
        cloud = open_cloud(current, job_bucket=False, start=False)
        found = cloud.compute.list_images(current.image_family)
    print(format_table(found, current.image_family))


def images_deprecate(c: Any, name: str, replacement: str, backend: str | None) -> None:
    with user_errors("images.deprecate"):
        cloud = open_cloud(settings(c, backend=backend), job_bucket=False, start=False)
        cloud.compute.deprecate_image(name, replacement=replacement)
    print(f"image {name} is DEPRECATED" + (f" (replacement {replacement})" if replacement else ""))
