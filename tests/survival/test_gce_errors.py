"""GCE's real errors through the Compute adaptor (survival.gce) and the placement: each ends as
docs/gce-behaviour.md says ("Errors the orchestrator meets and what it does"). The SDK's
exceptions and Operations are the real google.api_core / compute_v1 types; the clients are
fakes, so no server is needed."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as api
from google.cloud import compute_v1

from survival.compute import InstanceInfo
from survival.errors import (
    AcceleratorUnavailable,
    CapacityError,
    ConfigError,
    NoCapacityError,
    PreemptedWhileCreating,
    QuotaError,
    RateLimited,
    ResourceNotReady,
    TransientError,
    as_transient,
    classify_operation_error,
)
from survival.gce import GoogleCompute
from survival.placement import place

ZONE = "us-central1-a"
QUOTA_LINK = "https://cloud.google.com/docs/quotas/view-manage#requesting_higher_quota"


def http_error(status, reason, message="boom"):
    return api.from_http_status(
        status, message, errors=[{"reason": reason, "message": message, "domain": "global"}]
    )


def raising(err):
    def call(**kwargs):
        raise err

    return call


def adaptor(**kwargs):
    clock = {"now": 0.0}

    def sleep(seconds):
        clock["now"] += seconds

    compute = GoogleCompute("p", sleep=sleep, clock=lambda: clock["now"], **kwargs)
    compute.region_quotas = lambda region: {"NVIDIA_T4_GPUS": (4.0, 4.0)}
    compute.project_quotas = lambda: {"GPUS_ALL_REGIONS": (8.0, 3.0)}
    return compute, clock


# --- synchronous errors ------------------------------------------------------------------------
@pytest.mark.parametrize("reason", ["rateLimitExceeded", "RESOURCE_OPERATION_RATE_EXCEEDED"])
def test_a_rate_limit_403_is_transient_not_a_config_error(reason):
    compute, _ = adaptor()
    with pytest.raises(RateLimited) as err:
        compute._call(raising(http_error(403, reason, "Quota exceeded for quota metric")), ZONE)
    assert isinstance(err.value, TransientError)
    # The job dir's storage client: the same 403 is an outage to back off from, not a bug.
    assert isinstance(as_transient(http_error(403, reason), "job dir"), RateLimited)


def test_other_403s_stay_configuration_errors():
    compute, _ = adaptor()
    with pytest.raises(ConfigError, match="check the project id"):
        compute._call(
            raising(http_error(403, "forbidden", "Required 'compute.instances.get'")), ZONE
        )


def test_a_quota_403_names_the_quota_region_limit_usage_and_how_to_ask_for_more():
    compute, _ = adaptor()
    message = "Quota 'NVIDIA_T4_GPUS' exceeded.  Limit: 4.0 in region us-central1."
    with pytest.raises(QuotaError) as err:
        compute._call(raising(http_error(403, "quotaExceeded", message)), ZONE)
    text = str(err.value)
    assert err.value.metric == "NVIDIA_T4_GPUS" and err.value.region == "us-central1"
    assert "limit 4, usage 4" in text and QUOTA_LINK in text
    assert "another zone of us-central1 does not help" in text and "\n" not in text


def test_start_while_stopping_is_resource_not_ready_a_transient_error():
    compute, _ = adaptor()
    with pytest.raises(ResourceNotReady):
        compute._call(raising(http_error(400, "resourceNotReady", "is not ready")), ZONE)


def test_an_accelerator_the_zone_lacks_is_a_reason_to_skip_the_zone():
    compute, _ = adaptor()
    message = (
        "The resource 'projects/p/zones/us-central1-c/acceleratorTypes/nvidia-l4' was not found"
    )
    with pytest.raises(AcceleratorUnavailable):
        compute._call(raising(http_error(400, "badRequest", message)), "us-central1-c")


# --- Operation errors --------------------------------------------------------------------------
def test_operation_codes_map_to_the_table():
    assert type(classify_operation_error(ZONE, ["ZONE_RESOURCE_POOL_EXHAUSTED"], 503, "")) is (
        CapacityError
    )
    assert isinstance(
        classify_operation_error(ZONE, ["ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"], 503, ""),
        CapacityError,
    )
    assert isinstance(
        classify_operation_error(ZONE, ["UNSUPPORTED_OPERATION"], 400, "preempted"),
        PreemptedWhileCreating,
    )
    assert isinstance(
        classify_operation_error(ZONE, ["RESOURCE_OPERATION_RATE_EXCEEDED"], 403, ""), RateLimited
    )
    assert isinstance(
        classify_operation_error(ZONE, ["RESOURCE_NOT_READY"], 400, ""), ResourceNotReady
    )
    quota = classify_operation_error(
        ZONE, ["QUOTA_EXCEEDED"], 403, "Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 0.0 globally."
    )
    assert isinstance(quota, QuotaError) and quota.region is None
    # A code no public source documents is not treated as capacity any more.
    gpu = classify_operation_error(ZONE, ["UNSUPPORTED_OPERATION_GPU_UNAVAILABLE"], 400, "x")
    assert not isinstance(gpu, CapacityError)


class FakeOperations:
    """zoneOperations: ``wait`` answers the scripted statuses in turn; ``get`` must not be used."""

    def __init__(self, statuses, error=None):
        self.statuses = list(statuses)
        self.error = error
        self.calls = []

    def wait(self, **kwargs):
        self.calls.append(("wait", kwargs))
        status = self.statuses.pop(0)
        if isinstance(status, Exception):
            raise status
        op = compute_v1.Operation(name="op-1", status=status)
        if status == compute_v1.Operation.Status.DONE and self.error is not None:
            op.error = self.error
            op.http_error_status_code = 403
        return op

    def get(self, **kwargs):  # pragma: no cover - the point is that it is never called
        raise AssertionError("operations are waited on with wait, not polled with get")


def test_operations_are_waited_on_with_wait_until_done():
    compute, clock = adaptor()
    running, done = compute_v1.Operation.Status.RUNNING, compute_v1.Operation.Status.DONE
    ops = FakeOperations([running, running, done])
    compute._clients["ZoneOperationsClient"] = ops
    compute._wait(compute_v1.Operation(name="op-1", status=running), ZONE)
    assert [name for name, _ in ops.calls] == ["wait", "wait", "wait"]
    assert ops.calls[0][1] == {"operation": "op-1", "project": "p", "zone": ZONE}
    # Each wait came back at once (the fake does not block): paused between them, not hammered.
    assert clock["now"] >= 2.0


def test_a_rate_limited_wait_is_asked_again_and_the_operation_error_is_classified():
    compute, _ = adaptor()
    running, done = compute_v1.Operation.Status.RUNNING, compute_v1.Operation.Status.DONE
    error = compute_v1.Error(
        errors=[
            compute_v1.Errors(
                code="QUOTA_EXCEEDED",
                message="Quota 'NVIDIA_T4_GPUS' exceeded.  Limit: 4.0 in region us-central1.",
                error_details=[
                    compute_v1.ErrorDetails(
                        quota_info=compute_v1.QuotaExceededInfo(
                            metric_name="compute.googleapis.com/nvidia_t4_gpus",
                            dimensions={"region": "us-central1"},
                            limit=4,
                        )
                    )
                ],
            )
        ]
    )
    ops = FakeOperations([http_error(403, "rateLimitExceeded"), done], error=error)
    compute._clients["ZoneOperationsClient"] = ops
    with pytest.raises(QuotaError) as err:
        compute._wait(compute_v1.Operation(name="op-1", status=running), ZONE)
    assert (err.value.metric, err.value.region) == ("NVIDIA_T4_GPUS", "us-central1")
    assert (err.value.limit, err.value.usage) == (4.0, 4.0)


# --- placement ---------------------------------------------------------------------------------
class ScriptedCompute:
    """insert/start raise the scripted errors of their zone in turn, then succeed."""

    project = "p"

    def __init__(self, inserts=None, starts=None):
        self.inserts = {zone: list(errors) for zone, errors in (inserts or {}).items()}
        self.starts = {zone: list(errors) for zone, errors in (starts or {}).items()}
        self.instances = {}
        self.calls = []

    def insert_instance(self, zone, body):
        self.calls.append(("insert", zone))
        script = self.inserts.get(zone) or []
        if script:
            err = script.pop(0)
            if isinstance(err, PreemptedWhileCreating):
                self.instances[(zone, body["name"])] = "TERMINATED"  # created, then preempted
            raise err
        self.instances[(zone, body["name"])] = "RUNNING"

    def start_instance(self, zone, name):
        self.calls.append(("start", zone))
        script = self.starts.get(zone) or []
        if script:
            raise script.pop(0)
        self.instances[(zone, name)] = "RUNNING"

    def get_instance(self, zone, name):
        status = self.instances.get((zone, name))
        return InstanceInfo(name, zone, status, "SPOT", {}, {}, None) if status else None

    def delete_instance(self, zone, name):
        self.calls.append(("delete", zone))
        self.instances.pop((zone, name), None)


def body(zone):
    return {
        "name": "job",
        "guestAccelerators": [
            {"acceleratorType": f"zones/{zone}/acceleratorTypes/nvidia-tesla-t4"}
        ],
    }


def placed(compute, zones, **kwargs):
    lines, pauses = [], []
    zone = place(compute, zones, body, lines.append, sleep=pauses.append, **kwargs)
    return zone, lines, pauses


def preempted(zone):
    return PreemptedWhileCreating(zone, "UNSUPPORTED_OPERATION", "preempted while created")


def test_preempted_while_created_is_retried_in_the_same_zone_by_starting_it():
    compute = ScriptedCompute(inserts={ZONE: [preempted(ZONE)]}, starts={ZONE: [preempted(ZONE)]})
    zone, lines, pauses = placed(compute, (ZONE, "us-central1-b"))
    assert zone == ZONE
    # The VM exists (TERMINATED) after the first try: it is started, never inserted twice.
    assert compute.calls == [("insert", ZONE), ("start", ZONE), ("start", ZONE)]
    assert len(lines) == 2 and all("UNSUPPORTED_OPERATION" in line for line in lines)
    assert len(pauses) == 2


def test_preempted_while_created_too_often_moves_to_the_next_zone():
    errors = [preempted(ZONE)] * 3
    compute = ScriptedCompute(inserts={ZONE: errors[:1]}, starts={ZONE: errors[1:]})
    zone, lines, _ = placed(compute, (ZONE, "us-central1-b"), same_zone_attempts=3)
    assert zone == "us-central1-b"
    assert ("delete", ZONE) in compute.calls and ("insert", "us-central1-b") in compute.calls
    assert "trying the next zone" in lines[-1]


def test_a_zone_without_the_gpu_type_is_skipped_with_one_line():
    missing = AcceleratorUnavailable("us-central1-c", "HTTP 400", "acceleratorTypes not found")
    compute = ScriptedCompute(inserts={"us-central1-c": [missing]})
    zone, lines, _ = placed(compute, ("us-central1-c", ZONE))
    assert zone == ZONE
    assert lines == ["us-central1-c does not offer nvidia-tesla-t4; skipping the zone"]


def test_a_regional_quota_skips_the_region_and_tries_another_region():
    quota = QuotaError("NVIDIA_T4_GPUS", "us-central1", limit=4, usage=4)
    compute = ScriptedCompute(inserts={ZONE: [quota]})
    zone, lines, _ = placed(compute, (ZONE, "us-central1-b", "europe-west4-a"))
    assert zone == "europe-west4-a"
    # Moving zones inside the region never helps: us-central1-b is not tried.
    assert ("insert", "us-central1-b") not in compute.calls
    assert "trying europe-west4-a in region europe-west4" in lines[0]


def test_a_regional_quota_with_no_other_region_stops_with_the_quota_named():
    quota = QuotaError("NVIDIA_T4_GPUS", "us-central1", limit=0, usage=0)
    compute = ScriptedCompute(inserts={ZONE: [quota]})
    with pytest.raises(QuotaError) as err:
        placed(compute, (ZONE, "us-central1-b"))
    assert isinstance(err.value, ConfigError)  # never retried: the launch stops here
    assert compute.calls == [("insert", ZONE)]
    assert "NVIDIA_T4_GPUS in region us-central1" in str(err.value) and QUOTA_LINK in str(err.value)


def test_a_global_quota_stops_at_once():
    quota = QuotaError("GPUS_ALL_REGIONS", None, limit=0, usage=0)
    compute = ScriptedCompute(inserts={ZONE: [quota]})
    with pytest.raises(QuotaError, match=r"GPUS_ALL_REGIONS \(global"):
        placed(compute, (ZONE, "europe-west4-a"))
    assert compute.calls == [("insert", ZONE)]


def test_a_rate_limited_insert_is_retried_in_the_same_zone_without_duplicating_it():
    limited = RateLimited("rate limit exceeded")
    compute = ScriptedCompute(inserts={ZONE: [limited, limited]})
    zone, _, pauses = placed(compute, (ZONE,), same_zone_pause_seconds=1.0)
    assert zone == ZONE and pauses == [1.0, 2.0]
    assert [c for c in compute.calls if c[0] == "insert"] == [("insert", ZONE)] * 3


def test_capacity_everywhere_is_still_no_capacity():
    full = [CapacityError(z, "ZONE_RESOURCE_POOL_EXHAUSTED", "full") for z in (ZONE, "b")]
    compute = ScriptedCompute(inserts={ZONE: full[:1], "us-central1-b": full[1:]})
    with pytest.raises(NoCapacityError):
        placed(compute, (ZONE, "us-central1-b"))
