"""`make demo`: the main job on localgce. Starts localgce if needed, registers a local image
(the kit's own .venv) if the family has none, runs `invoke train --branch exp1 --chaos 2`,
`invoke status`, and writes the timeline PNG."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO_TRAIN_STEPS = 3000
DEMO_CHECKPOINT_STEPS = 500


def ensure_local_image(state_dir: Path, project: str, family: str) -> str:
    """A local image of ``family`` (a dir whose venv/ links to the kit's .venv), made if none."""
    from google.api_core import exceptions
    from google.cloud import compute_v1

    from localgce.client import compute_client_options, ensure_running

    endpoints = ensure_running(state_dir)
    images = compute_v1.ImagesClient(**compute_client_options(endpoints))
    try:
        return images.get_from_family(project=project, family=family).name
    except exceptions.NotFound:
        pass
    image_dir = (state_dir / "demo-image").resolve()
    image_dir.mkdir(parents=True, exist_ok=True)
    venv = image_dir / "venv"
    if not venv.exists():
        venv.symlink_to(Path(sys.prefix))
    name = f"{family}-local-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"
    image = compute_v1.Image(
        name=name, family=family, raw_disk=compute_v1.RawDisk(source=str(image_dir))
    )
    images.insert(project=project, image_resource=image).result(timeout=120)
    print(f"demo: registered local image {name} (family {family}) from {image_dir}")
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m survival.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--name", default=f"exp1-demo-{time.strftime('%H%M%S', time.gmtime())}")
    args = parser.parse_args(argv)
    from invoke import Config

    from survival.config import DEFAULTS, Settings

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
    ensure_local_image(state_dir, settings.project, settings.image_family)
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
