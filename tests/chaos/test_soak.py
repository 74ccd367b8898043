"""The chaos soak: ONE job on localgce through `--soak N` random faults (default 10), drawn from
tests/chaos/helpers.FAULTS with one printed seed (`--soak-seed` replays it). It must end DONE
with the model of an uninterrupted run, bit for bit, and with attempt records that say exactly
what was done to it; then `invoke down --all` and `invoke localgce.stop` must leave no process,
listener or temporary directory of the kit behind.

Everything is the real thing: `invoke train`/`invoke watch` subprocesses supervise, the daemon
boots guests that run startup/startup.sh and the trainer from the pushed code. The soak's image
is this environment's Python behind a wrapper that sends the guest's Cloud Storage traffic
through a fault proxy (tests/trainer/fault_proxy.py, for the lost replies) and paces checkpoints
(the trainer's SURVIVAL_TEST_SLOW_CHECKPOINT_SECONDS hook), so that a scikit-learn job of a few
hundred steps is still running when each fault comes.

A fault that kills the trainer (SIGKILL, a corrupt checkpoint, SIGSTOP, the daemon's death) first
freezes it with SIGSTOP and reads the LEASE and the checkpoints until they stop changing. Where it
will resume is then known exactly; how far it got is known within one checkpoint interval: at
least its last heartbeat, at most the checkpoint after its newest manifest (it cannot train past
a save that has not finished). A killed attempt's record must fall in that range, so the lost
steps of each fault are predicted, not measured after the fact, and the kit's figure is shown to
be the lower bound it claims to be.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from polling import wait_for

from localgce import daemon
from survival.backend import compute_for, ensure_bucket, storage_client
from survival.config import LOCAL_JOB_BUCKET, LOCAL_PROJECT
from survival.progress import EVENT_RESTART
from tests.chaos import helpers
from tests.chaos.helpers import CORRUPT, CTRL_C, DAEMON, DROP, HANG, KILL, PREEMPT
from tests.trainer.fault_proxy import FaultProxy
from trainer.jobdir import (
    END_CRASHED,
    END_NOTICE_SAVED,
    EVENT_HUNG_RESTART,
    STOP_CRASHED,
    STOP_HUNG,
    STOP_PREEMPTED,
    AttemptStats,
    JobDir,
)
from trainer.lease import pid_alive
from trainer.storage import GcsStore

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NAME = "soak"
ZONE = "us-central1-a"  # the first of survival.zones; the soak never exhausts a zone
JOB_URL = f"gs://{LOCAL_JOB_BUCKET}/jobs/{NAME}"
MODULE = "trainer.examples.sklearn_digits"
MODEL_FILE = "model.skops"
CHECKPOINT_STEPS = 5
# Enough steps that the job is still training when the last fault comes: a fault waits for one
# checkpoint of the attempt it hits, and a Ctrl-C lets the trainer run while `invoke watch` starts.
STEPS_PER_FAULT = 25
EXTRA_STEPS = 50
SLOW_CHECKPOINT_SECONDS = "0.2"  # paces the guest's trainer: at most 25 steps a second
HEARTBEAT_STALE_SECONDS = "10"  # the smallest survival.heartbeat_stale_seconds allowed
# Spot grace window: ample for a notice checkpoint, short for a SIGSTOPped trainer to be killed.
KNOBS = {"grace_spot_seconds": 6.0, "grace_standard_seconds": 6.0}
WAIT_SECONDS = 120.0
INTERRUPTED_EXIT = 130
# The end each fault gives the attempt it hits, as attempts.jsonl records it.
END_REASON = {PREEMPT: END_NOTICE_SAVED, KILL: END_CRASHED, CORRUPT: END_CRASHED,
              HANG: END_CRASHED, DAEMON: END_CRASHED}  # fmt: skip
# ... and as AttemptStats.stop_causes counts it.
STOP_CAUSE = {PREEMPT: STOP_PREEMPTED, KILL: STOP_CRASHED, CORRUPT: STOP_CRASHED, HANG: STOP_HUNG,
              DAEMON: STOP_CRASHED}  # fmt: skip
WRAPPER = """#!/bin/sh
# The chaos soak's image: this test run's Python, its Cloud Storage traffic through the fault
# proxy, its checkpoints paced so that faults land mid-run.
export STORAGE_EMULATOR_HOST={proxy}
export SURVIVAL_TEST_SLOW_CHECKPOINT_SECONDS={slow}
exec {python} "$@"
"""


@dataclass
class Ended:
    """An attempt a fault ended, and what the records must say about it."""

    fault: str
    attempt: int
    resume_step: int  # the step the next attempt resumes from
    lost_steps_min: int  # from the frozen trainer's last heartbeat
    lost_steps_max: int  # it cannot have passed the save after its newest manifest


@dataclass
class Frozen:
    pid: int
    lease: dict
    checkpoints: list[tuple[int, int]]  # (step, manifest generation) of valid ones, newest first


@dataclass
class Soak:
    root: Path
    rng: random.Random
    state: Path = field(init=False)
    tmp: Path = field(init=False)
    endpoints: dict = field(default_factory=dict)
    ports: set[int] = field(default_factory=set)  # every port the kit listened on
    supervisor: subprocess.Popen | None = None
    logs: list[Path] = field(default_factory=list)
    corrupted: set[tuple[int, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.state = self.root / "state"
        # The TMPDIR of every process of this run, so that their leftovers can be found.
        self.tmp = self.root / "tmp"
        self.tmp.mkdir()
        self.proxy = FaultProxy("http://127.0.0.1:1").start()
        # Killed trainers and a dead upstream reset connections: that is the soak's doing, and
        # socketserver would print a traceback for each.
        self.proxy.server.handle_error = lambda request, client_address: None
        self.ports.add(int(self.proxy.url.rsplit(":", 1)[1]))

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "TMPDIR": str(self.tmp),
            "INVOKE_SURVIVAL_LOCAL_STATE_DIR": str(self.state),
            "INVOKE_SURVIVAL_HEARTBEAT_STALE_SECONDS": HEARTBEAT_STALE_SECONDS,
        }

    # --- the emulator ------------------------------------------------------------------------
    def start_daemon(self) -> None:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("TMPDIR", str(self.tmp))  # the daemon and its children inherit it
            self.endpoints = daemon.start(self.state, knobs=KNOBS, ssh_enabled=False)
        for key in ("compute", "storage"):
            self.ports.add(int(self.endpoints[key].rsplit(":", 1)[1]))
        host, port = self.endpoints["storage"].removeprefix("http://").rsplit(":", 1)
        self.proxy.upstream = (host, int(port))
        self.storage = storage_client(LOCAL_PROJECT, self.endpoints["storage"])
        self.bucket = self.storage.bucket(LOCAL_JOB_BUCKET)
        self.job = JobDir(GcsStore(JOB_URL, client=self.storage))
        self.compute = compute_for(LOCAL_PROJECT, self.endpoints)

    def register_image(self) -> None:
        from google.cloud import compute_v1

        from localgce.client import compute_client_options

        image = self.root / "image"
        python = image / "venv" / "bin" / "python"
        python.parent.mkdir(parents=True)
        python.write_text(
            WRAPPER.format(
                proxy=self.proxy.url, slow=SLOW_CHECKPOINT_SECONDS, python=sys.executable
            )
        )
        python.chmod(0o755)
        (python.parent / "python3").symlink_to("python")  # the name startup.sh looks for
        images = compute_v1.ImagesClient(**compute_client_options(self.endpoints))
        resource = compute_v1.Image(name="soak-image", family="gce-survival-kit",
                                    raw_disk=compute_v1.RawDisk(source=str(image)))  # fmt: skip
        images.insert(project=LOCAL_PROJECT, image_resource=resource).result(timeout=120)
        ensure_bucket(self.storage, LOCAL_JOB_BUCKET, create=True)

    # --- the supervisor ----------------------------------------------------------------------
    def start_supervisor(self, *args: str) -> None:
        log = self.root / f"supervisor-{len(self.logs) + 1}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            self.supervisor = subprocess.Popen(
                [sys.executable, "-m", "invoke", *args], cwd=REPO, env=self.env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def tail(self) -> str:
        return self.logs[-1].read_text(errors="replace")[-3000:] if self.logs else ""

    def check_supervisor(self) -> None:
        if self.supervisor is not None and self.supervisor.poll() is not None:
            raise AssertionError(
                f"the supervisor exited with {self.supervisor.returncode}:\n{self.tail()}"
            )

    def lock_holder(self) -> int | None:
        try:
            return int((self.state / "jobs" / f"{NAME}.lock").read_text().strip() or 0)
        except (OSError, ValueError):
            return None

    # --- the job dir -------------------------------------------------------------------------
    def lease(self) -> dict | None:
        try:
            return self.job.lease()
        except Exception:  # the emulator may be restarting: not known now, ask again
            return None

    def valid_checkpoints(self) -> list[tuple[int, int]]:
        """(step, manifest generation) of every checkpoint with a manifest (written last) that
        this soak did not corrupt, newest first."""
        found = []
        for blob in self.storage.list_blobs(LOCAL_JOB_BUCKET, prefix=f"jobs/{NAME}/ckpt-"):
            match = re.fullmatch(rf"jobs/{NAME}/ckpt-(\d+)/manifest\.json", blob.name)
            if match and (int(match.group(1)), blob.generation) not in self.corrupted:
                found.append((int(match.group(1)), blob.generation))
        return sorted(found, reverse=True)

    def wait_running(self, after_attempt: int, checkpoints: int = 1) -> dict:
        """The LEASE of a trainer of an attempt after ``after_attempt`` that has saved a
        checkpoint since it started, with at least ``checkpoints`` valid ones in the job dir."""
        seen: list = [None]

        def running() -> dict | None:
            self.check_supervisor()
            try:
                done = self.job.done()
                lease = seen[0] = self.job.lease()
                valid = len(self.valid_checkpoints())
            except Exception:  # the emulator may be restarting: ask again
                return None
            if done is not None:
                raise AssertionError(
                    "the job finished before every fault was injected: raise STEPS_PER_FAULT"
                )
            # resumed_from_step appears once the trainer has restored (not at the take-over).
            if not lease or int(lease.get("attempt") or 0) <= after_attempt:
                return None
            if lease.get("resumed_from_step") is None:
                return None
            progressed = (
                int(lease.get("step") or 0)
                >= int(lease.get("resumed_from_step") or 0) + CHECKPOINT_STEPS
            )
            alive = helpers.process_state(int(lease["pid"])) not in (None, "Z", "T")
            return lease if progressed and alive and valid >= checkpoints else None

        return wait_for(
            running, WAIT_SECONDS, max_delay_seconds=0.2,
            what=lambda: f"attempt > {after_attempt} training; LEASE {seen[0]}\n{self.tail()}",
        )  # fmt: skip

    def freeze(self, lease: dict) -> Frozen:
        """SIGSTOP the trainer, then read LEASE and checkpoints until two reads agree (a write
        sent just before the stop may still land): what it did and where it resumes."""
        pid = int(lease["pid"])
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: helpers.process_state(pid) == "T", 10, f"trainer {pid} stopped")
        reads: list = []

        def settled():
            reads.append((self.job.lease(), self.valid_checkpoints()))
            return len(reads) > 1 and reads[-1] == reads[-2]

        wait_for(settled, 30, "the job dir to settle after SIGSTOP")
        frozen_lease, checkpoints = reads[-1]
        assert frozen_lease is not None and int(frozen_lease["pid"]) == pid, frozen_lease
        return Frozen(pid, frozen_lease, checkpoints)

    # --- faults ------------------------------------------------------------------------------
    def inject(self, fault: str, lease: dict, recover: bool = True) -> Ended | None:
        """Do ``fault`` to the running attempt of ``lease``. ``recover``: wait until the job
        trains again and return what the records must say; otherwise return at once, with the
        kit in the middle of its recovery (None)."""
        attempt = int(lease["attempt"])
        if fault == PREEMPT:
            self.compute.preempt_instance(ZONE, NAME)
            if not recover:
                return None
            after = self.wait_running(attempt)
            step = int(after["resumed_from_step"])
            return Ended(fault, attempt, step, 0, 0)
        if fault == CTRL_C:
            supervisor = self.supervisor
            # In its loop (it holds the job's lock), not still starting up.
            wait_for(lambda: self.lock_holder() == supervisor.pid, WAIT_SECONDS, "the lock")
            # The trainer waits while no supervisor runs (its heartbeat is not watched then), so
            # the soak's step budget does not depend on how fast `invoke watch` starts.
            pid = int(lease["pid"])
            os.kill(pid, signal.SIGSTOP)
            supervisor.send_signal(signal.SIGINT)
            assert supervisor.wait(timeout=60) == INTERRUPTED_EXIT, self.tail()
            assert f"interrupted: {NAME} keeps running" in self.tail(), self.tail()
            self.start_supervisor("watch", NAME)
            watcher = self.supervisor
            wait_for(lambda: self.lock_holder() == watcher.pid, WAIT_SECONDS, "the watch's lock")
            os.kill(pid, signal.SIGCONT)
            return None
        if fault == DROP:
            dropped = len(self.proxy.dropped)
            lease_object = f"jobs/{NAME}/LEASE"

            def lease_write(method: str, path: str, body: bytes) -> bool:
                # A conditional write (heartbeat): the trainer must recognise its own write.
                return method in ("POST", "PUT") and (
                    lease_object.encode() in body or lease_object.replace("/", "%2F") in path
                )

            self.proxy.drop_reply_once(lease_write)
            wait_for(lambda: len(self.proxy.dropped) > dropped, WAIT_SECONDS, "a dropped reply")
            step = int(self.job.lease()["step"])

            def still_training():
                now = self.lease() or {}
                if int(now.get("attempt") or 0) != attempt:
                    raise AssertionError(f"a lost reply ended attempt {attempt}: {now}")
                return int(now.get("step") or 0) >= step + CHECKPOINT_STEPS

            wait_for(still_training, WAIT_SECONDS, "training to go on after a lost reply")
            return None
        frozen = self.freeze(lease)
        steps = [step for step, _ in frozen.checkpoints]
        resume = steps[0]
        if fault == KILL:
            os.kill(frozen.pid, signal.SIGKILL)
        elif fault == CORRUPT:
            assert len(steps) >= 2, frozen.checkpoints
            blob = self.bucket.blob(f"jobs/{NAME}/ckpt-{steps[0]}/{MODEL_FILE}")
            data = bytearray(blob.download_as_bytes())
            index = self.rng.randrange(len(data))
            data[index] ^= 0xFF
            blob.upload_from_string(bytes(data))
            self.corrupted.add(frozen.checkpoints[0])
            resume = steps[1]
            os.kill(frozen.pid, signal.SIGKILL)
        elif fault == DAEMON:
            pid = self.endpoints["pid"]
            reconnects = self.log_text().count("reconnected")
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not pid_alive(pid), 30, f"localgce {pid} gone")
            self.start_daemon()
            # The supervisor must find the new daemon before the next fault: two restarts in
            # one of its backoffs would be one reconnect, and the count below would not tell.
            wait_for(
                lambda: (
                    self.check_supervisor() or self.log_text().count("reconnected") > reconnects
                ),
                120,
                "the supervisor to reconnect to the restarted localgce",
            )
        # HANG: left stopped; the supervisor must find it hung and restart the VM.
        if not recover:
            return None
        heartbeat_step = int(frozen.lease.get("step") or 0)
        furthest_step = max(heartbeat_step, steps[0] + CHECKPOINT_STEPS)
        self.wait_running(attempt)
        return Ended(
            fault, attempt, resume, max(0, heartbeat_step - resume), furthest_step - resume
        )


def _reference_run(soak: Soak, steps: int, job_dir: Path) -> subprocess.Popen:
    """The same job, uninterrupted, in a local job dir: run beside the soak, which mostly waits."""
    return subprocess.Popen(
        [sys.executable, "-m", MODULE, "--job-dir", str(job_dir), "--train-steps", str(steps),
         "--checkpoint-steps", str(CHECKPOINT_STEPS), "--seed", "0", "--hparams-json", "{}"],
        cwd=REPO, env=soak.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip


def _load_model(path: Path):
    import skops.io

    from trainer.examples.sklearn_digits import TRUSTED_TYPES

    return skops.io.load(path, trusted=TRUSTED_TYPES)


def _invoke(soak: Soak, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=REPO, env=soak.env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _new_soak(rng: random.Random) -> Soak:
    # Not under pytest's 0700 tmp dirs: the guest may drop to an unprivileged user.
    soak = Soak(Path(tempfile.mkdtemp(prefix="survival-chaos-")), rng)
    soak.root.chmod(0o755)
    return soak


def _train(soak: Soak, steps: int) -> None:
    soak.start_supervisor(
        "train", "--branch", "chaos-soak", "--example", "sklearn_digits", "--name", NAME,
        "--train-steps", str(steps), "--checkpoint-steps", str(CHECKPOINT_STEPS),
    )  # fmt: skip


@pytest.mark.parametrize("fault", helpers.FAULTS)
def test_down_and_stop_leave_nothing_of_the_kit_in_the_middle_of_a_fault(fault):
    """`invoke down --all && invoke localgce.stop` right after each fault, while the kit is
    still recovering from it (a trainer SIGSTOPped or saving, a daemon just restarted, a
    supervisor just replaced by `watch`): no process, listener or temp dir may be left. The
    supervisor, told by `down`, must stop by itself."""
    soak = _new_soak(random.Random(0))
    try:
        soak.start_daemon()
        soak.register_image()
        _train(soak, STEPS_PER_FAULT * 4)
        lease = soak.wait_running(0, checkpoints=2 if fault == CORRUPT else 1)
        soak.inject(fault, lease, recover=False)
        supervisor = soak.supervisor
        down = _invoke(soak, "down", "--all")
        assert down.returncode == 0, down.stdout + down.stderr
        assert supervisor.wait(timeout=WAIT_SECONDS) == 0, soak.tail()
    finally:
        with contextlib.suppress(Exception):
            if soak.supervisor is not None and soak.supervisor.poll() is None:
                soak.supervisor.kill()
                soak.supervisor.wait(timeout=30)
        _shut_down_and_check_leftovers(soak)


def test_one_job_survives_random_faults_and_ends_as_an_uninterrupted_run(
    soak_faults, soak_seed, tmp_path
):
    started = time.monotonic()
    rng = random.Random(soak_seed)  # replayable fault draws, not secrets
    plan = helpers.draw_faults(soak_faults, rng)
    print(f"chaos soak: faults {plan}")
    steps = STEPS_PER_FAULT * soak_faults + EXTRA_STEPS
    soak = _new_soak(rng)
    reference = None
    try:
        soak.start_daemon()
        soak.register_image()
        reference = _reference_run(soak, steps, tmp_path / "reference")
        _train(soak, steps)
        ended: list[Ended] = []
        last_ended = 0  # the newest attempt a fault ended; a Ctrl-C or lost reply ends none
        for number, fault in enumerate(plan, 1):
            lease = soak.wait_running(last_ended, checkpoints=2 if fault == CORRUPT else 1)
            print(f"chaos soak: fault {number}/{len(plan)}: {fault} at step {lease['step']} "
                  f"of attempt {lease['attempt']} ({time.monotonic() - started:.0f}s)")  # fmt: skip
            result = soak.inject(fault, lease)
            if result is not None:
                ended.append(result)
                last_ended = result.attempt
            soak.proxy.seen.clear()  # bodies of every request: keep the memory flat

        assert soak.supervisor.wait(timeout=600) == 0, soak.tail()
        assert f"job {NAME}: DONE" in soak.tail(), soak.tail()
        _check_records(soak, plan, ended, steps)
        _check_model(soak, reference, tmp_path)
        print(f"chaos soak: DONE after {len(plan)} faults in {time.monotonic() - started:.0f}s")
    finally:
        with contextlib.suppress(Exception):
            if soak.supervisor is not None and soak.supervisor.poll() is None:
                soak.supervisor.kill()
                soak.supervisor.wait(timeout=30)
        if reference is not None and reference.poll() is None:
            reference.kill()
            reference.wait(timeout=30)
        _shut_down_and_check_leftovers(soak)


def _check_records(soak: Soak, plan: list[str], ended: list[Ended], steps: int) -> None:
    records = soak.job.attempts()
    events = soak.job.events()
    stats = AttemptStats.from_records(records, events)  # the notes name hung attempts
    injected = Counter(e.fault for e in ended)
    assert stats.attempts == 1 + len(ended), records
    assert stats.preemptions == stats.preempted == injected[PREEMPT], records
    assert stats.notices == injected[PREEMPT], records
    assert stats.crashes == sum(injected[f] for f in (KILL, CORRUPT, HANG, DAEMON)), records
    table = [
        (r.get("attempt"), r.get("resumed_from_step"), r.get("end_step"), r.get("end_step_sources"))
        for r in records
    ]
    lost_min, lost_max = sum(e.lost_steps_min for e in ended), sum(e.lost_steps_max for e in ended)
    assert lost_min <= stats.lost_steps <= lost_max, (ended, table)
    # Only a killed attempt's figure is uncertain, and the summary says so ("≥ N").
    assert stats.lost_steps_lower_bound == any(e.fault != PREEMPT for e in ended), table
    causes = Counter(stats.stop_causes)
    wanted = Counter(STOP_CAUSE[e.fault] for e in ended)
    for cause, count in wanted.items():
        assert causes[cause] == count, (cause, stats.stop_causes)
    assert sum(causes.values()) == len(ended), stats.stop_causes
    by_attempt = {int(r["attempt"]): r for r in records}
    numbers = sorted(by_attempt)
    for e in ended:
        record = by_attempt[e.attempt]
        assert record["end_reason"] == END_REASON[e.fault], (e, record)
        following = by_attempt[numbers[numbers.index(e.attempt) + 1]]
        assert following["resumed_from_step"] == e.resume_step, (e, following)
        lost = max(0, int(record["end_step"]) - e.resume_step)
        assert e.lost_steps_min <= lost <= e.lost_steps_max, (e, record)

    restarts = sum(1 for ev in events if ev.get("event") == EVENT_RESTART)
    assert restarts == injected[PREEMPT] + injected[HANG], events
    hung = [ev for ev in events if ev.get("event") == EVENT_HUNG_RESTART]
    assert len(hung) == injected[HANG], events
    log = soak.log_text()
    assert log.count("interrupted: ") == plan.count(CTRL_C)
    assert log.count("reconnected") == injected[DAEMON], log[-3000:]
    assert len(soak.proxy.dropped) == plan.count(DROP), soak.proxy.dropped

    done = soak.job.done()
    assert done["steps"] == steps
    assert (done["attempts"], done["crashes"], done["lost_steps"]) == (
        stats.attempts, stats.crashes, stats.lost_steps,
    )  # fmt: skip


def _check_model(soak: Soak, reference: subprocess.Popen, tmp_path: Path) -> None:
    _, errors = reference.communicate(timeout=300)
    assert reference.returncode == 0, errors[-3000:]
    ours = tmp_path / "soak.skops"
    soak.bucket.blob(f"jobs/{NAME}/export/{MODEL_FILE}").download_to_filename(str(ours))
    mine = _load_model(ours)
    theirs = _load_model(tmp_path / "reference" / "export" / MODEL_FILE)
    for attribute in ("coef_", "intercept_", "t_", "classes_"):
        np.testing.assert_array_equal(getattr(mine, attribute), getattr(theirs, attribute))


def _shut_down_and_check_leftovers(soak: Soak) -> None:
    """`invoke down --all`, `invoke localgce.stop`: then nothing of the kit may be left."""
    try:
        down = _invoke(soak, "down", "--all")
        stop = _invoke(soak, "localgce.stop")
        assert down.returncode == 0, down.stdout + down.stderr
        assert stop.returncode == 0 and "localgce stopped" in stop.stdout, stop.stdout + stop.stderr
        # Every metadata server the guests were told about, beside the daemon's own ports.
        soak.ports |= {int(p) for p in re.findall(r"metadata server 127\.0\.0\.1:(\d+)",
                                                  soak.log_text())}  # fmt: skip
        soak.proxy.stop()
        root = str(soak.root)
        wait_for(
            lambda: not helpers.processes_mentioning(root),
            30,
            lambda: f"no process of the kit; left: {helpers.processes_mentioning(root)}",
        )
        assert not soak.ports & helpers.listening_ports(), soak.ports & helpers.listening_ports()
        assert helpers.leftover_temp_dirs(soak.tmp) == []
    finally:
        with contextlib.suppress(Exception):
            daemon.stop(soak.state)
        shutil.rmtree(soak.root, ignore_errors=True)
    assert not soak.root.exists()
