"""The supervisor's loop against a fake cloud and job dir (clock, sleep and jitter injected):
`invoke down` ends supervision, the VM is made to stop after DONE, a hung trainer is restarted,
outages are ridden out with one line each, the serial console resumes where it was left, and
restarts are counted from the job dir."""

from __future__ import annotations

import pytest

from survival.compute import InstanceInfo
from survival.errors import TransientError
from survival.report import status_row
from survival.supervisor import Supervisor, Timing
from tests.survival.fakes import Clock
from tests.survival.fakes import FakeJobDir as JobDir


class Compute:
    project = "p"

    def __init__(self, status="RUNNING"):
        self.status = {"z-a": status}
        self.created = {"z-a": "t0"}
        self.calls = []
        self.world = []  # callbacks, one per get_instance
        self.fail_gets = 0
        self.serial_starts = []
        self.model = "SPOT"
        self.instance_id = ""  # set: get_instance shows it (raw "id"), as the API does
        self.last_start = "2026-11-29T09:00:00.000-08:00"
        self.system = []  # (operationType, insertTime) newest first: zoneOperations.list

    def get_instance(self, zone, name):
        if self.world:
            self.world.pop(0)(self)
        if self.fail_gets:
            self.fail_gets -= 1
            raise TransientError(f"{zone}: cannot reach the Compute API (ConnectionError)")
        if zone not in self.status:
            return None
        raw = {"id": self.instance_id} if self.instance_id else {}
        return InstanceInfo(name, zone, self.status[zone], self.model, {}, {}, None,
                            creation_timestamp=self.created[zone],
                            last_start_timestamp=self.last_start, raw=raw)  # fmt: skip

    def system_events(self, zone, instance_id):
        self.calls.append(("system_events", instance_id))
        return list(self.system)

    def insert_instance(self, zone, body):
        self.calls.append(("insert", zone))
        self.status[zone], self.created[zone] = "RUNNING", f"t{len(self.calls)}"

    def start_instance(self, zone, name):
        self.calls.append(("start", zone))
        self.status[zone] = "RUNNING"

    def stop_instance(self, zone, name):
        self.calls.append(("stop", zone))
        self.status[zone] = "TERMINATED"

    def delete_instance(self, zone, name):
        self.calls.append(("delete", zone))
        self.status.pop(zone, None)

    def preempt_instance(self, zone, name):
        self.calls.append(("preempt", zone))

    def serial_output(self, zone, name, start=0):
        self.serial_starts.append(start)
        return "", start


class CountingRandom:
    def __init__(self):
        self.calls = 0

    def random(self):
        self.calls += 1
        return 0.0


def make(compute, job, **kwargs):
    clock, lines = Clock(), []
    kwargs.setdefault("timing", Timing(1.0, 2.0, 8.0, done_grace_seconds=30.0,
                                       heartbeat_stale_seconds=60.0))  # fmt: skip
    sup = Supervisor(
        compute, name="job", zone="z-a", zones=("z-a", "z-b"), job_dir=job,
        make_body=lambda zone: {"name": "job"}, max_restarts=5, out=lines.append, clock=clock,
        sleep=clock.sleep, **kwargs,
    )  # fmt: skip
    return sup, lines, clock


# --- `invoke down` -----------------------------------------------------------------------------
def test_down_ends_supervision_and_the_instance_is_not_created_again():
    compute, job = Compute(), JobDir()
    down = {}

    def taken_down(c):
        # `invoke down`: recorded first, then the instance is deleted.
        down["at_unix"] = 1.0
        c.status.clear()

    compute.world = [lambda c: None, taken_down]
    sup, lines, _ = make(compute, job, taken_down=lambda: down or None)
    outcome = sup.run()
    assert outcome.taken_down and not outcome.progress.done
    assert [c for c in compute.calls if c[0] in ("insert", "start")] == []
    assert [line for line in lines if "taken down" in line] == [
        "supervisor: job was taken down (`invoke down`); not supervising it any more "
        "(`invoke watch job` brings it back)"
    ]


# --- after DONE / FAILED -----------------------------------------------------------------------
def test_vm_still_running_after_done_is_stopped_after_the_grace_period():
    compute, job = Compute(), JobDir()
    job.done_marker = {"steps": 10}
    sup, lines, clock = make(compute, job)
    outcome = sup.run()
    assert outcome.progress.done == {"steps": 10}
    assert compute.calls == [("stop", "z-a")] and clock.now >= 30.0
    assert "supervisor: job is still RUNNING 30s after DONE; stopping it" in lines


def test_vm_that_powers_itself_off_after_done_is_left_alone():
    compute, job = Compute(), JobDir()
    job.done_marker = {"steps": 10}
    compute.world = [lambda c: None, lambda c: c.status.update({"z-a": "TERMINATED"})]
    sup, _, _ = make(compute, job)
    sup.run()
    assert compute.calls == []


def test_keep_alive_vm_is_not_stopped_after_done():
    compute, job = Compute(), JobDir()
    job.done_marker = {"steps": 10}
    sup, lines, _ = make(compute, job, keep_alive=True)
    sup.run()
    assert compute.calls == []
    assert any("stays RUNNING (keep-alive)" in line for line in lines)


def test_status_flags_a_running_vm_of_an_ended_job():
    from survival.progress import Progress

    info = InstanceInfo("job", "z-a", "RUNNING", "SPOT", {}, {}, None)
    done = Progress({"steps": 1}, None, [], None, 1, None)
    failed = Progress(None, {"reason": "x"}, [], None, 1, None)
    assert "VM still up" in status_row("job", info, None, 1, done, 0.0)[2]
    assert "VM still up" in status_row("job", info, None, 1, failed, 0.0)[2]
    stopped = InstanceInfo("job", "z-a", "TERMINATED", "SPOT", {}, {}, None)
    assert status_row("job", stopped, None, 1, done, 0.0)[2] == "TERMINATED / DONE"


# --- a hung trainer ----------------------------------------------------------------------------
def test_frozen_heartbeat_restarts_the_vm_and_a_moving_one_does_not():
    compute, job = Compute(), JobDir()
    job.lease_record = {"attempt": 1, "step": 120, "heartbeat_unix": 1000.0}
    stops = []

    def world(c):
        if ("stop", "z-a") in c.calls and not stops:
            stops.append(1)
        if ("start", "z-a") in c.calls:
            job.done_marker = {"steps": 200}
            c.status["z-a"] = "TERMINATED"

    compute.world = [world] * 500
    sup, lines, _ = make(compute, job)
    outcome = sup.run()
    assert compute.calls[:2] == [("stop", "z-a"), ("start", "z-a")]
    hung = [line for line in lines if "no trainer heartbeat" in line]
    assert hung == [
        "supervisor: job: no trainer heartbeat for 60s (hung at step 120); restarting the VM "
        "(stop, start): it resumes from step 0, 120 steps lost"
    ]
    assert outcome.restarts == 1

    # The same time with a heartbeat that moves: nothing happens.
    compute, job = Compute(), JobDir()
    beats = iter(range(10_000))

    def beating(c):
        job.lease_record = {"attempt": 1, "step": 5, "heartbeat_unix": float(next(beats))}
        if sup2.clock() > 200:
            job.done_marker = {"steps": 5}
            c.status["z-a"] = "TERMINATED"

    compute.world = [beating] * 500
    sup2, lines, _ = make(compute, job)
    sup2.run()
    assert compute.calls == [] and not any("heartbeat" in line for line in lines)


def test_a_hung_flex_start_vm_is_deleted_and_created_again_as_one_restart():
    """Flex-start VMs cannot be stopped, only deleted: the next poll creates the VM again."""
    compute, job = Compute(), JobDir()
    compute.model = "FLEX_START"
    job.lease_record = {"attempt": 1, "step": 120, "heartbeat_unix": 1000.0}

    def world(c):
        if ("insert", "z-a") in c.calls:
            job.done_marker = {"steps": 200}
            c.status["z-a"] = "TERMINATED"

    compute.world = [world] * 500
    sup, lines, _ = make(compute, job)
    outcome = sup.run()
    assert compute.calls[:2] == [("delete", "z-a"), ("insert", "z-a")]
    assert ("stop", "z-a") not in compute.calls
    assert outcome.restarts == 1
    assert "supervisor: job does not exist in z-a; creating it; restart 1" in lines


def test_a_vm_deleted_at_its_run_duration_is_created_again_within_max_restarts():
    """Each time the VM is gone (a flex-start or DELETE VM at the end of its run duration) is a
    restart: counted in the job dir and bounded by survival.max_restarts."""
    from survival.supervisor import JobFailed

    compute, job = Compute(), JobDir()
    looks = []

    def world(c):
        c.status.clear()  # deleted again before every look
        looks.append(1)
        if len(looks) > 400:  # without the bound the job would end here, not fail
            job.done_marker = {"steps": 1}

    compute.world = [world] * 500
    sup, _, _ = make(compute, job)
    with pytest.raises(JobFailed, match="gave up after 5 restarts"):
        sup.run()
    assert [c for c in compute.calls if c[0] == "insert"] == [("insert", "z-a")] * 5
    assert sup._progress().restarts == 5


def test_a_guest_power_off_is_noted_as_its_stop_cause_and_an_older_one_is_not():
    from trainer.jobdir import EVENT_GUEST_SHUTDOWN, AttemptStats

    compute, job = Compute(status="TERMINATED"), JobDir()
    compute.instance_id = "4242"
    # The trainer saw only a SIGTERM: its record says "stopped".
    job.attempt_records = [{"attempt": 3, "end_reason": "notice_saved", "stop_cause": "stopped",
                            "end_step": 40, "resumed_from_step": 0}]  # fmt: skip
    compute.system = [("compute.instances.guestTerminate", "2026-11-29T09:05:00.000-08:00")]

    def world(c):
        if ("start", "z-a") in c.calls:
            job.done_marker = {"steps": 50}

    compute.world = [world] * 50
    sup, lines, _ = make(compute, job)
    sup.run()
    noted = [e for e in job.events() if e["event"] == EVENT_GUEST_SHUTDOWN]
    assert [e["attempt"] for e in noted] == [3]
    assert "supervisor: job was powered off from inside the guest (attempt 3)" in lines
    stats = AttemptStats.from_records(job.attempts(), job.events())
    assert stats.stop_causes == {"guest-shutdown": 1} and stats.preempted == 0

    # A power-off before the VM's last start belongs to an earlier boot: not this stop.
    compute, job = Compute(status="TERMINATED"), JobDir()
    compute.instance_id = "4242"
    compute.system = [("compute.instances.guestTerminate", "2026-11-29T08:59:00.000-08:00")]
    compute.world = [world] * 50
    job.attempt_records = [{"attempt": 1, "stop_cause": "stopped"}]
    sup, lines, _ = make(compute, job)
    sup.run()
    assert not [e for e in job.events() if e["event"] == EVENT_GUEST_SHUTDOWN]
    assert ("system_events", "4242") in compute.calls


# --- outages -----------------------------------------------------------------------------------
def test_outages_are_retried_with_jitter_and_one_line_each():
    compute, job = Compute(), JobDir()
    rng = CountingRandom()
    polls = []

    def world(c):
        polls.append(1)
        if len(polls) == 3:
            c.fail_gets = 6  # first outage: six failed tries
        if len(polls) == 12:
            job.fail_reads = 4  # second outage: the job dir's storage is unreachable
        if len(polls) == 20:
            job.done_marker = {"steps": 1}
            c.status["z-a"] = "TERMINATED"

    compute.world = [world] * 200
    sup, lines, _ = make(compute, job, rng=rng)
    outcome = sup.run()
    assert outcome.progress.done == {"steps": 1}
    outages = [line for line in lines if "retrying with backoff" in line]
    assert len(outages) == 2, lines
    assert "cannot reach the Compute API" in outages[0]
    assert "cannot reach the endpoint (ConnectionError)" in outages[1]
    assert rng.calls >= 10  # every retry's delay was jittered


def test_gce_adaptor_maps_transport_errors_and_any_5xx_to_transient():
    import requests
    from google.api_core import exceptions as api
    from google.auth.exceptions import TransportError

    from survival.gce import GoogleCompute

    compute = GoogleCompute("p")
    for error in (requests.exceptions.ConnectionError("refused"), TransportError("dns"),
                  api.BadGateway("bad gateway"), api.TooManyRequests("slow down")):  # fmt: skip

        def fail(error=error):
            raise error

        with pytest.raises(TransientError):
            compute._call(fail, "z-a")


# --- resuming: serial console and counts -------------------------------------------------------
def test_serial_console_resumes_where_it_was_left_and_restarts_on_a_new_instance():
    compute, job = Compute(), JobDir()
    saved = []
    compute.world = [lambda c: None] * 3 + [
        lambda c: job.__setattr__("done_marker", {"steps": 1})
    ] * 50
    compute.status["z-a"] = "RUNNING"
    sup, _, _ = make(compute, job, serial=("t0", 5000),
                     on_serial=lambda inst, off: saved.append((inst, off)))  # fmt: skip
    sup.run()
    assert compute.serial_starts[0] == 5000 and 0 not in compute.serial_starts

    # The instance was recreated while nobody watched: its console is shown from the start.
    compute, job = Compute(), JobDir()
    compute.created["z-a"] = "t-new"
    compute.world = [lambda c: None] * 3 + [
        lambda c: job.__setattr__("done_marker", {"steps": 1})
    ] * 50
    saved = []
    sup, _, _ = make(compute, job, serial=("t0", 5000),
                     on_serial=lambda inst, off: saved.append((inst, off)))  # fmt: skip
    sup.run()
    assert compute.serial_starts[0] == 5000 and compute.serial_starts[-1] == 0
    assert ("t-new", 0) in saved


def test_restarts_are_counted_from_the_job_dir_for_every_watcher():
    compute, job = Compute("TERMINATED"), JobDir()

    def world(c):
        starts = [x for x in c.calls if x[0] == "start"]
        if len(starts) >= 2:
            job.done_marker = {"steps": 10}
        c.status["z-a"] = "TERMINATED"

    compute.world = [world] * 100
    first, _, _ = make(compute, job)
    assert first.run().restarts == 2
    # A second watcher of the same job (it restarted nothing itself) reports the same count.
    second, _, _ = make(compute, job)
    assert second.run().restarts == 2
