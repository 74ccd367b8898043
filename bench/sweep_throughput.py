"""Sweep throughput on localgce's Cloud Batch: 8 scikit-learn points as one Batch job with
parallelism 4, next to the sum of the same points' solo times (each point alone, one
`invoke train --engine batch` after the other), side by side in one run.

    .venv/bin/python bench/sweep_throughput.py [--train-steps N] [--parallelism P]

Each time is from `invoke` starting to the Batch job ending (submission, the task VMs' boot,
the code fetch, training, the export), so the ratio is what a user waits for a sweep against
running its points one by one. The machine's cores bound the speed-up: the task VMs are
processes of this machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from survival.config import LOCAL_PROJECT  # noqa: E402

JOB_RE = re.compile(r"as Batch job (projects/\S+/jobs/\S+) ")
TIMEOUT_SECONDS = 1800
POLL_SECONDS = 0.5
LEARNING_RATES = ("0.01", "0.02", "0.03", "0.05")
BATCH_SIZES = ("32", "64")


def _register_image(endpoints: dict, state: Path) -> None:
    """A local image whose venv is this environment (what the e2e tests use)."""
    from google.cloud import compute_v1

    from localgce.client import compute_client_options

    image_dir = state / "kit-image"
    image_dir.mkdir(parents=True)
    (image_dir / "venv").symlink_to(Path(sys.prefix))
    images = compute_v1.ImagesClient(**compute_client_options(endpoints))
    image = compute_v1.Image(
        name="gce-survival-kit-bench", family="gce-survival-kit",
        raw_disk=compute_v1.RawDisk(source=str(image_dir)),
    )  # fmt: skip
    images.insert(project=LOCAL_PROJECT, image_resource=image).result(timeout=120)


def _invoke(env: dict, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=TIMEOUT_SECONDS, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"invoke {' '.join(args)} failed: {result.stderr.strip()[-500:]}")
    return result.stdout


def _wait(batch, name: str) -> str:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        state = batch.get_job(name=name).status.state.name
        if state in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return state
        time.sleep(POLL_SECONDS)
    raise SystemExit(f"{name} did not end within {TIMEOUT_SECONDS} s")


def _timed(env: dict, batch, *args: str) -> float:
    start = time.monotonic()
    out = _invoke(env, *args)
    state = _wait(batch, JOB_RE.search(out).group(1))
    if state != "SUCCEEDED":
        raise SystemExit(f"invoke {' '.join(args)}: the Batch job ended {state}")
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-steps", type=int, default=1000)
    parser.add_argument("--parallelism", type=int, default=4)
    args = parser.parse_args(argv)

    from google.cloud import batch_v1

    from localgce import daemon
    from localgce.client import batch_client_options, ensure_running
    from survival.backend import ensure_bucket, storage_client

    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    root.chmod(0o755)  # the guest may drop to an unprivileged user
    state = root / "state"
    endpoints = ensure_running(state, ssh_enabled=False)
    try:
        _register_image(endpoints, state)
        ensure_bucket(storage_client(LOCAL_PROJECT, endpoints["storage"]), "survival-jobs",
                      create=True)  # fmt: skip
        env = {
            **os.environ,
            "INVOKE_SURVIVAL_LOCAL_STATE_DIR": str(state),
            "STORAGE_EMULATOR_HOST": endpoints["storage"],
            "GOOGLE_CLOUD_PROJECT": LOCAL_PROJECT,
        }
        batch = batch_v1.BatchServiceClient(**batch_client_options(endpoints))
        common = ["--example", "sklearn_digits", "--train-steps", str(args.train_steps),
                  "--checkpoint-steps", "0"]  # fmt: skip
        _invoke(env, "push-code", "--branch", "bench")
        solo = []
        for index, (rate, size) in enumerate((r, s) for r in LEARNING_RATES for s in BATCH_SIZES):
            seconds = _timed(
                env, batch, "train", "--branch", "bench", "--no-push", "--engine", "batch",
                "--name", f"solo-{index}", "--hparam", f"learning_rate={rate}",
                "--hparam", f"batch_size={size}", *common,
            )  # fmt: skip
            solo.append(seconds)
            print(f"solo point {index} (learning_rate={rate}, batch_size={size}): {seconds:.1f} s")
        sweep = _timed(
            env, batch, "sweep", "--branch", "bench", "--no-push", "--engine", "batch",
            "--name", "bench-sweep", "--grid", f"learning_rate={','.join(LEARNING_RATES)}",
            "--grid", f"batch_size={','.join(BATCH_SIZES)}",
            "--parallelism", str(args.parallelism), *common,
        )  # fmt: skip
    finally:
        daemon.stop(state)
        shutil.rmtree(root, ignore_errors=True)
    points = len(solo)
    print()
    print(f"{'points':>6}  {'parallelism':>11}  {'sweep s':>8}  {'sum of solo s':>13}  ratio")
    print(f"{points:>6}  {args.parallelism:>11}  {sweep:>8.1f}  {sum(solo):>13.1f}  "
          f"{sweep / sum(solo):.2f}")  # fmt: skip
    print(f"({os.cpu_count()} CPUs; --train-steps {args.train_steps})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
