"""projects.locations.jobs.taskGroups.tasks: get and list (filter on `status.state`)."""

from __future__ import annotations

from localgce.batch import model
from localgce.batch.jobs import Jobs, matches, page, parse_filter
from localgce.errors import ApiError
from localgce.httpserver import Request
from localgce.state import Store


def _not_found(name: str) -> ApiError:
    err = ApiError(404, "notFound", f"Task {name} not found.")
    err.status_name = "NOT_FOUND"
    return err


class Tasks:
    def __init__(self, store: Store, jobs: Jobs):
        self.store = store
        self.jobs = jobs

    def _group(self, group_name: str) -> model.Job:
        """The job of `projects/P/locations/L/jobs/J/taskGroups/G` (Store lock held), else 404."""
        job_name, _, group_id = group_name.partition("/taskGroups/")
        job = self.jobs.job(job_name)
        if group_id != model.TASK_GROUP_ID:
            raise _not_found(group_name)
        return job

    def get(self, req: Request, body: dict, name: str) -> dict:
        group_name, _, index = name.rpartition("/tasks/")
        with self.store.lock:
            job = self._group(group_name)
            if not index.isdigit() or int(index) >= len(job.tasks):
                raise _not_found(name)
            return model.render_task(job, job.tasks[int(index)])

    def list(self, req: Request, body: dict, parent: str) -> dict:
        terms = parse_filter(req.query.get("filter", ""))
        with self.store.lock:
            job = self._group(parent)
            tasks = [t for t in job.tasks if matches(terms, {"status.state": t.state})]
            chunk, token = page(tasks, req.query)
            out = {"tasks": [model.render_task(job, t) for t in chunk]}
        if token:
            out["nextPageToken"] = token
        return out
