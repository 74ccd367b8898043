"""Operations: what every mutating call answers, and zoneOperations/globalOperations get + wait.

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
from localgce.state import Store

log = logging.getLogger("localgce.operations")
# wait returns by about 2 minutes even if the operation is not DONE (docs/gce-behaviour.md,
# "Operations").
WAIT_CAP_SECONDS = 120.0


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

    def fail(self, op_type, project, target_path, zone, error: ApiError, code: str) -> dict:
        """A DONE Operation carrying an error found after the request was accepted
        (docs/gce-behaviour.md, "API errors")."""
        op = self._new(op_type, project, zone, target_path, "", None)
        with self.store.lock:
            self._finish(op, error=error, code=code)
        return public(op)

    def _new(self, op_type, project, zone, target_path, target_id, request_id) -> dict:
        store = self.store
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

    def _finish(self, op: dict, error: ApiError | None, code: str) -> None:
        """Mark DONE (lock held). A failed op gets both httpError fields so result() raises."""
        op["status"] = "DONE"
        op["progress"] = 100
        op["endTime"] = self.store.timestamp()
        if error is not None:
            op["error"] = {"errors": [{"code": code, "message": error.message}]}
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

    def global_get(self, req: Request, project: str, operation: str) -> dict:
        with self.store.lock:
            return public(self._lookup(project, None, operation))

    def global_wait(self, req: Request, project: str, operation: str) -> dict:
        return self._wait(project, None, operation)


def public(resource: dict) -> dict:
    """The API view: drop the emulator's private `_` keys."""
    return {k: v for k, v in resource.items() if not k.startswith("_")}
