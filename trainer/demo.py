"""`make demo`: train the Keras example, kill it twice along the way, resume, print the summary.

Attempt 1 is SIGKILLed (a VM vanishing without warning: the steps since the last checkpoint are
lost); attempt 2 gets SIGTERM (a preemption notice: it saves the step it reached and exits 75);
attempt 3 resumes and finishes. The DONE summary shows attempts, notices and lost steps.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from trainer import exitcodes
from trainer.jobdir import JobDir

STEP_LINE = re.compile(r"trainer: step (\d+) ")
RESUMED_LINE = re.compile(r"resumed from ckpt-(\d+)")
SHOWN = ("trainer:", "trainer.", "ERROR", "Traceback")
WAIT_SECONDS = 300


def _trainer(job_dir: str, args: argparse.Namespace) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "trainer.examples.keras_digits", "--job-dir", job_dir,
        "--train-steps", str(args.train_steps), "--checkpoint-steps", str(args.checkpoint_steps),
        "--log-steps", str(args.log_steps), "--seed", "1",
    ]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def _run_until(process: subprocess.Popen, stop_at_step: int | None, seen: dict) -> int | None:
    """Echo the trainer's lines; return the step line that reached stop_at_step (or None)."""
    for line in process.stdout:
        if any(marker in line for marker in SHOWN):
            print("   ", line.rstrip(), flush=True)
        if resumed := RESUMED_LINE.search(line):
            seen["resumed"] = int(resumed.group(1))
        match = STEP_LINE.search(line)
        if stop_at_step is not None and match and int(match.group(1)) >= stop_at_step:
            return int(match.group(1))
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.demo", description=__doc__)
    parser.add_argument("--job-dir", default=".survival/demo-job", help="(default %(default)s)")
    parser.add_argument("--train-steps", type=int, default=3000)
    parser.add_argument("--checkpoint-steps", type=int, default=500)
    parser.add_argument("--log-steps", type=int, default=250)
    args = parser.parse_args(argv)
    job_dir = args.job_dir
    if not job_dir.startswith("gs://") and Path(job_dir).exists():
        shutil.rmtree(job_dir)  # a fresh demo each time (a DONE job would exit at once)
    kill_at, term_at = args.train_steps * 2 // 5, args.train_steps * 7 // 10

    print(f"== attempt 1: training into {job_dir}; SIGKILL at step ≥{kill_at} (no warning)")
    process = _trainer(job_dir, args)
    killed_at = _run_until(process, kill_at, {})
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=WAIT_SECONDS)
    print(f"== killed at step {killed_at}: steps after the last checkpoint are lost\n")

    print(f"== attempt 2: resume; SIGTERM at step ≥{term_at} (a preemption notice)")
    process = _trainer(job_dir, args)
    seen: dict = {}
    _run_until(process, term_at, seen)
    process.send_signal(signal.SIGTERM)
    _run_until(process, None, seen)
    if "resumed" in seen:
        lost = killed_at - seen["resumed"]
        print(f"== attempt 2 resumed from step {seen['resumed']}: the SIGKILL cost {lost} steps")
    code = process.wait(timeout=WAIT_SECONDS)
    print(f"== exit code {code} (75: saved on the notice, nothing lost)\n")
    if code != exitcodes.NOTICE_SAVED:
        print("error: expected exit code 75 after SIGTERM", file=sys.stderr)
        return 1

    print("== attempt 3: resume and finish")
    process = _trainer(job_dir, args)
    _run_until(process, None, {})
    code = process.wait(timeout=WAIT_SECONDS)
    done = JobDir.open(job_dir).done()
    if code != exitcodes.OK or done is None:
        print(f"error: the last attempt exited {code} without DONE", file=sys.stderr)
        return 1
    print("\n== DONE summary")
    print(json.dumps(done, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
