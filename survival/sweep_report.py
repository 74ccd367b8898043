"""`invoke sweep.report NAME`: the sweep's points ranked by the example's metric, as a table,
report.csv, and a PNG (the metric against each hyperparameter; every point's loss curve with its
preemptions marked). Everything comes from the points' job dirs (metrics.jsonl, attempts.jsonl,
DONE), so the report works while a sweep runs and after its VMs are gone."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from survival.errors import ConfigError
from survival.progress import NOTICE_END_REASONS


@dataclass(frozen=True)
class Metric:
    name: str
    description: str
    lower_is_better: bool
    window: int = 10  # logged rows averaged at the end of training


# The metric each example's sweep is ranked by. Both examples log their training loss every
# `--metrics-steps` steps; the mean of the last rows smooths out one batch's noise.
FINAL_LOSS = Metric("final_loss", "mean training loss of the last 10 logged steps", True)
METRICS = {"sklearn_digits": FINAL_LOSS, "keras_digits": FINAL_LOSS, "numpy_wide": FINAL_LOSS}


def metric_of(example: str) -> Metric:
    return METRICS.get(example, FINAL_LOSS)


def metric_value(metric: Metric, metrics: list[dict[str, Any]]) -> float | None:
    losses = [float(m["loss"]) for m in metrics if "step" in m and "loss" in m]
    if not losses:
        return None
    tail = losses[-metric.window :]
    return sum(tail) / len(tail)


@dataclass(frozen=True)
class PointReport:
    index: int
    hparams: dict[str, Any]
    state: str
    steps: int
    value: float | None
    preemptions: int
    lost_steps: str
    curve: list[tuple[int, float]]
    preempted_at: list[int]


def point_report(point: Any, metric: Metric, job_dir: Any) -> PointReport:
    """``point``: a survival.sweep.PointState; ``job_dir``: its trainer.jobdir.JobDir."""
    metrics = job_dir.metrics()
    attempts = job_dir.attempts()
    progress = point.progress
    return PointReport(
        index=point.index,
        hparams=point.hparams,
        state=point.state,
        steps=progress.step if progress else 0,
        value=metric_value(metric, metrics),
        preemptions=progress.preemptions if progress else 0,
        lost_steps=progress.stats.lost_steps_text if progress else "-",
        curve=sorted((int(m["step"]), float(m["loss"])) for m in metrics if "loss" in m),
        preempted_at=[
            int(a["end_step"])
            for a in attempts
            if a.get("end_reason") in NOTICE_END_REASONS and a.get("end_step") is not None
        ],
    )


def ranked(reports: list[PointReport], metric: Metric) -> list[PointReport]:
    """Best first; points with no value yet last, in index order."""
    sign = 1.0 if metric.lower_is_better else -1.0
    return sorted(
        reports,
        key=lambda r: (r.value is None, sign * r.value if r.value is not None else 0.0, r.index),
    )


def columns(reports: list[PointReport], metric: Metric) -> tuple[list[str], list[list[str]]]:
    names = sorted({key for r in reports for key in r.hparams})
    header = ["rank", "point", *names, metric.name, "state", "steps", "preemptions", "lost steps"]
    rows = []
    for rank, r in enumerate(reports, 1):
        rows.append([
            str(rank), str(r.index), *(str(r.hparams.get(n, "")) for n in names),
            f"{r.value:.6g}" if r.value is not None else "", r.state, str(r.steps),
            str(r.preemptions), r.lost_steps,
        ])  # fmt: skip
    return header, rows


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_png(path: Path, name: str, reports: list[PointReport], metric: Metric) -> Path:
    """Top: the metric against each hyperparameter; bottom: every point's loss curve, with a
    cross where a preemption (a notice checkpoint) ended an attempt."""
    if not any(r.curve for r in reports):
        raise ConfigError(f"sweep {name} has no logged loss yet: report once points have trained")
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    names = sorted({key for r in reports for key in r.hparams}) or ["point"]
    fig = plt.figure(figsize=(max(9, 4 * len(names)), 8), dpi=100)
    grid = fig.add_gridspec(2, len(names))
    for column, hparam in enumerate(names):
        ax = fig.add_subplot(grid[0, column])
        xs = [r.hparams.get(hparam, r.index) for r in reports if r.value is not None]
        ys = [r.value for r in reports if r.value is not None]
        ax.scatter(xs, ys, color="tab:blue")
        numbers = [x for x in xs if isinstance(x, int | float) and not isinstance(x, bool)]
        if numbers and min(numbers) > 0 and max(numbers) / min(numbers) >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(hparam)
        ax.set_ylabel(metric.name)
        ax.grid(alpha=0.3)
    curves = fig.add_subplot(grid[1, :])
    marked = False
    for r in reports:
        if not r.curve:
            continue
        steps, losses = zip(*r.curve, strict=True)
        label = f"{r.index}: " + ", ".join(f"{k}={v}" for k, v in sorted(r.hparams.items()))
        curves.plot(steps, losses, linewidth=1, label=label)
        for step in r.preempted_at:
            loss = min(r.curve, key=lambda point, s=step: abs(point[0] - s))[1]
            curves.plot([step], [loss], marker="x", color="tab:red", markersize=12, mew=2, zorder=5,
                        linestyle="none", label=None if marked else "preemption")  # fmt: skip
            marked = True
    curves.set_xlabel("step")
    curves.set_ylabel("loss")
    curves.grid(alpha=0.3)
    curves.legend(loc="upper right", fontsize="small")
    fig.suptitle(f"sweep {name}: {metric.description} ({len(reports)} points)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
