"""Cloud Batch v1 in localgce: jobs and tasks run on localgce VMs (docs/localgce.md, "Batch").

- `api.py`: the route table from Google's Batch v1 discovery document, request validation
  (localgce.discovery's validator, with Batch's document), dispatch to the handlers.
- `model.py`: what a job and its tasks are made of, their states and status events.
- `jobs.py`: projects.locations.jobs create/get/list/delete/cancel and the long-running
  operations that delete and cancel answer.
- `tasks.py`: projects.locations.jobs.taskGroups.tasks get/list.
- `runner.py`: runs each task on a VM of its own, created through the instance machinery that
  instances.insert uses, with retries, preemption (exit code 50001) and maxRunDuration.
"""

from localgce.batch.api import BatchApi

__all__ = ["BatchApi"]
