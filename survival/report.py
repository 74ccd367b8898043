"""What the user reads: the end-of-job summary and the `invoke status` table (rich)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from survival.compute import InstanceInfo
from survival.instance_spec import MachineSpec
from survival.pricing import rate
from survival.progress import Progress


def _model(provisioning: str) -> str:
    return {"SPOT": "spot", "PREEMPTIBLE": "preemptible", "STANDARD": "standard"}.get(
        provisioning, provisioning.lower()
    )


def cost_line(machine: MachineSpec, seconds: float) -> str:
    r = rate(machine.machine_type, machine.gpu_type, machine.gpu_count, machine.provisioning)
    if not r.known:
        return (f"cost: no {machine.provisioning} price for {machine.machine_type}/"
                f"{machine.gpu_type} in survival/data/prices.json (add it to get an "
                "estimate)")  # fmt: skip
    paid, on_demand = r.cost(seconds), r.on_demand_cost(seconds)
    saving = f", {100 * (1 - paid / on_demand):.0f}% less" if on_demand > 0 else ""
    return (
        f"cost ESTIMATE (list prices as of {r.as_of}): ${paid:.4f} {machine.provisioning} vs "
        f"${on_demand:.4f} on-demand{saving}"
    )


def summary(name: str, machine: MachineSpec, progress: Progress, restarts: int) -> list[str]:
    done = progress.done or {}
    seconds = float(done.get("attempt_seconds") or progress.running_seconds(time.time()))
    return [
        f"job {name}: DONE",
        f"  steps        {done.get('steps')}",
        f"  attempts     {done.get('attempts', progress.stats.attempts)}",
        f"  preemptions  {progress.preemptions}",
        f"  stops        {stop_causes(progress)}",
        f"  restarts     {restarts} (by the supervisor)",
        f"  lost steps   {progress.stats.lost_steps_text}",
        f"  wall time    {float(done.get('wall_seconds') or 0):.1f} s",
        f"  {cost_line(machine, seconds)}",
        f"  model        {done.get('exported')}",
    ]


def stop_causes(progress: Progress) -> str:
    """Why the attempts stopped, e.g. "preempted 2, stopped 1" ("none" when none did)."""
    causes = progress.stats.stop_causes
    return ", ".join(f"{cause} {count}" for cause, count in causes.items() if count) or "none"


def _age(now_unix: float, then_unix: float | None) -> str:
    if not then_unix:
        return "-"
    seconds = max(0.0, now_unix - float(then_unix))
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def status_row(
    name: str,
    info: InstanceInfo | None,
    machine: MachineSpec | None,
    train_steps: int | None,
    progress: Progress | None,
    now_unix: float,
    keep_alive: bool = False,
) -> list[str]:
    state = info.status if info else "(deleted)"
    if progress and progress.done:
        state = f"{state} / DONE"
    elif progress and progress.failed:
        state = f"{state} / FAILED"
    if info and info.status == "RUNNING" and progress and (progress.done or progress.failed):
        # The job has ended but its VM is still billed: it should have powered itself off.
        state += " (keep-alive: VM up)" if keep_alive else " ! VM still up: invoke down"
    model = _model(info.provisioning_model) if info else (machine.provisioning if machine else "-")
    cost = "-"
    if machine and progress:
        r = rate(machine.machine_type, machine.gpu_type, machine.gpu_count, machine.provisioning)
        if r.known:
            cost = f"${r.cost(progress.running_seconds(now_unix)):.4f}"
    return [
        name,
        info.zone if info else (machine.zone if machine else "-"),
        state,
        model,
        f"{progress.step if progress else '-'}/{train_steps or '-'}",
        str(progress.stats.attempts) if progress else "-",
        stop_causes(progress) if progress else "-",
        progress.stats.lost_steps_text if progress else "-",
        _age(now_unix, progress.checkpoint_unix) if progress else "-",
        cost,
    ]


# Preemptions are one of the stop causes ("preempted N" under stops).
COLUMNS = ("name", "zone", "status", "model", "step", "attempts", "stops", "lost steps",
           "last ckpt", "cost (est.)")  # fmt: skip


def print_table(
    rows: list[list[str]],
    print_fn: Callable[[Any], None] | None = None,
    columns: tuple[str, ...] = COLUMNS,
    title: str = "survival jobs",
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{title} (cost: ESTIMATE from survival/data/prices.json)")
    for column in columns:
        # Names and zones are what a user types next: never cut them short.
        table.add_column(column, no_wrap=column in ("name", "zone", "point"))
    for row in rows:
        table.add_row(*row)
    (print_fn or Console(width=140).print)(table)
