"""projects.locations.jobs: create, get, list, delete, cancel; and operations.get.

`create` checks the Job (the discovery validator has already refused unknown fields and bad
types), answers it QUEUED and hands it to the runner. `delete` and `cancel` answer a
google.longrunning Operation at once; the job shows DELETION_IN_PROGRESS or
CANCELLATION_IN_PROGRESS while its task VMs are deleted, then it is gone (delete) or CANCELLED
(cancel), and the Operation is done (docs/gce-behaviour.md, "Cloud Batch").
"""

from __future__ import annotations

import logging
import re
import threading
import uuid

from localgce.batch import model
from localgce.batch.model import Job, Task
from localgce.batch.runner import Runner
from localgce.errors import ApiError
from localgce.httpserver import Request
from localgce.state import Store

log = logging.getLogger("localgce.batch")
JOB_ID_RE = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
OPERATION_TYPE = "type.googleapis.com/google.cloud.batch.v1.OperationMetadata"
EMPTY_TYPE = "type.googleapis.com/google.protobuf.Empty"
CANCEL_RESPONSE_TYPE = "type.googleapis.com/google.cloud.batch.v1.CancelJobResponse"
DEFAULT_PAGE_SIZE = 100


def _status_error(status: int, reason: str, status_name: str, message: str) -> ApiError:
    err = ApiError(status, reason, message)
    err.status_name = status_name
    return err


def job_not_found(name: str) -> ApiError:
    return _status_error(404, "notFound", "NOT_FOUND", f"Job {name} not found.")


_FILTER_TERM = re.compile(r'^\s*([\w.\-]+)\s*(=|!=)\s*"?([^"]*?)"?\s*$')


def parse_filter(text: str) -> list[tuple[str, str, str]]:
    """`status.state="FAILED" AND labels.sweep=s1` → [(field, op, value)]; bad → 400."""
    if not text.strip():
        return []
    terms = []
    for part in re.split(r"\s+AND\s+", text.strip()):
        match = _FILTER_TERM.match(part)
        if match is None:
            raise model.bad_job(
                f"Unsupported filter {part!r}: localgce filters on field=value or field!=value "
                "terms joined by AND."
            )
        terms.append((match[1], match[2], match[3]))
    return terms


def matches(terms: list[tuple[str, str, str]], fields: dict[str, str]) -> bool:
    return all((fields.get(name) == value) == (op == "=") for name, op, value in terms)


def page(items: list, query: dict[str, str]) -> tuple[list, str]:
    """`pageSize`/`pageToken` (the token is the offset of the next page)."""
    size = int(query.get("pageSize") or 0) or DEFAULT_PAGE_SIZE
    try:
        start = int(query.get("pageToken") or 0)
    except ValueError:
        raise model.bad_job(f"Invalid pageToken {query.get('pageToken')!r}.") from None
    chunk = items[start : start + size]
    token = str(start + size) if start + size < len(items) else ""
    return chunk, token


class Jobs:
    def __init__(self, store: Store, runner: Runner):
        self.store = store
        self.runner = runner
        self.jobs: dict[str, Job] = {}
        self.operations: dict[str, dict] = {}

    # --- helpers ---------------------------------------------------------------------------
    def job(self, name: str) -> Job:
        """The job called `name` (Store lock held), else 404."""
        job = self.jobs.get(name)
        if job is None:
            raise job_not_found(name)
        return job

    def _new_operation(self, parent: str, verb: str, target: str) -> dict:
        now = self.store.clock()
        op_name = f"{parent}/operations/operation-{int(now * 1000)}-{self.store.new_hex(6)}"
        op = {
            "name": op_name,
            "metadata": {
                "@type": OPERATION_TYPE,
                "createTime": model.rfc3339(now),
                "target": target,
                "verb": verb,
                "requestedCancellation": False,
                "apiVersion": "v1",
            },
            "done": False,
        }
        self.operations[op_name] = op
        return op

    def _finish_operation(self, op: dict, response_type: str) -> None:
        with self.store.lock:
            op["metadata"]["endTime"] = model.rfc3339(self.store.clock())
            op["response"] = {"@type": response_type}
            op["done"] = True
            self.store.changed.notify_all()

    # --- handlers ----------------------------------------------------------------------------
    def create(self, req: Request, body: dict, parent: str) -> dict:
        project, location = parent.split("/")[1], parent.split("/")[3]
        job_id = req.query.get("jobId") or f"job-{uuid.uuid4().hex[:20]}"
        if not JOB_ID_RE.match(job_id):
            raise model.bad_job(
                f"Invalid jobId {job_id!r}: at most 63 characters, lowercase letters, digits and "
                "'-', starting with a letter and not ending with '-'."
            )
        spec = model.parse_job(location, body)
        self.runner.check_image(project, spec.image)
        name = f"{parent}/jobs/{job_id}"
        with self.store.lock:
            if name in self.jobs:
                raise _status_error(
                    409, "alreadyExists", "ALREADY_EXISTS", f"Job {name} already exists."
                )
            now = self.store.clock()
            resource = dict(body)
            group = dict(resource["taskGroups"][0])
            group.update(
                name=f"{name}/taskGroups/{model.TASK_GROUP_ID}",
                taskCount=str(spec.task_count),
                parallelism=str(spec.parallelism),
            )
            resource["taskGroups"] = [group]
            job = Job(
                name=name,
                project=project,
                location=location,
                uid=f"j-{uuid.uuid4()}",
                resource=resource,
                spec=spec,
                tasks=[Task(index=i) for i in range(spec.task_count)],
                create_unix=now,
                update_unix=now,
            )
            self.jobs[name] = job
            rendered = model.render_job(job, now)
        self.runner.start(job)
        return rendered

    def get(self, req: Request, body: dict, name: str) -> dict:
        with self.store.lock:
            return model.render_job(self.job(name), self.store.clock())

    def list(self, req: Request, body: dict, parent: str) -> dict:
        terms = parse_filter(req.query.get("filter", ""))
        with self.store.lock:
            now = self.store.clock()
            jobs = [
                job
                for job in self.jobs.values()
                if job.name.startswith(parent + "/jobs/")
                and matches(
                    terms,
                    {
                        "name": job.name,
                        "uid": job.uid,
                        "status.state": job.state,
                        **{f"labels.{k}": v for k, v in (job.resource.get("labels") or {}).items()},
                    },
                )
            ]
            chunk, token = page(jobs, req.query)
            out = {"jobs": [model.render_job(job, now) for job in chunk]}
        if token:
            out["nextPageToken"] = token
        return out

    def delete(self, req: Request, body: dict, name: str) -> dict:
        parent = name.rsplit("/jobs/", 1)[0]
        with self.store.lock:
            job = self.job(name)
            self.runner.set_job_state(job, model.DELETION_IN_PROGRESS)
            op = self._new_operation(parent, "delete", name)
            public = dict(op, metadata=dict(op["metadata"]))

        def work() -> None:
            try:
                self.runner.stop(job)
            finally:
                with self.store.lock:
                    self.jobs.pop(name, None)
                self._finish_operation(op, EMPTY_TYPE)

        threading.Thread(target=work, name=f"batch-delete-{job.uid}", daemon=True).start()
        return public

    def cancel(self, req: Request, body: dict, name: str) -> dict:
        parent = name.rsplit("/jobs/", 1)[0]
        with self.store.lock:
            job = self.job(name)
            if job.state not in model.JOB_ACTIVE_STATES:
                raise _status_error(
                    400,
                    "failedPrecondition",
                    "FAILED_PRECONDITION",
                    f"Job {name} is {job.state}; only a QUEUED, SCHEDULED or RUNNING job can be "
                    "cancelled.",
                )
            self.runner.set_job_state(job, model.CANCELLATION_IN_PROGRESS)
            op = self._new_operation(parent, "cancel", name)
            public = dict(op, metadata=dict(op["metadata"]))

        def work() -> None:
            try:
                self.runner.stop(job)
            finally:
                with self.store.lock:
                    self.runner.end_unfinished_tasks(job)
                    self.runner.set_job_state(job, model.CANCELLED)
                self._finish_operation(op, CANCEL_RESPONSE_TYPE)

        threading.Thread(target=work, name=f"batch-cancel-{job.uid}", daemon=True).start()
        return public

    def get_operation(self, req: Request, body: dict, name: str) -> dict:
        with self.store.lock:
            op = self.operations.get(name)
            if op is None:
                raise _status_error(404, "notFound", "NOT_FOUND", f"Operation {name} not found.")
            return dict(op, metadata=dict(op["metadata"]))
