"""Operations: what every mutating call answers, zoneOperations/globalOperations get + wait,
zoneOperations.list, and the system events GCE records without a caller (a preemption, a guest
powering itself off: docs/gce-behaviour.md, "Why a VM stopped: system events").

By default the work is done before the reply and the Operation is already DONE, because the
client's `ExtendedOperation.result()` polls compute.googleapis.com, not our endpoint
(docs/gce-behaviour.md, "Waiting on operations from Python"). With the `operation_delay_seconds`
knob > 0 the work runs in a thread and the Operation stays RUNNING until the work is finished and
the delay has passed; `get` and `wait` (through an operations client built with our endpoint) see
it change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from localgce import links
from localgce.errors import HTTP_REASON_PHRASES, ApiError, not_found
from localgce.httpserver import Request
from localgce.listing import list_response
from localgce.state import Store

log = logging.getLogger("localgce.operations")
# wait returns by about 2 minutes even if the operation is not DONE (docs/gce-behaviour.md,
# "Operations").
WAIT_CAP_SECONDS = 120.0
# Operation types of the events GCE records itself ("user": "system").
GUEST_TERMINATE = "compute.instances.guestTerminate"


def record_system_event(store: Store, op_type: str, project: str, zone: str, target_path: str,
                        target_id: str) -> dict:  # fmt: skip
    """A DONE Operation nobody asked for, as GCE lists for a preemption or a guest power-off."""
    op = _new_operation(store, op_type, project, zone, target_path, target_id, None)
    with store.lock:
        op["user"] = "system"
        op["status"], op["progress"] = "DONE", 100
        op["endTime"] = store.timestamp()
        store.changed.notify_all()
    return public(op)


def _new_operation(store: Store, op_type, project, zone, target_path, target_id, request_id):
    with store.lock:
        name = f"operation-{int(store.clock() * 1000)}-{store.new_hex(6)}"
        scope = f"projects/{project}/zones/{zone}" if zone else f"projects/{project}/global"
        op = {
            "kind": "compute#operation",
            "id": store.new_id(),
            "name": name,
            "operationType": op_type,
            "targetLink": links.url(target_path),
            "status": "RUNNING",
            "user": "localgce@localhost",
            "progress": 0,
            "insertTime": store.timestamp(),
            "startTime": store.timestamp(),
            "selfLink": links.url(f"{scope}/operations/{name}"),
            "_created": store.clock(),
            "_project": project,
            "_zone": zone,
        }
        if target_id:
            op["targetId"] = target_id
        if zone:
            op["zone"] = links.url(f"projects/{project}/zones/{zone}")
        if request_id:
            op["clientOperationId"] = request_id
        store.operations[name] = op
        return op


class Operations:
    def __init__(self, store: Store, wait_cap_seconds: float = WAIT_CAP_SECONDS):
        self.store = store
        self.wait_cap_seconds = wait_cap_seconds

    def run(
        self,
        op_type: str,
        project: str,
        target_path: str,
        target_id: str,
        work: Callable[[], None] | None,
        zone: str | None = None,
        request_id: str | None = None,
    ) -> dict:
        """Create the Operation, do `work` (now, or in a thread when delayed) and return it."""
        op = self._new(op_type, project, zone, target_path, target_id, request_id)
        delay_seconds = self.store.knobs.operation_delay_seconds
        if delay_seconds <= 0:
            self._execute(op, work)
            return public(op)
        thread = threading.Thread(
            target=self._execute_delayed, args=(op, work, delay_seconds), daemon=True
        )
        thread.start()
        return public(op)

    def fail(
        self,
        op_type,
        project,
        target_path,
        zone,
        error: ApiError,
        code: str,
        details: list | None = None,
    ) -> dict:
        """A DONE Operation carrying an error found after the request was accepted
        (docs/gce-behaviour.md, "API errors"); `details`: its `errorDetails` (e.g. quotaInfo)."""
        op = self._new(op_type, project, zone, target_path, "", None)
        with self.store.lock:
            self._finish(op, error=error, code=code, details=details)
        return public(op)

    def _new(self, op_type, project, zone, target_path, target_id, request_id) -> dict:
        return _new_operation(
            self.store, op_type, project, zone, target_path, target_id, request_id
        )

    def _execute(self, op: dict, work: Callable[[], None] | None) -> None:
        self._execute_work_only(op, work)
        with self.store.lock:
            self._finish(op, error=op.pop("_error", None), code=op.pop("_code", ""))

    def _execute_delayed(self, op, work, delay_seconds: float) -> None:
        started = time.monotonic()
        self._execute_work_only(op, work)
        remaining = delay_seconds - (time.monotonic() - started)
        if remaining > 0:
            threading.Event().wait(remaining)
        with self.store.lock:
            self._finish(op, error=op.pop("_error", None), code=op.pop("_code", ""))

    def _execute_work_only(self, op, work) -> None:
        try:
            if work is not None:
                work()
        except ApiError as err:
            op["_error"], op["_code"] = err, err.reason.upper()
        except Exception:
            log.exception("operation %s crashed", op["name"])
            op["_error"] = ApiError(500, "internalError", "internal error in localgce")
            op["_code"] = "INTERNAL_ERROR"

    def _finish(
        self, op: dict, error: ApiError | None, code: str, details: list | None = None
    ) -> None:
        """Mark DONE (lock held). A failed op gets both httpError fields so result() raises."""
        op["status"] = "DONE"
        op["progress"] = 100
        op["endTime"] = self.store.timestamp()
        if error is not None:
            item = {"code": code, "message": error.message}
            if details:
                item["errorDetails"] = details
            op["error"] = {"errors": [item]}
            op["httpErrorStatusCode"] = error.status
            op["httpErrorMessage"] = HTTP_REASON_PHRASES.get(error.status, "ERROR")
        self.store.changed.notify_all()

    # --- handlers ----------------------------------------------------------------------------
    def _lookup(self, project: str, zone: str | None, name: str) -> dict:
        op = self.store.operations.get(name)
        if op is None or op["_project"] != project or op["_zone"] != zone:
            scope = f"zones/{zone}" if zone else "global"
            raise not_found(f"projects/{project}/{scope}/operations/{name}")
        return op

    def _wait(self, project, zone, name) -> dict:
        deadline = time.monotonic() + self.wait_cap_seconds
        with self.store.lock:
            op = self._lookup(project, zone, name)
            while op["status"] != "DONE":
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.store.changed.wait(remaining)
            return public(op)

    def zone_get(self, req: Request, project: str, zone: str, operation: str) -> dict:
        with self.store.lock:
            return public(self._lookup(project, zone, operation))

    def zone_wait(self, req: Request, project: str, zone: str, operation: str) -> dict:
        return self._wait(project, zone, operation)

    def zone_list(self, req: Request, project: str, zone: str) -> dict:
        """With GCE's filter, orderBy and paging; "creationTimestamp desc" (the order GCE
        documents for operations, newest first) sorts by insertTime."""
        with self.store.lock:
            ops = [
                public(op)
                for op in self.store.operations.values()
                if op["_project"] == project and op["_zone"] == zone
            ]
        query = dict(req.query)
        query["orderBy"] = query.get("orderBy", "").replace("creationTimestamp", "insertTime")
        link = links.url(f"projects/{project}/zones/{zone}/operations")
        return list_response("compute#operationList", ops, query, link)

    def global_get(self, req: Request, project: str, operation: str) -> dict:
        with self.store.lock:
            return public(self._lookup(project, None, operation))

    def global_wait(self, req: Request, project: str, operation: str) -> dict:
        return self._wait(project, None, operation)


def public(resource: dict) -> dict:
    """The API view: drop the emulator's private `_` keys."""
    return {k: v for k, v in resource.items() if not k.startswith("_")}
