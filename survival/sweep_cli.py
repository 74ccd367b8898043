"""The bodies of `invoke sweep` and of the sweep parts of `invoke status` and `invoke down`
(survival/sweep.py has the points, sweep.json and the local sweep records)."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from invoke import Exit

from survival import batch_engine, jobstore
from survival import sweep as sweeps
from survival.backend import Cloud, open_cloud
from survival.chaos import Chaos
from survival.config import KIT_ROOT
from survival.errors import ConfigError, SurvivalError
from survival.instance_spec import MachineSpec
from survival.progress import read_progress
from survival.report import _age, stop_causes
from survival.request import TrainRequest, default_name, validate

# Point jobs of a vms sweep are NAME-pINDEX: a sweep name leaves room for "-p999".
MAX_SWEEP_NAME = 56
DEFAULT_NAME_BRANCH_CHARS = 30
STOPPING = ("DELETION_IN_PROGRESS", "CANCELLATION_IN_PROGRESS")


def sweep(
    c: Any,
    req: TrainRequest,
    *,
    grid: tuple[str, ...],
    ranges: tuple[str, ...],
    random_points: int,
    parallelism: int | None,
    engine: str,
) -> dict[str, Any]:
    """Expand and validate every point before anything is pushed or created; then submit one
    Batch job (engine batch, returns once queued) or run the points' supervisors, at most
    ``parallelism`` at a time (engine vms)."""
    from survival.cli import check_engine, preflight, request_settings, user_errors

    with user_errors():
        check_engine(engine)
        current = request_settings(c, req)
        name = req.name or default_name(req.branch[:DEFAULT_NAME_BRANCH_CHARS], time.time())
        if len(name) > MAX_SWEEP_NAME:
            raise ConfigError(f"--name: a sweep name has at most {MAX_SWEEP_NAME} characters")
        req = dataclasses.replace(req, name=name)
        validate(req)
        if req.hparams:
            raise ConfigError("a sweep takes its hyperparameters from --grid and --range")
        points = sweeps.expand(
            req.example,
            sweeps.parse_grid(grid),
            [sweeps.parse_range(flag) for flag in ranges],
            random_points,
            req.seed,
        )
        width = len(points) if parallelism is None else parallelism
        if not 1 <= width <= len(points):
            raise ConfigError(f"--parallelism must be between 1 and the {len(points)} points")
        for index, point in enumerate(points):
            print(f"sweep {name}: point {index} {sweeps.short_hparams(point)}")
        cloud = open_cloud(current)
        preflight(cloud)
        if engine == jobstore.ENGINE_BATCH:
            from survival.cli import preflight_batch

            batch = preflight_batch(cloud)
            record = batch_engine.submit_sweep(cloud, batch, KIT_ROOT, req, points, width)
            print(
                f"sweep {name}: submitted {len(points)} points as Batch job "
                f"{record['batch_jobs'][0]} ({record['state']}; parallelism {width}); job dirs "
                f"{record['sweep_url']}/points/<index>"
            )
            print(
                f"sweep {name}: Batch runs every point to the end; `invoke status --name {name}` "
                f"shows each point, `invoke down {name}` deletes the Batch job (job dirs kept)"
            )
            if req.chaos:
                from survival.cli import batch_chaos

                bucket = current.job_bucket

                def step_of(point: int) -> int:
                    job_dir = cloud.open_job_dir(sweeps.point_dir(bucket, name, point))
                    return int((job_dir.lease() or {}).get("step") or 0)

                batch_chaos(cloud, batch, record["batch_jobs"][0], step_of, req.chaos,
                            req.train_steps)  # fmt: skip
            return record
        return _sweep_vms(cloud, req, points, width)


def _sweep_vms(
    cloud: Cloud, req: TrainRequest, points: list[dict[str, Any]], parallelism: int
) -> dict[str, Any]:
    """One supervised VM per point, at most ``parallelism`` at once: a pool of supervisors, each
    running `invoke train`'s launch and supervisor for its point."""
    from survival.cli import _supervise, load_sdk_before_supervising
    from survival.launch import launch, machine_for, push_for

    current = cloud.settings
    name = req.name
    assert name is not None
    url = sweeps.sweep_dir(current.job_bucket, name)
    store = cloud.open_job_dir(url).store
    if sweeps.read_sweep(store) is not None or sweeps.read_record(current.local_state_dir, name):
        raise ConfigError(f"sweep {name} exists: choose another --name")
    module, _ = validate(req)
    commit = push_for(cloud, KIT_ROOT, req, print)
    spec = batch_engine.shared_spec(current, req, module, commit)
    document = sweeps.sweep_document(name, req.example, spec, points, time.time())
    jobs = [f"{name}-p{index}" for index in range(len(points))]
    machine = machine_for(current, cloud.compute.image_from_family(current.image_family))
    sweeps.write_sweep(store, document)
    record = sweeps.new_record(
        name, jobstore.ENGINE_VMS, len(points), jobs=jobs, sweep_url=url, example=req.example,
        train_steps=req.train_steps, location=current.zones[0],
        machine=batch_engine.dataclasses_dict(machine),
    )  # fmt: skip
    sweeps.save_record(current.local_state_dir, record)
    load_sdk_before_supervising()
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            print(line, flush=True)

    def run_point(index: int) -> None:
        point_req = dataclasses.replace(
            req,
            name=jobs[index],
            hparams=tuple(f"{key}={value}" for key, value in points[index].items()),
            push=False,
            follow=True,
        )
        # Chaos picks rehearsal moments, not secrets: a plain PRNG is right.
        rng = random.Random()  # noqa: S311
        plan = Chaos.plan(req.chaos, req.train_steps, rng) if req.chaos else None
        with jobstore.supervisor_lock(current.local_state_dir, jobs[index]):
            launched = launch(
                cloud, KIT_ROOT, point_req, out=lambda line: say(f"{jobs[index]}: {line}")
            )
            _supervise(cloud, launched, plan)

    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=parallelism, thread_name_prefix=f"sweep-{name}") as pool:
        futures = [pool.submit(run_point, index) for index in range(len(points))]
        for index, future in enumerate(futures):
            try:
                future.result()
            except (SurvivalError, Exit) as err:
                errors.append(f"point {index} ({jobs[index]}): {err}")
    if errors:
        raise ConfigError(f"sweep {name}: {len(errors)} point(s) did not finish: {errors[0]}")
    print(f"sweep {name}: all {len(points)} points DONE")
    return record


# --- status and down ---------------------------------------------------------------------------
def _machine(record: dict[str, Any]) -> MachineSpec | None:
    raw = record.get("machine")
    if not raw:
        return None
    return MachineSpec(**{**raw, "scopes": tuple(raw.get("scopes") or ())})


def point_states(cloud: Cloud, record: dict[str, Any]) -> list[sweeps.PointState]:
    """Every point of the sweep: its job dir's progress and what runs it."""
    current = cloud.settings
    document = sweeps.read_sweep(cloud.open_job_dir(record["sweep_url"]).store) or {}
    hparams = [p.get("hparams") or {} for p in document.get("points") or []]
    hparams += [{}] * (record["points"] - len(hparams))
    running: dict[int, str] = {}
    if record["engine"] == jobstore.ENGINE_BATCH:
        batch = batch_engine.batch_for(current)
        for batch_job, order in zip(
            record.get("batch_jobs") or [], record.get("job_points") or [], strict=False
        ):
            for task in batch.tasks(batch_job):
                index = int(task["name"].rsplit("/", 1)[-1])
                point = order[index] if order else index
                running[point] = str((task.get("status") or {}).get("state") or "")
        bucket = current.job_bucket
        dirs = [sweeps.point_dir(bucket, record["name"], i) for i in range(len(hparams))]
    else:
        dirs = []
        for job in record["jobs"]:
            try:
                dirs.append(jobstore.load(current.local_state_dir, job)[0].job_dir)
            except ConfigError:
                dirs.append(current.job_dir(job))
        live = {i.name: i.status for i in cloud.compute.list_instances(current.zones)}
        running = {i: live[j] for i, j in enumerate(record["jobs"]) if j in live}
    states = []
    for index, job_dir in enumerate(dirs):
        try:
            progress = read_progress(cloud.open_job_dir(job_dir))
        except Exception:  # an unreadable job dir shows as unknown progress, not a traceback
            progress = None
        state = sweeps.point_state(progress, running.get(index))
        states.append(sweeps.PointState(index, hparams[index], job_dir, state, progress))
    return states


def _cost(machine: MachineSpec | None, progress: Any, now: float) -> float | None:
    from survival.pricing import rate

    if machine is None or progress is None:
        return None
    r = rate(machine.machine_type, machine.gpu_type, machine.gpu_count, machine.provisioning)
    return r.cost(progress.running_seconds(now)) if r.known else None


def sweep_row(cloud: Cloud, record: dict[str, Any], now: float) -> list[str]:
    """One status row for the whole sweep."""
    points = point_states(cloud, record)
    tally = sweeps.counts(points)
    machine = _machine(record)
    known = [p.progress for p in points if p.progress is not None]
    steps = sum(p.step for p in known)
    costs = [cost for cost in (_cost(machine, p, now) for p in known) if cost is not None]
    state = f"sweep {tally['DONE']}/{record['points']} done"
    for key in ("RUNNING", "FAILED", "PENDING", "ENDED"):
        if tally[key]:
            state += f", {tally[key]} {key.lower()}"
    return [
        record["name"],
        str(record.get("location") or "-"),
        state,
        f"{machine.provisioning if machine else '-'} ({record['engine']})",
        f"{steps}/{record['points'] * int(record.get('train_steps') or 0)}",
        str(sum(p.stats.attempts for p in known)),
        f"preempted {sum(p.preemptions for p in known)}",
        str(sum(p.stats.lost_steps for p in known)),
        "-",
        f"${sum(costs):.4f}" if costs else "-",
    ]


# `invoke status --name SWEEP`: the points' columns (zone and model are the sweep's own).
POINT_COLUMNS = ("point", "hyperparameters", "status", "step", "attempts", "stops", "lost steps",
                 "last ckpt", "cost (est.)")  # fmt: skip


def point_rows(cloud: Cloud, record: dict[str, Any], now: float) -> list[list[str]]:
    """One status row per point of the sweep (POINT_COLUMNS)."""
    machine = _machine(record)
    rows = []
    for point in point_states(cloud, record):
        progress = point.progress
        cost = _cost(machine, progress, now)
        rows.append([
            f"{record['name']}/{point.index}",
            sweeps.short_hparams(point.hparams),
            point.state,
            f"{progress.step if progress else '-'}/{record.get('train_steps') or '-'}",
            str(progress.stats.attempts) if progress else "-",
            stop_causes(progress) if progress else "-",
            progress.stats.lost_steps_text if progress else "-",
            _age(now, progress.checkpoint_unix) if progress else "-",
            f"${cost:.4f}" if cost is not None else "-",
        ])  # fmt: skip
    return rows


def sweep_jobs(state_dir: Any) -> set[str]:
    """The point jobs of vms sweeps (shown in their sweep's row, not as jobs of their own)."""
    found: set[str] = set()
    for name in sweeps.names(state_dir):
        record = sweeps.read_record(state_dir, name) or {}
        found.update(record.get("jobs") or [])
    return found


def down(cloud: Cloud, record: dict[str, Any]) -> None:
    """Delete the sweep's Batch jobs, or its points' VMs (marked down so their supervisors
    stop); job dirs are kept."""
    current = cloud.settings
    if record["engine"] == jobstore.ENGINE_BATCH:
        batch = batch_engine.batch_for(current)
        deleted = 0
        for batch_job in record.get("batch_jobs") or []:
            if batch_engine.is_active(batch.get(batch_job)) and batch.delete(batch_job):
                deleted += 1
                print(f"deleted Batch job {batch_job} of sweep {record['name']} (job dirs kept)")
        if not deleted:
            print(f"sweep {record['name']}: no Batch job left running (job dirs kept)")
        return
    live = {i.name: i for i in cloud.compute.list_instances(current.zones)}
    for job in record.get("jobs") or []:
        jobstore.mark_down(current.local_state_dir, job, time.time())
        if job in live:
            cloud.compute.delete_instance(live[job].zone, job)
            print(f"deleted {job} in {live[job].zone} (job dir kept)")


def resume(c: Any, name: str, parallelism: int | None) -> dict[str, Any]:
    """`invoke sweep.resume NAME`: a new Batch job for the points without DONE only (after
    retries ran out, a `down`, or a failure); the sweep record lists every Batch job."""
    from survival.cli import settings, user_errors
    from survival.launch import archive_failed, new_run_id

    with user_errors():
        cloud = open_cloud(settings(c))
        current = cloud.settings
        record = sweeps.read_record(current.local_state_dir, name)
        if record is None:
            raise ConfigError(f"no sweep named {name!r} was started from here: see `invoke status`")
        if record["engine"] != jobstore.ENGINE_BATCH:
            raise ConfigError(
                f"sweep {name} runs on VMs: continue a point with `invoke watch {name}-pINDEX`"
            )
        batch = batch_engine.batch_for(current)
        for batch_job in record.get("batch_jobs") or []:
            found = batch.get(batch_job)
            # A job being deleted or cancelled runs nothing new; a task VM still stopping holds
            # its point's LEASE, which the new task waits out.
            if batch_engine.is_active(found) and batch_engine.state_of(found) not in STOPPING:
                raise ConfigError(
                    f"sweep {name}'s Batch job {batch_job} is {batch_engine.state_of(found)}: "
                    f"let it end, or `invoke down {name}` first"
                )
        todo = [p.index for p in point_states(cloud, record) if p.state != "DONE"]
        if not todo:
            print(f"sweep {name}: every point is DONE; nothing to resume")
            return record
        width = len(todo) if parallelism is None else parallelism
        if not 1 <= width <= len(todo):
            raise ConfigError(f"--parallelism must be between 1 and the {len(todo)} points left")
        machine = _machine(record)
        if machine is None:
            raise ConfigError(f"the record of sweep {name} has no machine; start a new sweep")
        variables = {
            batch_engine.SWEEP_ENV: f"{record['sweep_url']}/{sweeps.SWEEP_FILE}",
            batch_engine.SWEEP_POINTS_ENV: ",".join(str(i) for i in todo),
        }
        body = batch_engine.job_body(
            machine, current.zones, variables, name=name, task_count=len(todo),
            parallelism=width, max_retry_count=batch_engine.max_retries(current),
        )  # fmt: skip
        # A point's FAILED marker belongs to the run that wrote it: the new run must not end on it.
        run_id = new_run_id(time.time())
        for index in todo:
            job_dir = cloud.open_job_dir(sweeps.point_dir(current.job_bucket, name, index))
            archive_failed(job_dir, run_id, lambda line: print(f"sweep {name}: {line}"))
        created = batch.create(batch_engine.job_id_for(name), body)
        record["batch_jobs"] = [*(record.get("batch_jobs") or []), created["name"]]
        record["job_points"] = [*(record.get("job_points") or [None]), todo]
        sweeps.save_record(current.local_state_dir, record)
    print(
        f"sweep {name}: resumed {len(todo)} point(s) ({', '.join(map(str, todo))}) as Batch job "
        f"{created['name']} ({batch_engine.state_of(created)}; parallelism {width})"
    )
    return record


def report(c: Any, name: str, output: str | None) -> list[list[str]]:
    """`invoke sweep.report NAME`: the ranked table, OUTPUT/report.csv and OUTPUT/report.png."""
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from survival import sweep_report
    from survival.cli import settings, user_errors

    with user_errors():
        cloud = open_cloud(settings(c), start=False)
        current = cloud.settings
        record = sweeps.read_record(current.local_state_dir, name)
        if record is None:
            raise ConfigError(f"no sweep named {name!r} was started from here: see `invoke status`")
        metric = sweep_report.metric_of(str(record.get("example") or ""))
        reports = [
            sweep_report.point_report(point, metric, cloud.open_job_dir(point.job_dir))
            for point in point_states(cloud, record)
        ]
        reports = sweep_report.ranked(reports, metric)
        header, rows = sweep_report.columns(reports, metric)
        folder = Path(output or f"{name}-report")
        csv_path = sweep_report.write_csv(folder / "report.csv", header, rows)
        png_path = sweep_report.write_png(folder / "report.png", name, reports, metric)
    table = Table(title=f"sweep {name}: best first by {metric.name} ({metric.description})")
    for column in header:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)
    print(f"wrote {csv_path} and {png_path}")
    return rows
