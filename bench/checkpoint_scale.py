"""Checkpoints at scale: the NumPy example (trainer.examples.numpy_wide) at 10 MB and 100 MB
checkpoints (1 GB with --with-1gb), measured side by side in one run, on a local job dir and on
gs:// (a fake-gcs-server on loopback, as localgce runs it).

    .venv/bin/python bench/checkpoint_scale.py [--sizes 10,100] [--with-1gb]
        [--interval-seconds 5] [--saves 3] [--repeats 1]

Columns, per checkpoint size:
  * sync save: the time a synchronous periodic save stops training, local job dir and gs://
    (write, fsync or upload, checksums, manifest last, prune, LEASE heartbeat);
  * async blocking: what an asynchronous periodic save stops training for (the copy of the
    state to memory), gs://, and its share of the synchronous gs:// save; the interval is long
    enough for a background write to end before the next save falls due (waits for an
    in-flight save are counted apart);
  * overhead at 30 s, in-run: each save adds the same time whatever the interval, so with a
    checkpoint every 30 s the ratio is 1 + (seconds a save adds) / 30. A synchronous save adds
    its blocking time; an asynchronous one its snapshot plus the slowdown of the steps that ran
    beside its background write, against the other steps of the same run (median of the runs).
    Measured inside each run, this does not depend on the machine's load between runs;
  * side by side: training-loop wall time with a checkpoint every I seconds over the time
    without periodic checkpoints (sync and async, gs://), at I ≈ --interval-seconds, and the
    same extrapolated to 30 s; on a machine shared with other work this is noisy;
  * notice save: SIGTERM → notice checkpoint committed to gs:// (the record's save_seconds);
  * restore: the next attempt's download, verification and load of that checkpoint (gs://).
What a planner would decide for a 30 s window is not measured here.

The loop times come from each attempt's record (loop_seconds), so process start-up, model
initialisation and the final save are not counted. The runs of one size are interleaved (in a
rotating order), so a drifting machine load hits them alike, and each configuration keeps its
fastest of --repeats runs (noise only ever adds time).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.jobdir import JobDir  # noqa: E402

BUCKET = "checkpoint-scale"
TIMEOUT_SECONDS = 1800
EXTRAPOLATE_TO_SECONDS = 30.0
CALIBRATION_STEPS = 4
CALIBRATION_SECONDS = 2.0
CALIBRATION_MAX_STEPS = 1024


def _env() -> dict:
    return {**os.environ, "GCE_METADATA_HOST": "127.0.0.1:9", "PYTHONPATH": str(REPO)}


def _command(job: str, size_mb: int, steps: int, every: int, mode: str, log_steps=0) -> list:
    return [
        sys.executable, "-m", "trainer.examples.numpy_wide", "--job-dir", job,
        "--checkpoint-mb", str(size_mb), "--train-steps", str(steps),
        "--checkpoint-steps", str(every), "--log-steps", str(log_steps),
        "--async-checkpoints" if mode == "async" else "--no-async-checkpoints",
    ]  # fmt: skip


class Jobs:
    """Fresh job dirs: local ones under a temporary directory, gs:// ones on fake-gcs-server."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def new(self, store: str) -> str:
        name = f"job-{uuid.uuid4().hex[:8]}"
        if store == "gs":
            return f"gs://{BUCKET}/{name}"
        return str(self.root / name)


def _last_attempt(job: str) -> dict:
    return JobDir.open(job).attempts()[-1]


def train(job: str, size_mb: int, steps: int, every: int, mode: str) -> dict:
    subprocess.run(
        _command(job, size_mb, steps, every, mode), env=_env(), check=True,
        capture_output=True, timeout=TIMEOUT_SECONDS, cwd=REPO,
    )  # fmt: skip
    return _last_attempt(job)


def notice_and_restore(job: str, size_mb: int, after_steps: int) -> tuple[float, float]:
    """(notice save seconds, restore seconds of the next attempt) on ``job``."""
    process = subprocess.Popen(
        _command(job, size_mb, 10**9, 0, "async", log_steps=1), env=_env(), cwd=REPO,
        text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    for line in process.stdout:
        if f"trainer: step {after_steps} loss" in line:
            process.send_signal(signal.SIGTERM)
            break
    process.stdout.read()
    if process.wait(timeout=TIMEOUT_SECONDS) != 75:
        raise SystemExit("the trainer did not exit 75 after SIGTERM")
    notice = _last_attempt(job)
    resumed = train(job, size_mb, int(notice["end_step"]), 0, "async")
    return notice["save_seconds"], resumed["restore_seconds"]


def measure(jobs: Jobs, size_mb: int, args: argparse.Namespace) -> dict:
    # Short runs with one synchronous gs:// save each: the step time (the first steps are slow,
    # so runs of 4x as many steps until they take a while), and how long a save takes.
    calibration_steps = CALIBRATION_STEPS
    while True:
        calibration = train(
            jobs.new("gs"), size_mb, calibration_steps, calibration_steps // 2, "sync"
        )
        save_seconds = calibration["periodic_save_seconds"]
        training_seconds = calibration["loop_seconds"] - save_seconds
        if training_seconds >= CALIBRATION_SECONDS or calibration_steps >= CALIBRATION_MAX_STEPS:
            break
        calibration_steps *= 4
    # Once more at that length: the faster of the two (a busy machine only ever slows a run).
    again = train(jobs.new("gs"), size_mb, calibration_steps, calibration_steps // 2, "sync")
    training_seconds = min(training_seconds, again["loop_seconds"] - again["periodic_save_seconds"])
    save_seconds = min(save_seconds, again["periodic_save_seconds"])
    step_seconds = training_seconds / calibration_steps
    # Long enough for a background write (about a synchronous save) to end before the next
    # save falls due, as it does at a checkpoint every 30 s: waits would measure the interval.
    interval = max(args.interval_seconds, 3 * step_seconds, 2 * save_seconds)
    every = max(1, round(interval / step_seconds))
    # One interval after the last periodic save, so its background write ends inside the loop.
    steps = every * (args.saves + 1)
    configs = [("none", "local", "sync", 0), ("sync", "local", "sync", every)]
    configs += [("sync", "gs", "sync", every), ("async", "gs", "async", every)]
    best: dict[tuple[str, str], dict] = {}
    async_runs: list[dict] = []
    for repeat in range(args.repeats):
        shift = repeat % len(configs)  # a different order each time: no config always first
        for name, store, mode, k in configs[shift:] + configs[:shift]:
            record = train(jobs.new(store), size_mb, steps, k, mode)
            if mode == "async":
                async_runs.append(record)
            key = (name, store)
            if key not in best or record["loop_seconds"] < best[key]["loop_seconds"]:
                best[key] = record
    none = best["none", "local"]["loop_seconds"]

    def per_save(key: tuple[str, str], field: str) -> float:
        record = best[key]
        return record[field] / max(1, record["periodic_saves"])

    def extra_per_save(key: tuple[str, str]) -> float:
        return (best[key]["loop_seconds"] - none) / max(1, best[key]["periodic_saves"])

    # In-run estimates, robust to a machine whose load drifts between runs: a synchronous save
    # costs its blocking time; an asynchronous one its snapshot plus how much slower the steps
    # beside its background write ran than the other steps of the same run.
    inrun_async = []
    for record in async_runs:
        clean_steps = record["steps_run"] - record["background_overlap_steps"]
        clean = (record["step_seconds_total"] - record["background_overlap_seconds"]) / clean_steps
        slowdown = record["background_overlap_seconds"] - record["background_overlap_steps"] * clean
        snapshot = record["periodic_save_blocking_seconds"] - record["save_wait_seconds"]
        inrun_async.append((snapshot + max(0.0, slowdown)) / max(1, record["periodic_saves"]))
    notice, restore = notice_and_restore(jobs.new("gs"), size_mb, after_steps=2)
    sync_gs = per_save(("sync", "gs"), "periodic_save_blocking_seconds")
    # The snapshot alone; a wait for an in-flight save is counted (and shown) apart.
    asynchronous = best["async", "gs"]
    blocking = (
        asynchronous["periodic_save_blocking_seconds"] - asynchronous["save_wait_seconds"]
    ) / max(1, asynchronous["periodic_saves"])
    return {
        "size_mb": size_mb,
        "step_seconds": step_seconds,
        "every": every,
        # The interval as trained, from the run without periodic saves.
        "interval": none * every / steps,
        "saves": best["sync", "gs"]["periodic_saves"],
        "sync_local": per_save(("sync", "local"), "periodic_save_blocking_seconds"),
        "sync_gs": sync_gs,
        "async_blocking": blocking,
        "async_background": per_save(("async", "gs"), "periodic_save_seconds"),
        "waits": asynchronous["save_waits"],
        "ratio_sync": best["sync", "gs"]["loop_seconds"] / none,
        "ratio_async": best["async", "gs"]["loop_seconds"] / none,
        "ratio_sync_30": 1 + extra_per_save(("sync", "gs")) / EXTRAPOLATE_TO_SECONDS,
        "ratio_async_30": 1 + extra_per_save(("async", "gs")) / EXTRAPOLATE_TO_SECONDS,
        "inrun_sync_30": 1 + sync_gs / EXTRAPOLATE_TO_SECONDS,
        "inrun_async_30": 1 + statistics.median(inrun_async) / EXTRAPOLATE_TO_SECONDS,
        "notice": notice,
        "restore": restore,
    }


def print_table(rows: list[dict]) -> None:
    cpu = os.cpu_count()
    print(f"numpy_wide checkpoints, {cpu} CPUs, gs:// = fake-gcs-server on loopback")
    header = (
        "| checkpoint | sync save local | sync save gs:// | async blocking (share of sync) "
        "| overhead at 30 s, in-run: sync / async "
        "| side by side: sync / async (interval) | notice save gs:// | restore gs:// |"
    )
    print(header)
    print("|" + "---|" * 8)
    for r in rows:
        print(
            f"| {r['size_mb']} MB | {r['sync_local']:.3f} s | {r['sync_gs']:.3f} s "
            f"| {r['async_blocking']:.3f} s ({100 * r['async_blocking'] / r['sync_gs']:.1f} %) "
            f"| {r['inrun_sync_30']:.3f}× / {r['inrun_async_30']:.3f}× "
            f"| {r['ratio_sync']:.3f}× / {r['ratio_async']:.3f}× ({r['interval']:.1f} s; at 30 s "
            f"{r['ratio_sync_30']:.3f}× / {r['ratio_async_30']:.3f}×) "
            f"| {r['notice']:.3f} s | {r['restore']:.3f} s |"
        )
    print()
    for r in rows:
        print(
            f"{r['size_mb']} MB: {r['step_seconds']:.3f} s/step (calibrated), a checkpoint every "
            f"{r['every']} "
            f"steps (~{r['interval']:.1f} s), {r['saves']} periodic saves a run; async background "
            f"write {r['async_background']:.3f} s a save, {r['waits']} waits for an in-flight save"
        )
    print("targets: async blocking ≤ 10 % of the sync save (100 MB); overhead ≤ 1.05× at 30 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100", help="checkpoint sizes in MB (default 10,100)")
    parser.add_argument("--with-1gb", action="store_true", help="also measure a 1000 MB checkpoint")
    parser.add_argument(
        "--interval-seconds", type=float, default=5.0,
        help="seconds of training between periodic saves in the overhead runs (default 5)",
    )  # fmt: skip
    parser.add_argument("--saves", type=int, default=3, help="periodic saves a run (default 3)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each configuration; the fastest is kept"
    )
    args = parser.parse_args()
    try:
        sizes = [int(size) for size in args.sizes.split(",") if size]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers (MB), got {args.sizes!r}")
    if args.with_1gb and 1000 not in sizes:
        sizes.append(1000)
    if args.saves < 1 or args.repeats < 1 or args.interval_seconds <= 0:
        parser.error("--saves and --repeats must be ≥ 1 and --interval-seconds > 0")

    from google.api_core.exceptions import Conflict

    from localgce.storage import start_storage
    from trainer.storage import _gcs_client

    with tempfile.TemporaryDirectory(prefix="checkpoint-scale-") as tmp:
        server = start_storage(Path(tmp) / "gcs")
        try:
            os.environ["STORAGE_EMULATOR_HOST"] = server.url
            os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "bench-project")
            with contextlib.suppress(Conflict):
                _gcs_client().create_bucket(BUCKET)
            jobs = Jobs(Path(tmp) / "local")
            rows = []
            started = time.monotonic()
            for size in sizes:
                rows.append(measure(jobs, size, args))
                print(f"measured {size} MB ({time.monotonic() - started:.0f} s so far)", flush=True)
        finally:
            server.stop()
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
