"""The trainer's data safety: checkpoint names from the job dir cannot reach outside it, the
LEASE names its holder beyond a pid and survives lost replies, nothing piles up after kills,
pruning keeps valid checkpoints, and an unusable job dir is a one-line error with its own code."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.trainer import helpers
from tests.trainer.conftest import BUCKET
from tests.trainer.fault_proxy import FaultProxy
from trainer import exitcodes, runner
from trainer.examples.sklearn_digits import SklearnDigits
from trainer.jobdir import JobDir
from trainer.lease import Lease, LeaseHeld, process_identity, process_start_ticks
from trainer.scratch import Scratch, sweep
from trainer.storage import LocalStore, StoreError, _gcs_client, open_store

PAYLOAD = b"not a model, but the checksum matches"


def _gs_url(prefix: str = "job") -> str:
    from google.api_core.exceptions import Conflict

    with contextlib.suppress(Conflict):  # made by an earlier test of the session
        _gcs_client().create_bucket(BUCKET)
    return f"gs://{BUCKET}/{prefix}-{uuid.uuid4().hex[:8]}"


def _fill(directory: Path) -> None:
    (directory / "model.bin").write_bytes(os.urandom(64))


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# ----- checkpoint names ---------------------------------------------------------------------


def _escaping_names(tmp_path: Path) -> list[str]:
    return ["../../escaped", "sub/../../../escaped", str(tmp_path / "escaped-absolute")]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_manifest_names_outside_the_checkpoint_make_it_invalid_before_any_write(
    job_url, tmp_path, which, caplog
):
    rel = _escaping_names(tmp_path)[which]
    job = JobDir.open(job_url)
    job.write_checkpoint(5, _fill, {"reason": "periodic"})
    manifest = job.read_manifest(5)
    manifest["files"] = {rel: {"sha256": hashlib.sha256(PAYLOAD).hexdigest()}}
    job.store.write("ckpt-5/manifest.json", json.dumps(manifest).encode())
    # Real Cloud Storage stores an object under that very name for whoever can write the
    # bucket (the emulator refuses it), so no download may even start.
    downloads = []

    def download(name, local_path):
        downloads.append((name, local_path))
        raise FileNotFoundError(name)

    job.store.download = download

    local_dir = tmp_path / "a" / "b" / "c"
    local_dir.mkdir(parents=True)
    assert job.restore_latest(local_dir) is None
    assert downloads == []
    assert "not a relative, normalised path" in caplog.text
    assert [p for p in tmp_path.rglob("escaped*")] == []
    assert list(local_dir.iterdir()) == []  # nothing unverified left behind


def test_gcs_store_refuses_parent_and_absolute_names(gcs_env):
    store = open_store(_gs_url())
    for name in ("../x", "a/../../x", "/x"):
        with pytest.raises(StoreError, match="bad object name"):
            store.write(name, b"x")
        with pytest.raises(StoreError, match="bad object name"):
            store.read(name)
    assert store.list() == []


def test_a_checkpoint_that_fails_its_check_leaves_nothing_in_the_staging_dir(job_url, tmp_path):
    job = JobDir.open(job_url)
    job.write_checkpoint(1, _fill, {"reason": "periodic"})
    job.write_checkpoint(2, _fill, {"reason": "periodic"})
    job.store.write("ckpt-2/model.bin", b"corrupt")
    (tmp_path / "restore").mkdir()
    manifest = JobDir.open(job_url).restore_latest(tmp_path / "restore")
    assert manifest["step"] == 1
    assert [p.name for p in (tmp_path / "restore").iterdir()] == [Path(manifest["local_path"]).name]


# ----- LEASE holder identity ------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _lease_body(**fields) -> bytes:
    return json.dumps({"attempt": 1, "step": 0, "started_unix": 0.0, **fields}).encode()


def test_a_reused_pid_does_not_keep_a_dead_holder(tmp_path):
    store = open_store(str(tmp_path / "job"))
    clock = Clock(1_000_000.0)
    me = process_identity()
    # The dead holder had our pid, but another process started at another time: the kernel
    # gave its pid to us, an unrelated process, since.
    store.write(
        "LEASE",
        _lease_body(
            holder="vm-a",
            pid=os.getpid(),
            boot_id=me["boot_id"],
            pid_start=me["pid_start"] + 1,
            heartbeat_unix=clock.now,
        ),
    )
    lease = Lease(store, holder="vm-a", attempt=2, clock=clock, stale_seconds=300)
    lease.acquire()
    assert lease.previous["pid_start"] == me["pid_start"] + 1
    assert json.loads(store.read("LEASE"))["attempt"] == 2


def test_a_live_holder_in_this_boot_keeps_the_lease(tmp_path):
    store = open_store(str(tmp_path / "job"))
    clock = Clock(1_000_000.0)
    Lease(store, holder="vm-a", attempt=1, clock=clock).acquire()
    with pytest.raises(LeaseHeld, match="held by holder 'vm-a'"):
        Lease(store, holder="vm-a", attempt=2, clock=clock, pid=_dead_pid()).acquire()


def test_a_holder_from_another_boot_waits_for_the_heartbeat_age(tmp_path):
    store = open_store(str(tmp_path / "job"))
    clock = Clock(1_000_000.0)
    store.write(
        "LEASE",
        _lease_body(
            holder="vm-a",
            pid=_dead_pid(),
            boot_id="another-boot",
            pid_start=1,
            heartbeat_unix=clock.now,
        ),
    )
    lease = Lease(store, holder="vm-a", attempt=2, clock=clock, stale_seconds=300)
    with pytest.raises(LeaseHeld):
        lease.acquire()  # its pid says nothing about a process of another boot
    clock.now += 300
    lease.acquire()
    assert lease.previous["boot_id"] == "another-boot"


def test_process_start_ticks_is_field_22():
    fields = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
    assert process_start_ticks(os.getpid()) == int(fields[22 - 3])
    assert process_start_ticks(_dead_pid()) is None


# ----- LEASE writes whose reply is lost -------------------------------------------------------


def _is_lease_upload(method: str, path: str, body: bytes) -> bool:
    return method == "POST" and "/upload/" in path and re.search(rb'"name": ?"[^"]*/LEASE"', body)


@pytest.fixture
def proxy(gcs_env, fake_gcs, monkeypatch):
    proxy = FaultProxy(fake_gcs).start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    try:
        yield proxy
    finally:
        proxy.stop()


def test_a_lease_write_whose_reply_was_lost_is_not_a_lost_lease(gcs_env, proxy):
    url = _gs_url()
    store = open_store(url)
    lease = Lease(store, holder="vm-a", attempt=1)

    proxy.drop_reply_once(_is_lease_upload)
    lease.acquire()  # the retry gets 412: the object holds our write
    assert len(proxy.dropped) == 1
    uploads = [s for s in proxy.seen if _is_lease_upload(*s)]
    assert len(uploads) == 2, "the client did not retry the lost upload"
    body, generation = store.read_with_generation("LEASE")
    assert lease.generation == generation and json.loads(body)["holder"] == "vm-a"

    proxy.drop_reply_once(_is_lease_upload)
    assert lease.heartbeat(step=7)
    assert not lease.lost.is_set()
    assert len(proxy.dropped) == 2
    assert json.loads(store.read("LEASE"))["step"] == 7
    assert lease.heartbeat(step=8)  # the generation we hold is the current one

    # Someone else's write is still a lost lease.
    store.write("LEASE", _lease_body(holder="vm-b", pid=1, heartbeat_unix=time.time()))
    assert not lease.heartbeat(step=9)
    assert lease.lost.is_set()


# ----- leftovers --------------------------------------------------------------------------------


def test_local_prune_leaves_no_empty_checkpoint_dirs(tmp_path):
    job = JobDir.open(str(tmp_path / "job"))
    for step in range(1, 6):
        job.write_checkpoint(step, _fill, {"reason": "periodic"})
        job.prune_checkpoints(3)
    dirs = sorted(p.name for p in (tmp_path / "job").iterdir() if p.name.startswith("ckpt-"))
    assert dirs == ["ckpt-3", "ckpt-4", "ckpt-5"]


def test_a_corrupt_checkpoint_does_not_take_a_kept_slot(job_url):
    job = JobDir.open(job_url)
    for step in range(1, 5):
        job.write_checkpoint(step, _fill, {"reason": "periodic"})
    job.store.write("ckpt-3/model.bin", b"corrupt")
    JobDir.open(job_url).prune_checkpoints(3)  # a new process: nothing verified yet
    assert job.checkpoint_steps() == [4, 2, 1]


def test_scratch_holds_temp_files_and_sweeps_only_dead_owners(tmp_path):
    root = tmp_path / "scratch"
    root.mkdir()
    me = process_identity()
    boot = me["boot_id"].replace("-", "")
    dead = root / f"{boot}-{_dead_pid()}-1-abcd"
    other_boot = root / f"{'0' * 32}-{os.getpid()}-{me['pid_start']}-abcd"
    alive = root / f"{boot}-{os.getpid()}-{me['pid_start']}-abcd"
    foreign = root / "not-ours"
    for path in (dead, other_boot, alive, foreign):
        path.mkdir()
    assert sorted(sweep(root)) == sorted([dead, other_boot])
    assert sorted(p.name for p in root.iterdir()) == sorted([alive.name, foreign.name])

    autograph = {"prefix": "__autograph_generated_file", "delete": False}
    with Scratch(root) as path, tempfile.NamedTemporaryFile(**autograph) as f:
        assert Path(f.name).parent == path / "tmp"
    assert not path.exists()
    assert tempfile.gettempdir() != str(path / "tmp")


@pytest.mark.slow
def test_a_killed_trainer_leaves_nothing_the_next_one_does_not_clear(job_url, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"TMPDIR": str(tmp)}
    args = ["--train-steps", "1000000", "--checkpoint-steps", "5", "--log-steps", "1"]
    trainer = helpers.Trainer("sklearn_digits", job_url, *args, env=env)
    try:
        trainer.wait_for(lambda line: "checkpoint ckpt-5 saved" in line)
        trainer.signal(signal.SIGKILL)
        trainer.finish()
    finally:
        trainer.kill()
    store = JobDir.open(job_url).store
    result = helpers.run("sklearn_digits", job_url, "--train-steps", "12", env=env)
    assert result.returncode == 0, result.stderr
    assert "resumed from ckpt-5" in result.stderr
    assert [p.name for p in tmp.iterdir() if p.name.startswith("survival-")] == []
    if isinstance(store, LocalStore):
        assert [p.name for p in Path(store.root).iterdir() if p.name.startswith(".")] == []


# ----- an unusable job dir --------------------------------------------------------------------


def _one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_a_missing_bucket_is_a_one_line_error(gcs_env):
    url = f"gs://no-such-bucket-{uuid.uuid4().hex[:8]}/job"
    result = helpers.run("sklearn_digits", url, "--train-steps", "5")
    assert "does not exist" in _one_line_error(result.stderr)
    assert result.returncode == exitcodes.JOB_DIR_MISSING, result.stderr


@pytest.mark.skipif(os.geteuid() != 0 and os.name != "posix", reason="needs POSIX permissions")
def test_a_read_only_job_dir_is_a_one_line_error():
    # Not under pytest's 0700 tmp dirs: as root the trainer runs as nobody, for whom the job
    # dir (root's, 0755) is read-only.
    root = Path(tempfile.mkdtemp(prefix="survival-readonly-"))
    try:
        job = root / "job"
        job.mkdir()
        root.chmod(0o755)
        job.chmod(0o555)
        command = helpers.command("sklearn_digits", str(job), "--train-steps", "5")
        if os.geteuid() == 0:
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        result = subprocess.run(
            command,
            env=helpers.trainer_env({"HOME": str(root)}),
            capture_output=True,
            text=True,
            timeout=helpers.WAIT_SECONDS,
            cwd=helpers.REPO,
            check=False,
        )
        assert f"cannot write job dir {job}" in _one_line_error(result.stderr)
        assert result.returncode == exitcodes.JOB_DIR_DENIED, result.stderr
    finally:
        job.chmod(0o755)
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def test_a_full_job_dir_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    job_url = str(tmp_path / "job")

    def full(self, local_dir, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.root / "ckpt-5"))

    monkeypatch.setattr(LocalStore, "publish_dir", full)
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code = runner.main(
            SklearnDigits, ["--job-dir", job_url, "--train-steps", "10", "--checkpoint-steps", "5"]
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    stderr = capsys.readouterr().err
    assert "no space left for job dir" in _one_line_error(stderr)
    assert code == exitcodes.JOB_DIR_FULL, stderr
    job = JobDir.open(job_url)
    assert [r["end_reason"] for r in job.attempts()] == ["crashed"]
    assert job.lease() is None  # released: the next attempt need not wait for it
