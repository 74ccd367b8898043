"""Checkpoint overhead of the Keras example: training-loop wall time with a checkpoint every K
steps versus none, side by side in one run (interleaved; best and median of --repeats), plus the
time a notice save (SIGTERM → checkpoint → exit 75) takes.

    .venv/bin/python bench/checkpoint_overhead.py [--checkpoint-steps K] [--train-steps N]

The loop time comes from each attempt's ``loop_seconds`` in attempts.jsonl, so process start-up
(TensorFlow import) is not counted. Target: ratio ≤ 1.02 at the default K.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.examples.keras_digits import KerasDigits  # noqa: E402

STEP_LINE = re.compile(r"trainer: step (\d+) ")
TIMEOUT_SECONDS = 900


def _env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "GCE_METADATA_HOST": "127.0.0.1:9"}


def _command(job_dir: str, train_steps: int, checkpoint_steps: int, log_steps: int) -> list:
    return [
        sys.executable, "-m", "trainer.examples.keras_digits", "--job-dir", job_dir,
        "--train-steps", str(train_steps), "--checkpoint-steps", str(checkpoint_steps),
        "--log-steps", str(log_steps),
    ]  # fmt: skip


def _last_attempt(job_dir: str) -> dict:
    lines = (Path(job_dir) / "attempts.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


def loop_seconds(train_steps: int, checkpoint_steps: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        job = os.path.join(tmp, "job")
        subprocess.run(
            _command(job, train_steps, checkpoint_steps, 0),
            env=_env(), check=True, capture_output=True, timeout=TIMEOUT_SECONDS, cwd=REPO,
        )  # fmt: skip
        return _last_attempt(job)


def notice_save_seconds(after_steps: int) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        job = os.path.join(tmp, "job")
        process = subprocess.Popen(
            _command(job, 10**9, 0, 100), env=_env(), cwd=REPO, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        for line in process.stdout:
            match = STEP_LINE.search(line)
            if match and int(match.group(1)) >= after_steps:
                process.send_signal(signal.SIGTERM)
                break
        process.stdout.read()
        if process.wait(timeout=TIMEOUT_SECONDS) != 75:
            raise SystemExit("the trainer did not exit 75 after SIGTERM")
        return _last_attempt(job)["save_seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint-steps", type=int, default=KerasDigits.default_checkpoint_steps
    )
    parser.add_argument("--train-steps", type=int, default=KerasDigits.default_train_steps)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with_ckpt, without, in_run, cpu_with, cpu_without = [], [], [], [], []
    saves = 0
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits both alike
        attempt = loop_seconds(args.train_steps, args.checkpoint_steps)
        with_ckpt.append(attempt["loop_seconds"])
        cpu_with.append(attempt["loop_cpu_seconds"])
        saves = attempt["periodic_saves"]
        # Load-independent estimate from the same run: time in periodic saves vs. the rest.
        save_seconds = attempt["periodic_save_seconds"]
        in_run.append(attempt["loop_seconds"] / (attempt["loop_seconds"] - save_seconds))
        plain = loop_seconds(args.train_steps, 0)
        without.append(plain["loop_seconds"])
        cpu_without.append(plain["loop_cpu_seconds"])
    # Best-of-N is the headline: the same run varies by 20-30 % on this 2-core VM, and noise only
    # ever adds time, so each configuration's fastest run is its least-disturbed measurement.
    ratio_best = min(with_ckpt) / min(without)
    ratio = statistics.median(with_ckpt) / statistics.median(without)
    notice = notice_save_seconds(after_steps=500)
    print(f"keras_digits, {args.train_steps} steps, {args.repeats} interleaved runs each")
    print(
        f"  checkpoint every {args.checkpoint_steps} steps ({saves} periodic saves): "
        f"{statistics.median(with_ckpt):.3f}s  runs {[round(s, 3) for s in with_ckpt]}"
    )
    print(
        f"  no periodic checkpoints:       {statistics.median(without):.3f}s  "
        f"runs {[round(s, 3) for s in without]}"
    )
    best = f"best of {args.repeats}"
    print(f"  overhead ratio, side by side, {best}: {ratio_best:.4f} (target ≤ 1.02)")
    print(f"  overhead ratio, side by side, median: {ratio:.4f} (noisy on a shared machine)")
    cpu_ratio = statistics.median(cpu_with) / statistics.median(cpu_without)
    print(f"  overhead ratio, process CPU time side by side: {cpu_ratio:.4f}")
    print(f"  overhead ratio, in-run save time / loop time: {statistics.median(in_run):.4f}")
    print(f"  notice save (SIGTERM → checkpoint written): {notice:.3f}s (Spot window: 30s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
