"""The supervisor under GCE's real errors (fake cloud, fake clock): a rate-limit storm, a start
while STOPPING, a Spot VM preempted while starting, a quota used up; and its steady-state API
rate."""

from __future__ import annotations

import random

import pytest

from survival.compute import InstanceInfo
from survival.errors import PreemptedWhileCreating, QuotaError, RateLimited, ResourceNotReady
from survival.supervisor import Supervisor, Timing
from tests.survival.fakes import Clock, FakeJobDir


class FlakyCompute:
    """Instances by (zone, name). ``faults[verb]``: errors the next calls of that verb raise."""

    project = "p"

    def __init__(self):
        self.instances = {}
        self.faults = {"get": [], "start": [], "insert": []}
        self.calls = []
        self.on_get = lambda compute: None

    def _fault(self, verb):
        if self.faults[verb]:
            raise self.faults[verb].pop(0)

    def get_instance(self, zone, name):
        self.calls.append(("get", zone))
        self._fault("get")
        self.on_get(self)
        status = self.instances.get((zone, name))
        return InstanceInfo(name, zone, status, "SPOT", {}, {}, None) if status else None

    def start_instance(self, zone, name):
        self.calls.append(("start", zone))
        self._fault("start")
        self.instances[(zone, name)] = "RUNNING"

    def insert_instance(self, zone, body):
        self.calls.append(("insert", zone))
        self._fault("insert")
        self.instances[(zone, body["name"])] = "RUNNING"

    def delete_instance(self, zone, name):
        self.calls.append(("delete", zone))
        self.instances.pop((zone, name), None)

    def stop_instance(self, zone, name):
        self.calls.append(("stop", zone))
        self.instances[(zone, name)] = "TERMINATED"

    def serial_output(self, zone, name, start=0):
        self.calls.append(("serial", zone))
        return "", start


def supervisor(compute, job, zones=("us-central1-a", "us-central1-b"), timing=None):
    clock, lines = Clock(), []
    sup = Supervisor(
        compute, name="job", zone=zones[0], zones=zones, job_dir=job,
        make_body=lambda zone: {"name": "job"}, max_restarts=3, out=lines.append,
        timing=timing or Timing(1.0, 2.0, 8.0, same_zone_pause_seconds=1.0), clock=clock,
        sleep=clock.sleep, rng=random.Random(3),
    )  # fmt: skip
    return sup, lines, clock


def done_once_running(job):
    def world(compute):
        if "RUNNING" in compute.instances.values():
            job.done_marker = {"steps": 10}

    return world


def test_a_rate_limit_storm_on_get_and_start_ends_done_as_one_restart():
    compute, job = FlakyCompute(), FakeJobDir()
    compute.instances[("us-central1-a", "job")] = "TERMINATED"
    storm = [RateLimited("us-central1-a: rateLimitExceeded: Quota exceeded")]
    compute.faults["get"] = storm * 10
    compute.faults["start"] = storm * 10
    compute.on_get = done_once_running(job)
    sup, lines, _ = supervisor(compute, job)
    outcome = sup.run()
    assert outcome.progress.done == {"steps": 10}
    # Eleven starts were one restart (max_restarts is 3): a refused start is not a new restart.
    assert outcome.restarts == 1 and len([c for c in compute.calls if c[0] == "start"]) == 11
    # Get and start failed in one stretch: one outage, one line.
    assert len([line for line in lines if "retrying with backoff" in line]) == 1


def test_start_while_stopping_waits_and_retries():
    compute, job = FlakyCompute(), FakeJobDir()
    compute.instances[("us-central1-a", "job")] = "TERMINATED"
    compute.faults["start"] = [ResourceNotReady("us-central1-a: resourceNotReady: not ready")] * 2
    compute.on_get = done_once_running(job)
    sup, lines, clock = supervisor(compute, job)
    outcome = sup.run()
    assert outcome.progress.done and outcome.restarts == 1
    assert clock.now >= 2.0  # it backed off before trying again
    assert any("resourceNotReady" in line for line in lines)


def test_preempted_while_starting_is_started_again_in_the_zone_then_moved():
    compute, job = FlakyCompute(), FakeJobDir()
    compute.instances[("us-central1-a", "job")] = "TERMINATED"
    again = PreemptedWhileCreating("us-central1-a", "UNSUPPORTED_OPERATION", "preempted")
    compute.faults["start"] = [again] * 3
    compute.on_get = done_once_running(job)
    sup, lines, _ = supervisor(compute, job)
    outcome = sup.run()
    assert outcome.progress.done and outcome.restarts == 1
    starts = [c for c in compute.calls if c[0] == "start"]
    assert starts == [("start", "us-central1-a")] * 3
    assert ("delete", "us-central1-a") in compute.calls
    assert outcome.zone == "us-central1-b"
    assert sum("starting it again" in line for line in lines) == 2


def test_a_quota_used_up_on_start_stops_supervision_naming_the_quota():
    compute, job = FlakyCompute(), FakeJobDir()
    compute.instances[("us-central1-a", "job")] = "TERMINATED"
    compute.faults["start"] = [QuotaError("NVIDIA_T4_GPUS", "us-central1", limit=1, usage=1)]
    sup, _, _ = supervisor(compute, job)
    with pytest.raises(QuotaError, match=r"NVIDIA_T4_GPUS in region us-central1 .*limit 1"):
        sup.run()
    assert ("insert", "us-central1-b") not in compute.calls  # same region: never helps


def test_a_regional_quota_on_start_moves_to_a_zone_of_another_region():
    compute, job = FlakyCompute(), FakeJobDir()
    compute.instances[("us-central1-a", "job")] = "TERMINATED"
    compute.faults["start"] = [QuotaError("NVIDIA_T4_GPUS", "us-central1", limit=1, usage=1)]
    compute.on_get = done_once_running(job)
    zones = ("us-central1-a", "us-central1-b", "europe-west4-b")
    sup, _, _ = supervisor(compute, job, zones=zones)
    outcome = sup.run()
    assert outcome.zone == "europe-west4-b" and outcome.progress.done
    assert ("insert", "us-central1-b") not in compute.calls


def test_steady_state_costs_a_few_compute_calls_a_minute():
    from survival.cli import GCE_POLL_SECONDS

    compute, job = FlakyCompute(), FakeJobDir()
    compute.instances[("us-central1-a", "job")] = "RUNNING"
    minutes = 30
    sup, _, clock = supervisor(compute, job, timing=Timing(poll_seconds=GCE_POLL_SECONDS))

    def world(compute):
        job.lease_record = {"step": int(clock.now), "heartbeat_unix": clock.now, "attempt": 1}
        if clock.now >= minutes * 60:
            job.done_marker = {"steps": 1}

    compute.on_get = world
    sup.run()
    per_minute = len(compute.calls) / minutes
    assert per_minute <= 6.5, per_minute


def test_a_start_that_worked_although_its_reply_failed_ends_the_restart():
    compute, job = FlakyCompute(), FakeJobDir()
    compute.instances[("us-central1-a", "job")] = "TERMINATED"
    lost_reply = RateLimited("us-central1-a: RESOURCE_OPERATION_RATE_EXCEEDED: too frequent")
    polls = []

    def world(compute):
        polls.append(dict(compute.instances))
        key = ("us-central1-a", "job")
        if len(polls) == 2:
            compute.instances[key] = "RUNNING"  # the refused start had gone through after all
        elif len(polls) == 4:
            compute.instances[key] = "TERMINATED"  # preempted again: a new restart
        elif len(polls) > 4 and compute.instances[key] == "RUNNING":
            job.done_marker = {"steps": 10}

    compute.faults["start"] = [lost_reply]
    compute.on_get = world
    sup, _, _ = supervisor(compute, job)
    outcome = sup.run()
    assert outcome.progress.done and outcome.restarts == 2
