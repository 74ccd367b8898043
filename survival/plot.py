"""`invoke jobs.plot NAME`: a PNG timeline of loss against step, with preemptions and restarts
marked, from the job dir's metrics.jsonl and attempts.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from survival.errors import ConfigError
from survival.progress import NOTICE_END_REASONS


def plot_timeline(
    name: str, metrics: list[dict[str, Any]], attempts: list[dict[str, Any]], output: Path
) -> Path:
    points = [(m["step"], m["loss"]) for m in metrics if "step" in m and "loss" in m]
    if not points:
        raise ConfigError(f"job {name} has no loss in metrics.jsonl yet: plot once it has trained")
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    steps, losses = zip(*sorted(points), strict=True)
    ax.plot(steps, losses, color="tab:blue", linewidth=1.2, label="loss")
    first_pre = first_restart = True
    for attempt in attempts:
        end_step = attempt.get("end_step")
        if attempt.get("end_reason") in NOTICE_END_REASONS and end_step is not None:
            ax.axvline(end_step, color="tab:red", linestyle="--", linewidth=1,
                       label="preemption" if first_pre else None)  # fmt: skip
            first_pre = False
        resumed = attempt.get("resumed_from_step")
        if resumed:
            ax.axvline(resumed, color="tab:green", linestyle=":", linewidth=1.5,
                       label="restart (resumed)" if first_restart else None)  # fmt: skip
            first_restart = False
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{name}: {len(attempts)} attempts")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(output, format="png")
    plt.close(fig)
    return output
