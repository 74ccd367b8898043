"""The `faults` knob: the next N matching Compute calls fail the way GCE fails them.

A fault is `{"method": "<discovery method id>", "error": "<name>", "times": N, "zone": "z"}`
(`zone` optional). A call matches when its method id is `method` and, if `zone` is given, its
`zone` path parameter is that zone; each match uses up one of `times`, and a fault whose `times`
reach 0 is dropped (`GET /localgce/v1/config` shows what is left). The error shapes, and why each
is synchronous or an Operation error, are in docs/gce-behaviour.md ("Errors under load,
capacity and quota") and docs/localgce.md ("Fault injection").
"""

from __future__ import annotations

from localgce import regions
from localgce.errors import ApiError, invalid
from localgce.httpserver import DropConnection, Request
from localgce.operations import Operations
from localgce.state import Store

# Synchronous answers: the HTTP call itself fails.
SYNCHRONOUS = ("rateLimitExceeded", "RESOURCE_NOT_READY", "http500", "connectionReset")
# Accepted calls whose Operation ends DONE with `error.errors[].code`: only for methods that
# answer an Operation.
OPERATION = (
    "RESOURCE_OPERATION_RATE_EXCEEDED",
    "QUOTA_EXCEEDED",
    "ZONE_RESOURCE_POOL_EXHAUSTED",
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
    "UNSUPPORTED_OPERATION",
)
ERRORS = SYNCHRONOUS + OPERATION


def validate(value) -> list[dict]:
    """The knob as given (admin JSON or `--faults`) → normalized entries; bad input → 400."""
    from localgce import discovery  # the 5 MB document is only read when faults are set

    if not isinstance(value, list):
        raise invalid('faults must be a JSON list of {"method", "error", "times", "zone"?}')
    clean = []
    for entry in value:
        if not isinstance(entry, dict):
            raise invalid(f"each fault must be a JSON object, got {entry!r}")
        unknown = set(entry) - {"method", "error", "times", "zone"}
        if unknown:
            raise invalid(
                f"unknown fault keys {sorted(unknown)}; a fault has method, error, times, zone"
            )
        method_id, error = entry.get("method"), entry.get("error")
        method = discovery.methods().get(method_id) if isinstance(method_id, str) else None
        if method is None:
            raise invalid(
                f"fault method {method_id!r} is not a method of the Compute v1 discovery "
                "document; use a method id such as compute.instances.start"
            )
        if error not in ERRORS:
            raise invalid(f"unknown fault error {error!r}; known errors: {list(ERRORS)}")
        if error in OPERATION and not method.returns_operation:
            raise invalid(
                f"{error} is an Operation error, and {method_id} does not return an Operation; "
                f"use one of {list(SYNCHRONOUS)} for it"
            )
        times = entry.get("times", 1)
        if isinstance(times, bool) or not isinstance(times, int) or times < 0:
            raise invalid(f"fault times must be a non-negative integer, got {times!r}")
        zone = entry.get("zone")
        if zone is not None and not isinstance(zone, str):
            raise invalid(f"fault zone must be a zone name, got {zone!r}")
        if times:
            fault = {"method": method_id, "error": error, "times": times}
            if zone:
                fault["zone"] = zone
            clean.append(fault)
    return clean


def take(store: Store, method_id: str, zone: str | None) -> dict | None:
    """The first fault matching this call, with one of its `times` used up; None if none."""
    with store.lock:
        for fault in store.knobs.faults:
            if fault["method"] != method_id or fault.get("zone") not in (None, zone):
                continue
            fault["times"] -= 1
            if fault["times"] <= 0:
                store.knobs.faults.remove(fault)
            store.commit()
            return dict(fault)
    return None


def target_path(method, params: dict[str, str], body: dict | None) -> str:
    """The resource a call is about: `projects/p/zones/z/instances/x` (insert: the new one)."""
    path = method.path
    for name, value in params.items():
        path = path.replace("{" + name + "}", value).replace("{+" + name + "}", value)
    verb = method.id.rsplit(".", 1)[-1]
    if path.endswith("/" + verb):  # a custom verb: `instances/x/start`
        path = path[: -len(verb) - 1]
    elif method.http_method == "POST" and isinstance(body, dict) and body.get("name"):
        path = f"{path}/{body['name']}"  # insert into a collection
    return path


def rate_limit_exceeded(method, project_number: str) -> ApiError:
    """403 rateLimitExceeded: the per-minute API rate quota of the project."""
    if method.id.endswith(("Operations.get", "Operations.wait")):
        metric, limit = "operation_read_requests", "Operation read requests"
    elif method.http_method == "GET" and method.id.endswith(("list", "aggregatedList")):
        metric, limit = "list_requests", "List requests"
    elif method.http_method == "GET":
        metric, limit = "read_requests", "Read requests"
    else:
        metric, limit = "default", "Queries"
    message = (
        f"Quota exceeded for quota metric '{limit}' and limit '{limit} per minute' of service "
        f"'compute.googleapis.com' for consumer 'project_number:{project_number}'."
    )
    err = ApiError(403, "rateLimitExceeded", message)
    err.domain = "usageLimits"
    err.status_name = "PERMISSION_DENIED"
    err.details = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "RATE_LIMIT_EXCEEDED",
            "domain": "googleapis.com",
            "metadata": {
                "service": "compute.googleapis.com",
                "quota_metric": f"compute.googleapis.com/{metric}",
                "quota_limit": limit.title().replace(" ", "") + "PerMinutePerProject",
                "consumer": f"projects/{project_number}",
            },
        }
    ]
    return err


def inject(
    fault: dict,
    method,
    params: dict[str, str],
    req: Request,
    store: Store,
    ops: Operations,
) -> dict:
    """Answer the call as the fault says: raise the synchronous error, or return the failed
    Operation."""
    error = fault["error"]
    project = params.get("project", "")
    zone = params.get("zone")
    body = req.json() if req.body else None
    target = target_path(method, params, body)
    if error == "connectionReset":
        raise DropConnection()
    if error == "http500":
        raise ApiError(
            500,
            "backendError",
            "Internal error. Please try again or contact Google Support. "
            f"(Code: 'localgce-{store.new_hex(4)}')",
        )
    if error == "rateLimitExceeded":
        with store.lock:
            number = store.project(project)["id"] if project else "0"
        raise rate_limit_exceeded(method, number)
    if error == "RESOURCE_NOT_READY":
        raise ApiError(400, "resourceNotReady", f"The resource '{target}' is not ready")
    op_type = method.id.rsplit(".", 1)[-1]
    with store.lock:
        store.project(project)
    if error == "QUOTA_EXCEEDED":
        metric = regions.metric_of_request(store, method, params, body)
        return regions.quota_failure(store, ops, op_type, project, zone, target, metric)
    if error == "RESOURCE_OPERATION_RATE_EXCEEDED":
        err = ApiError(
            403,
            error,
            f"Operation rate exceeded for resource '{target}'. Too frequent operations from the "
            "source resource.",
        )
    elif error.startswith("ZONE_RESOURCE_POOL_EXHAUSTED"):
        where = f"projects/{project}/zones/{zone}" if zone else f"projects/{project}"
        suffix = " '(resource type:compute)'." if error.endswith("WITH_DETAILS") else ""
        err = ApiError(
            503,
            error,
            f"The zone '{where}' does not have enough resources available to fulfill the "
            "request. Try a different zone, or try again later." + suffix,
        )
    else:  # UNSUPPORTED_OPERATION
        err = ApiError(
            400,
            error,
            f"The operation on '{target}' could not be completed: the instance was preempted "
            "while it was being created or started.",
        )
    return ops.fail(op_type, project, target, zone, err, code=error)
