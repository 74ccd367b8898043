"""Asynchronous periodic saves (--async-checkpoints) and the scalable NumPy example: a notice
that comes while a background save is in flight cancels it and commits exactly one checkpoint,
a failing background save stops the attempt like a synchronous one, and the example's
checkpoint size follows its setting."""

from __future__ import annotations

import errno
import os
import signal

import pytest

from tests.trainer import helpers
from trainer import exitcodes, runner
from trainer.examples.numpy_wide import HPARAMS, NumpyWide, parameter_count, width_for
from trainer.jobdir import JobDir
from trainer.storage import LocalStore

SMALL = ["--checkpoint-mb", "1", "--seed", "7"]
# Every periodic save stalls before its manifest until cancelled; notice saves do not.
SLOW_PERIODIC = {
    "SURVIVAL_TEST_SLOW_CHECKPOINT_SECONDS": "600",
    "SURVIVAL_TEST_SLOW_CHECKPOINT_REASONS": "periodic",
}


def _hparams(**given):
    return {name: given.get(name, param.default) for name, param in HPARAMS.items()}


@pytest.mark.parametrize("checkpoint_mb", [2, 20])
def test_checkpoint_size_follows_the_setting(checkpoint_mb, tmp_path):
    task = NumpyWide(_hparams(checkpoint_mb=checkpoint_mb), seed=0, data_dir=None)
    task.save(tmp_path)
    size = sum(path.stat().st_size for path in tmp_path.iterdir())
    assert abs(size - checkpoint_mb * 1_000_000) < 0.02 * checkpoint_mb * 1_000_000


def test_width_grows_with_the_size_and_shrinks_with_depth():
    assert width_for(10, 2) < width_for(100, 2) < width_for(1000, 2)
    assert width_for(100, 4) < width_for(100, 2)
    for mb, depth in [(1, 1), (100, 2), (1000, 3)]:
        size = 12 * parameter_count(width_for(mb, depth), depth)
        assert abs(size - mb * 1_000_000) < 0.01 * mb * 1_000_000


def test_snapshot_is_not_changed_by_later_steps(tmp_path):
    task = NumpyWide(_hparams(checkpoint_mb=1), seed=0, data_dir=None)
    task.train_step(0)
    (tmp_path / "sync").mkdir()
    (tmp_path / "async").mkdir()
    task.save(tmp_path / "sync")
    write = task.snapshot()
    task.train_step(1)  # changes the live arrays in place
    write(tmp_path / "async")
    names = sorted(p.name for p in (tmp_path / "sync").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "async").iterdir())
    for name in names:
        assert (tmp_path / "sync" / name).read_bytes() == (tmp_path / "async" / name).read_bytes()


@pytest.mark.slow
def test_notice_during_an_in_flight_save_commits_exactly_one_checkpoint(job_url, tmp_path):
    args = [*SMALL, "--train-steps", "30", "--checkpoint-steps", "5", "--metrics-steps", "1"]
    trainer = helpers.Trainer(
        "numpy_wide", job_url, *args, "--async-checkpoints", "--log-steps", "1", env=SLOW_PERIODIC
    )
    try:
        # ckpt-5 stalls before its manifest in the background; training goes on to step 10,
        # where the next periodic save falls due and waits for it.
        waiting = ("ckpt-5: files written, manifest pending", "due at step 10 while ckpt-5 is")
        seen: set[str] = set()
        trainer.wait_for(
            lambda line: bool(seen.update(w for w in waiting if w in line)) or len(seen) == 2
        )
        lease = JobDir.open(job_url).lease()
        assert "saved_step" not in lease  # nothing committed yet
        trainer.signal(signal.SIGTERM)
        assert trainer.finish() == exitcodes.NOTICE_SAVED, trainer.text()
    finally:
        trainer.kill()
    text = trainer.text()
    cancelled = text.index("cancelling the in-flight save of ckpt-5: step 10 supersedes it")
    assert cancelled < text.index("checkpoint ckpt-10 saved (notice)")
    assert "ckpt-5 saved" not in text

    job = JobDir.open(job_url)
    assert job.checkpoint_steps() == [10]  # the cancelled ckpt-5 left nothing behind
    assert job.read_manifest(10)["reason"] == "notice"
    [record] = job.attempts()
    assert record["end_reason"] == "notice-saved"
    assert record["end_step"] == record["notice_step"] == 10
    assert record["save_waits"] == 1 and record["saves_cancelled"] == 1
    assert record["async_checkpoints"] is True
    # The cancelled save's metrics were flushed with the notice checkpoint, once each.
    assert [row["step"] for row in job.metrics()] == list(range(1, 11))

    # Resumed (synchronous saves this time), the result is the uninterrupted run's, bit for bit.
    result = helpers.run("numpy_wide", job_url, *args, "--no-async-checkpoints")
    assert result.returncode == 0, result.stderr
    reference = str(tmp_path / "reference")
    result = helpers.run("numpy_wide", reference, *args, "--checkpoint-steps", "0")
    assert result.returncode == 0, result.stderr
    helpers.assert_same_arrays(
        helpers.export_arrays(job_url, "numpy"), helpers.export_arrays(reference, "numpy")
    )
    done = job.done()
    assert done["checkpoint_waits"] == 1 and done["lost_steps"] == 0


def test_a_failing_background_save_stops_the_attempt(tmp_path, monkeypatch, capsys):
    job_url = str(tmp_path / "job")

    def full(self, local_dir, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.root / "ckpt-2"))

    monkeypatch.setattr(LocalStore, "publish_dir", full)
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code = runner.main(
            NumpyWide,
            [*SMALL, "--job-dir", job_url, "--train-steps", "50", "--checkpoint-steps", "2"],
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == exitcodes.JOB_DIR_FULL
    err = capsys.readouterr().err
    assert "error: no space left for job dir" in err and "Traceback" not in err
    [record] = helpers.records(job_url, "attempts.jsonl")
    # The background writer failed; the training loop stopped on it well before the end.
    assert record["end_reason"] == "crashed" and record["end_step"] < 50
    assert record["async_checkpoints"] is True
