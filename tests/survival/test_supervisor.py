"""The supervisor (and the placement it shares with the launch) against a fake cloud and a fake
job dir: restarts, zone moves, DONE, FAILED, chaos. No sleeping: the clock and sleep are
injected."""

from __future__ import annotations

import random

import pytest

from survival.chaos import Chaos
from survival.compute import InstanceInfo
from survival.errors import CapacityError, NoCapacityError, TransientError
from survival.placement import place, zones_from
from survival.supervisor import JobFailed, Supervisor, Timing
from tests.survival.fakes import Clock, FakeJobDir


class FakeCompute:
    """Instances by (zone, name); a script of callbacks run on each get (the 'world')."""

    project = "p"

    def __init__(self, full_zones=()):
        self.instances = {}
        self.full_zones = set(full_zones)
        self.calls = []
        self.on_get = []

    def _info(self, zone, name):
        return InstanceInfo(name, zone, self.instances[(zone, name)], "SPOT", {}, {}, None)

    def insert_instance(self, zone, body):
        self.calls.append(("insert", zone))
        if zone in self.full_zones:
            raise CapacityError(zone, "ZONE_RESOURCE_POOL_EXHAUSTED", "full")
        self.instances[(zone, body["name"])] = "RUNNING"

    def get_instance(self, zone, name):
        if self.on_get:
            self.on_get.pop(0)(self)
        return self._info(zone, name) if (zone, name) in self.instances else None

    def start_instance(self, zone, name):
        self.calls.append(("start", zone))
        if zone in self.full_zones:
            raise CapacityError(zone, "ZONE_RESOURCE_POOL_EXHAUSTED", "full")
        self.instances[(zone, name)] = "RUNNING"

    def stop_instance(self, zone, name):
        self.calls.append(("stop", zone))
        self.instances[(zone, name)] = "TERMINATED"

    def delete_instance(self, zone, name):
        self.calls.append(("delete", zone))
        self.instances.pop((zone, name), None)

    def preempt_instance(self, zone, name):
        self.calls.append(("preempt", zone))
        self.instances[(zone, name)] = "TERMINATED"

    def serial_output(self, zone, name, start=0):
        return "", start


def make(compute, job_dir, zones=("z-a", "z-b"), chaos=None, max_restarts=5):
    clock = Clock()
    lines = []
    sup = Supervisor(
        compute, name="job", zone=zones[0], zones=zones, job_dir=job_dir,
        make_body=lambda zone: {"name": "job", "zone": zone}, max_restarts=max_restarts,
        out=lines.append, chaos=chaos, timing=Timing(1.0, 2.0, 8.0), clock=clock,
        sleep=clock.sleep,
    )  # fmt: skip
    return sup, lines, clock


def test_restarts_terminated_until_done():
    compute, job = FakeCompute(), FakeJobDir()
    compute.instances[("z-a", "job")] = "TERMINATED"
    starts = []

    def finish(c):
        if len([x for x in c.calls if x[0] == "start"]) >= 2:
            job.done_marker = {"steps": 10, "attempts": 3}
        elif c.instances[("z-a", "job")] == "RUNNING":
            starts.append(1)
            c.instances[("z-a", "job")] = "TERMINATED"  # preempted again

    compute.on_get = [finish] * 50
    sup, _, clock = make(compute, job)
    outcome = sup.run()
    assert outcome.restarts == 2 and outcome.progress.done == {"steps": 10, "attempts": 3}
    assert [c for c in compute.calls if c[0] == "start"] == [("start", "z-a"), ("start", "z-a")]
    assert clock.now >= 2.0  # backoff applied between restarts


def test_capacity_on_start_moves_to_next_zone():
    compute, job = FakeCompute(full_zones={"z-a"}), FakeJobDir()
    compute.instances[("z-a", "job")] = "TERMINATED"

    def done_when_moved(c):
        if ("z-b", "job") in c.instances:
            job.done_marker = {"steps": 1}

    compute.on_get = [done_when_moved] * 20
    sup, lines, _ = make(compute, job)
    outcome = sup.run()
    assert outcome.zone == "z-b" and outcome.zone_moves == 1
    assert ("delete", "z-a") in compute.calls and ("insert", "z-b") in compute.calls
    assert any("out of capacity" in line for line in lines)


def test_failed_marker_stops_with_reason():
    compute, job = FakeCompute(), FakeJobDir()
    compute.instances[("z-a", "job")] = "TERMINATED"
    job.failed_marker = {"reason": "validation error: trainer-branch"}
    sup, _, _ = make(compute, job)
    with pytest.raises(JobFailed, match="validation error: trainer-branch"):
        sup.run()


def test_gives_up_after_max_restarts():
    compute, job = FakeCompute(), FakeJobDir()
    compute.instances[("z-a", "job")] = "TERMINATED"

    def stop_again(c):
        c.instances[("z-a", "job")] = "TERMINATED"

    compute.on_get = [stop_again] * 100
    sup, _, _ = make(compute, job, max_restarts=2)
    with pytest.raises(JobFailed, match="gave up after 2 restarts"):
        sup.run()


def test_chaos_fires_once_per_attempt_at_its_target():
    compute, job = FakeCompute(), FakeJobDir()
    compute.instances[("z-a", "job")] = "RUNNING"
    chaos = Chaos([5, 12])
    steps = iter([2, 6, 6, 7, 13, 20])

    def world(c):
        try:
            step = next(steps)
        except StopIteration:
            job.done_marker = {"steps": 20}
            return
        attempt = 1 + len([x for x in c.calls if x[0] == "preempt"])
        job.lease_record = {"step": step, "attempt": attempt, "resumed_from_step": 0}

    compute.on_get = [world] * 40
    sup, _, _ = make(compute, job, chaos=chaos)
    outcome = sup.run()
    assert outcome.chaos_fired == [5, 12]
    assert len([c for c in compute.calls if c[0] == "preempt"]) == 2


def test_chaos_plan_spreads_targets():
    plan = Chaos.plan(2, 100, random.Random(7))
    assert len(plan.targets) == 2 and plan.targets[0] < plan.targets[1]
    assert all(15 <= t <= 75 for t in plan.targets)
    assert Chaos.plan(0, 100, random.Random(1)).targets == []


def test_zones_from_puts_the_first_zone_first_and_keeps_the_order():
    assert zones_from("z-b", ("z-a", "z-b", "z-c")) == ("z-b", "z-a", "z-c")
    assert zones_from("z-x", ("z-a", "z-b")) == ("z-x", "z-a", "z-b")
    assert zones_from(None, ("z-a", "z-b")) == ("z-a", "z-b")


def test_place_takes_the_first_zone_with_capacity_or_raises_no_capacity():
    compute = FakeCompute(full_zones={"z-a"})
    lines = []
    assert place(compute, ("z-a", "z-b"), lambda zone: {"name": "job"}, lines.append) == "z-b"
    assert lines == ["no capacity in z-a (ZONE_RESOURCE_POOL_EXHAUSTED); trying the next zone"]
    compute.full_zones = {"z-a", "z-b"}
    with pytest.raises(NoCapacityError, match=r"no capacity in any of z-a, z-b \(ZONE_RES"):
        place(compute, ("z-a", "z-b"), lambda zone: {"name": "other"}, lines.append)
    # The launch shows it as a one-line error; the supervisor retries it like any transient one.
    assert issubclass(NoCapacityError, TransientError)


def test_no_zone_with_capacity_backs_off_until_one_has_some():
    compute, job = FakeCompute(full_zones={"z-a", "z-b"}), FakeJobDir()
    compute.instances[("z-a", "job")] = "TERMINATED"
    sup, lines, clock = make(compute, job)

    def world(c):
        if clock.now > 5:
            c.full_zones = set()
        if "RUNNING" in c.instances.values():
            job.done_marker = {"steps": 1}

    compute.on_get = [world] * 50
    outcome = sup.run()
    assert outcome.progress.done == {"steps": 1} and outcome.restarts == 1
    assert any("no capacity in any of z-b, z-a" in line for line in lines), lines
    assert any(line.startswith("supervisor: created job in z-") for line in lines)
