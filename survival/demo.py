"""`make demo`: the main job on localgce. Starts localgce if needed, bakes a local image with
Packer if the family has none, runs `invoke train --branch exp1 --chaos 2`,
`invoke status`, and writes the timeline PNG."""

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
    # Derived settings (the trainer repo in the state dir) follow the absolute state dir.
    settings = settings.with_flags(local_state_dir=state_dir)
    ensure_local_image(settings)
    invoke = [sys.executable, "-m", "invoke"]
    steps = [
        [*invoke, "train", "--branch", "exp1", "--chaos", "2", "--name", args.name,
         "--train-steps", str(DEMO_TRAIN_STEPS), "--checkpoint-steps", str(DEMO_CHECKPOINT_STEPS)],
        [*invoke, "status"],
        [*invoke, "jobs.plot", args.name, "--output", str(state_dir / f"{args.name}-timeline.png")],
    ]  # fmt: skip
    for step in steps:
        print("$ invoke " + " ".join(step[3:]), flush=True)
        if subprocess.run(step, cwd=REPO, check=False).returncode != 0:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
