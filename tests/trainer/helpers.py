"""Running trainer subprocesses and inspecting job dirs, for the trainer tests."""

from __future__ import annotations

import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

from trainer.jobdir import JobDir

REPO = Path(__file__).resolve().parents[2]
WAIT_SECONDS = 120.0  # generous: the machine is shared with other test runs
STEP_LINE = re.compile(r"trainer: step (\d+) loss")


def trainer_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.pop("GCE_METADATA_HOST", None)
    env["GCE_METADATA_HOST"] = "127.0.0.1:9"  # discard port: no metadata server, probe fails fast
    env["PYTHONPATH"] = str(REPO)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.update(extra or {})
    return env


def command(example: str, job_dir: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"trainer.examples.{example}", "--job-dir", job_dir, *args]


def run(example: str, job_dir: str, *args: str, env: dict | None = None, timeout=WAIT_SECONDS):
    """Run a trainer to its end; returns the CompletedProcess (stdout and stderr as text)."""
    return subprocess.run(
        command(example, job_dir, *args),
        env=trainer_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


class Trainer:
    """A trainer subprocess whose output lines can be waited on."""

    def __init__(self, example: str, job_dir: str, *args: str, env: dict | None = None):
        self.process = subprocess.Popen(
            command(example, job_dir, *args),
            env=trainer_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, predicate, timeout: float = WAIT_SECONDS) -> str:
        """Block until an output line satisfies predicate; returns it (fails on exit/deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no matching line within {timeout}s:\n{self.text()}"
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            assert line is not None, f"trainer exited before the line:\n{self.text()}"
            if predicate(line):
                return line

    def wait_for_step(self, at_least: int, timeout: float = WAIT_SECONDS) -> int:
        line = self.wait_for(
            lambda text: (m := STEP_LINE.search(text)) is not None and int(m.group(1)) >= at_least,
            timeout,
        )
        return int(STEP_LINE.search(line).group(1))

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def finish(self, timeout: float = WAIT_SECONDS) -> int:
        code = self.process.wait(timeout=timeout)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=WAIT_SECONDS)

    def text(self) -> str:
        return "".join(self.output)


def snapshot(job_dir: str) -> dict[str, bytes]:
    """Every file of a job dir (local or gs://) with its bytes."""
    store = JobDir.open(job_dir).store
    return {name: store.read(name) for name in store.list()}


def fetch_export(job_dir: str, file_name: str, into: Path) -> Path:
    store = JobDir.open(job_dir).store
    target = into / file_name
    store.download(f"export/{file_name}", target)
    return target


def export_arrays(job_dir: str, framework: str) -> dict[str, np.ndarray]:
    """The exported model's arrays: skops attributes, the .keras file's HDF5 weights, or the
    NumPy example's .npz."""
    with tempfile.TemporaryDirectory() as tmp:
        if framework == "numpy":
            from trainer.examples.numpy_wide import MODEL_FILE

            with np.load(fetch_export(job_dir, MODEL_FILE, Path(tmp)), allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        if framework == "sklearn":
            import skops.io

            from trainer.examples.sklearn_digits import MODEL_FILE, TRUSTED_TYPES

            model = skops.io.load(
                fetch_export(job_dir, MODEL_FILE, Path(tmp)), trusted=TRUSTED_TYPES
            )
            return {"coef_": model.coef_, "intercept_": model.intercept_, "t_": np.array(model.t_)}
        import h5py

        path = fetch_export(job_dir, "model.keras", Path(tmp))
        arrays = {}
        with zipfile.ZipFile(path) as archive:
            weights = io.BytesIO(archive.read("model.weights.h5"))
        with h5py.File(weights, "r") as h5:
            h5.visititems(
                lambda name, obj: (
                    arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
                )
            )
        return arrays


def assert_same_arrays(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert np.array_equal(got[name], want[name]), f"array {name} differs from the reference"


def records(job_dir: str, name: str) -> list[dict]:
    data = JobDir.open(job_dir).store.read(name) or b""
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def start_and_stop_after_checkpoint(example: str, job_dir: str, step: int, *args: str) -> int:
    """Run until ckpt-<step> is saved, then SIGTERM (exit 75): a job in progress. Returns the
    step of the notice checkpoint."""
    trainer = Trainer(example, job_dir, "--log-steps", "1", *args)
    try:
        trainer.wait_for(lambda line: f"checkpoint ckpt-{step} saved" in line)
        trainer.signal(signal.SIGTERM)
        assert trainer.finish() == 75, trainer.text()
    finally:
        trainer.kill()
    return int(records(job_dir, "attempts.jsonl")[-1]["end_step"])
