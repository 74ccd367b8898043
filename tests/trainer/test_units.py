"""Fast unit tests: hyperparameter parsing, the store, the lease, the metadata watcher, the
job dir CLI that startup.sh calls."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading

import pytest
from polling import wait_for

from tests.trainer import helpers
from trainer import gce
from trainer.hparams import HParam, HParamError, add_flags, differences, resolve
from trainer.jobdir import JobDir
from trainer.lease import Lease, LeaseHeld
from trainer.storage import PreconditionFailed, StoreError, open_store

SPEC = {"learning_rate": HParam(float, 0.01), "batch_size": HParam(int, 32)}


def _resolve(*argv: str) -> dict:
    parser = argparse.ArgumentParser()
    add_flags(parser, SPEC)
    return resolve(SPEC, parser.parse_args(argv))


def test_hparams_defaults_json_then_flags():
    assert _resolve() == {"learning_rate": 0.01, "batch_size": 32}
    assert _resolve("--hparams-json", '{"learning_rate": 1}') == {
        "learning_rate": 1.0,
        "batch_size": 32,
    }
    got = _resolve("--hparams-json", '{"batch_size": 8}', "--batch-size", "16")
    assert got["batch_size"] == 16


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"nope": 1}',
            "unknown hyperparameter(s) nope in --hparams-json; this example accepts: "
            "batch_size, learning_rate",
        ),
        ('{"batch_size": 1.5}', "'batch_size' must be int, got 1.5"),
        ('{"batch_size": true}', "'batch_size' must be int, got true"),
        ("[1]", "must be a JSON object"),
        ("{", "not valid JSON"),
    ],
)
def test_hparams_json_errors_are_clear(text, message):
    with pytest.raises(HParamError, match=None) as error:
        _resolve("--hparams-json", text)
    assert message in str(error.value)


def test_hparam_differences_list_each_key():
    lines = differences({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4})
    assert lines == ["b: job has 2, this run asks for 3", "c: job has null, this run asks for 4"]


def test_bad_hparams_json_exits_2_with_one_line():
    result = helpers.run("sklearn_digits", "/nonexistent/job", "--hparams-json", '{"nope": 1}')
    assert result.returncode == 2
    assert "unknown hyperparameter(s) nope" in result.stderr
    assert "Traceback" not in result.stderr


def test_store_rejects_unknown_schemes():
    with pytest.raises(StoreError, match="use a local path or gs://"):
        open_store("s3://bucket/x")


def test_conditional_writes(job_url):
    store = open_store(job_url)
    generation = store.write("LEASE", b"one", if_generation="0")
    with pytest.raises(PreconditionFailed):
        store.write("LEASE", b"two", if_generation="0")
    store.write("LEASE", b"three", if_generation=generation)
    with pytest.raises(PreconditionFailed):
        store.write("LEASE", b"four", if_generation=generation)
    assert store.read("LEASE") == b"three"


def test_only_one_of_two_racing_leases_wins(job_url):
    store = open_store(job_url)
    first = Lease(store, holder="vm-a", attempt=1, pid=1)
    second = Lease(store, holder="vm-b", attempt=1, pid=2)
    # Both decide the lease is free, then both write: the generation check lets one through.
    store_read = store.read_with_generation
    store.read_with_generation = lambda name: None
    try:
        first.acquire()
        with pytest.raises(LeaseHeld, match="at the same moment"):
            second.acquire()
    finally:
        store.read_with_generation = store_read
    assert json.loads(store.read("LEASE"))["holder"] == "vm-a"
    with pytest.raises(LeaseHeld, match="held by holder 'vm-a'"):
        second.acquire()


def test_probe_and_metadata_header(metadata_server, monkeypatch):
    monkeypatch.setenv("GCE_METADATA_HOST", metadata_server.host)
    assert gce.probe()
    assert gce.holder_name(True) == "test-vm"
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    assert not gce.probe()


def test_watcher_long_polls_and_fires_once(metadata_server, monkeypatch):
    monkeypatch.setenv("GCE_METADATA_HOST", metadata_server.host)
    fired = threading.Event()
    kinds = []

    def on_notice(kind):
        kinds.append(kind)
        fired.set()

    watcher = gce.NoticeWatcher("instance/preempted", "TRUE", "preempted", on_notice)
    watcher.start()
    try:
        deadline_polls = 2  # the first answer (last_etag=0), then it hangs waiting for a change
        wait_for(
            lambda: len(metadata_server.requests) >= deadline_polls,
            30,
            "the watcher's first two metadata requests",
        )
        assert not fired.is_set()
        metadata_server.set("instance/preempted", "TRUE")
        assert fired.wait(30)
    finally:
        watcher.stop()
    assert kinds == ["preempted"]
    assert len(metadata_server.requests) <= 4


def _jobdir_cli(*argv: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainer.jobdir", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=helpers.trainer_env(env),
        cwd=helpers.REPO,
        check=False,
    )


def test_jobdir_cli(job_url, tmp_path):
    assert _jobdir_cli("is-done", job_url).returncode == 1
    status = json.loads(_jobdir_cli("status", job_url).stdout)
    assert status == {
        "done": False,
        "failed": False,
        "failed_reason": None,
        "step": 0,
        "attempts": 0,
        "notices": 0,
        "last_checkpoint_unix": None,
    }

    log_file = tmp_path / "attempt.log"
    log_file.write_text("line with $(dangerous) `text`\n")
    assert (
        _jobdir_cli("upload-log", job_url, str(log_file), "--name", "attempt-1.log").returncode == 0
    )
    assert JobDir.open(job_url).store.read("logs/attempt-1.log") == log_file.read_bytes()
    bad = _jobdir_cli("upload-log", job_url, str(log_file), "--name", "../x")
    assert bad.returncode == 2 and "bad log name" in bad.stderr

    reason = "boot failed; rm -rf / $(whoami)"
    assert _jobdir_cli("mark-failed", job_url, "--reason", reason, "--attempt", "3").returncode == 0
    failed = JobDir.open(job_url).failed()
    assert failed["reason"] == reason and failed["attempt"] == 3

    assert helpers.run("sklearn_digits", job_url, "--train-steps", "20").returncode == 0
    assert _jobdir_cli("is-done", job_url).returncode == 0
    status = json.loads(_jobdir_cli("status", job_url).stdout)
    assert status["done"] and status["step"] == 20 and status["attempts"] == 1
    assert status["last_checkpoint_unix"] > 0
