"""`make demo`: the main job on localgce. Starts localgce if needed, bakes a local image with
Packer if the family has none, runs `invoke train --branch exp1 --chaos 2`,
`invoke status`, and writes the timeline PNG. Then a short sweep on Cloud Batch: 4 small
scikit-learn points (`invoke sweep --engine batch`), waited for, shown per point and reported."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from invoke import Config

from survival import bake
from survival.backend import open_cloud
from survival.config import DEFAULTS, Settings
from survival.config import KIT_ROOT as REPO

DEMO_TRAIN_STEPS = 3000
DEMO_CHECKPOINT_STEPS = 500
# The sweep: 2 x 2 small scikit-learn points, 2 at a time.
DEMO_SWEEP_STEPS = 600
DEMO_SWEEP_CHECKPOINT_STEPS = 200
DEMO_SWEEP_PARALLELISM = 2
SWEEP_POLL_SECONDS = 2.0
SWEEP_TIMEOUT_SECONDS = 600.0


def ensure_local_image(settings: Settings) -> str:
    """The newest image of the family in localgce; baked through Packer (`invoke bake-image
    --backend local`) when the family has none yet."""
    family = settings.image_family
    newest = open_cloud(settings, job_bucket=False).compute.newest_image(family)
    if newest is not None:
        return newest.name
    print(f"demo: no image in family {family} yet; baking one with Packer (about a minute)")
    plan = bake.prepare(bake.local_plan(family=family, state_dir=settings.local_state_dir))
    result = bake.bake(plan)
    print(f"demo: baked local image {result.image_name} (family {result.family})")
    return result.image_name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m survival.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--name", default=f"exp1-demo-{time.strftime('%H%M%S', time.gmtime())}")
    args = parser.parse_args(argv)
    config = Config(project_location=str(REPO))
    config.load_collection({"survival": DEFAULTS})
    config.load_project()
    config.load_shell_env()
    settings = Settings.from_invoke(config)
    if not settings.is_local:
        print("demo: survival.backend must be local for the demo", file=sys.stderr)
        return 2
    state_dir = (
        (REPO / settings.local_state_dir)
        if not settings.local_state_dir.is_absolute()
        else settings.local_state_dir
    )
    # Settings derived from the state dir follow the absolute state dir.
    settings = settings.with_flags(local_state_dir=state_dir)
    ensure_local_image(settings)
    invoke = [sys.executable, "-m", "invoke"]
    steps = [
        [*invoke, "train", "--branch", "exp1", "--chaos", "2", "--name", args.name,
         "--train-steps", str(DEMO_TRAIN_STEPS), "--checkpoint-steps", str(DEMO_CHECKPOINT_STEPS)],
        [*invoke, "status"],
        [*invoke, "jobs.plot", args.name, "--output", str(state_dir / f"{args.name}-timeline.png")],
    ]  # fmt: skip
    if not run_steps(steps):
        return 1
    sweep_name = f"{args.name}-sweep"
    sweep = [*invoke, "sweep", "--branch", "exp1", "--no-push", "--engine", "batch",
             "--example", "sklearn_digits", "--name", sweep_name,
             "--grid", "learning_rate=0.01,0.03", "--grid", "batch_size=32,64",
             "--parallelism", str(DEMO_SWEEP_PARALLELISM),
             "--train-steps", str(DEMO_SWEEP_STEPS),
             "--checkpoint-steps", str(DEMO_SWEEP_CHECKPOINT_STEPS)]  # fmt: skip
    if not run_steps([sweep]):
        return 1
    if not wait_for_sweep(settings, sweep_name, SWEEP_POLL_SECONDS, SWEEP_TIMEOUT_SECONDS):
        return 1
    report = str(state_dir / f"{sweep_name}-report")
    after = [
        [*invoke, "status", "--name", sweep_name],
        [*invoke, "sweep.report", sweep_name, "--output", report],
    ]
    return 0 if run_steps(after) else 1


def run_steps(steps: list[list[str]]) -> bool:
    for step in steps:
        print("$ invoke " + " ".join(step[3:]), flush=True)
        if subprocess.run(step, cwd=REPO, check=False).returncode != 0:
            return False
    return True


def wait_for_sweep(
    settings: Settings, name: str, poll_seconds: float, timeout_seconds: float
) -> bool:
    """Wait until the sweep's Batch job has ended (nothing else is needed for it to run: this
    only keeps the demo's output in order); print each change of its task counts."""
    from survival import batch_engine
    from survival import sweep as sweeps

    record = sweeps.read_record(settings.local_state_dir, name)
    if record is None:
        print(f"demo: no record of sweep {name}", file=sys.stderr)
        return False
    batch = batch_engine.batch_for(settings)
    deadline = time.monotonic() + timeout_seconds
    last = None
    while time.monotonic() < deadline:
        job = batch.get(record["batch_jobs"][-1])
        counts = batch_engine.task_counts(job)
        line = f"{batch_engine.state_of(job)}: " + ", ".join(
            f"{count} {state}" for state, count in sorted(counts.items())
        )
        if line != last:
            print(f"demo: sweep {name} {line}", flush=True)
            last = line
        if not batch_engine.is_active(job):
            return batch_engine.state_of(job) == "SUCCEEDED"
        time.sleep(poll_seconds)
    print(f"demo: sweep {name} did not end within {timeout_seconds:.0f} s", file=sys.stderr)
    return False


if __name__ == "__main__":
    sys.exit(main())
