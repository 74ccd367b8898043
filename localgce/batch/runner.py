"""Runs a Batch job's tasks, each execution on a localgce VM of its own.

Threads: one per job (`batch-job-<uid>`), which starts min(parallelism, taskCount) workers. A
worker takes the next PENDING task (in index order) and runs it to the end, retries included,
before it takes another, so at most `parallelism` task VMs exist at any time. One execution:

  PENDING → ASSIGNED   a new VM from allocationPolicy.instances[0].policy, inserted through
                       the handler instances.insert uses (admission, quotas, Operations,
                       Lifecycle.boot), labelled `batch-job-uid=<uid>`;
  ASSIGNED → RUNNING   once the VM is RUNNING, the runnables run one after another as processes
                       of that VM's boot (its guest environment, plus BATCH_* and the job's
                       variables), so every stop path of the VM (preemption, maintenance,
                       delete) ends them;
  → SUCCEEDED | FAILED the exit code is the first failing runnable's, 50001 if the VM was
                       preempted, 50002 if it went away otherwise, 50005 at maxRunDuration;
                       the VM is deleted; lifecyclePolicies and maxRetryCount decide whether
                       the task runs again (back to PENDING, on a new VM with a fresh disk).

A VM insert that fails for capacity or quota is tried again after `capacity_retry_seconds`
(Batch waits for resources); any other insert error fails the job. `stop(job)` (delete and
cancel) sets the job's stop event, deletes its VMs and waits for its threads.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from localgce import procs
from localgce.batch import model
from localgce.batch.model import Job, Runnable, Task
from localgce.errors import ApiError
from localgce.guest import guest_env, script_argv
from localgce.httpserver import Request
from localgce.images import Images
from localgce.lifecycle import Lifecycle
from localgce.state import InstanceKey, Status, Store

log = logging.getLogger("localgce.batch")

# Batch's reserved exit codes (docs/gce-behaviour.md, "Cloud Batch").
PREEMPTED_EXIT_CODE = 50001
VM_LOST_EXIT_CODE = 50002
RUN_DURATION_EXIT_CODE = 50005
JOB_UID_LABEL = "batch-job-uid"
CAPACITY_RETRY_SECONDS = 5.0
STATE_POLL_SECONDS = 0.5  # how often a waiting worker re-checks a stop request
OUTPUT_DRAIN_SECONDS = 0.5
CAPACITY_CODES = {"ZONE_RESOURCE_POOL_EXHAUSTED", "QUOTA_EXCEEDED"}


class _Fatal(Exception):
    """A task cannot run at all (e.g. the VM insert is refused): the job fails."""


class Runner:
    def __init__(
        self,
        store: Store,
        lifecycle: Lifecycle,
        insert: Callable[..., dict],
        images: Images,
        log_dir: Path,
        capacity_retry_seconds: float = CAPACITY_RETRY_SECONDS,
    ):
        self.store = store
        self.lifecycle = lifecycle
        self.insert = insert
        self.images = images
        self.log_dir = Path(log_dir)
        self.capacity_retry_seconds = capacity_retry_seconds
        self._closing = threading.Event()

    # --- states and events (Store lock held by the caller or taken here) -------------------
    def set_job_state(self, job: Job, state: str, why: str = "") -> None:
        """Move `job` to `state` with Batch's event. Once a delete or cancel began, only its own
        states follow (a task that starts meanwhile does not make the job RUNNING again)."""
        with self.store.lock:
            if job.state == state or not model.job_transition_allowed(job.state, state):
                return
            now = self.store.clock()
            description = f"Job state is set from {job.state} to {state} for job {job.name}."
            job.events.append(model.event(description + why, now))
            job.state = state
            job.update_unix = now
            if state == model.RUNNING and job.run_start_unix is None:
                job.run_start_unix = now
            if state in model.JOB_DONE_STATES and job.run_end_unix is None:
                job.run_end_unix = now
            self.store.changed.notify_all()

    def _task_state(
        self,
        job: Job,
        task: Task,
        state: str,
        where: str = "",
        exit_code: int | None = None,
        why: str = "",
    ) -> str:
        with self.store.lock:
            description = f"Task state is updated from {task.state} to {state}"
            if where:
                description += f" on {where}"
            extra: dict = {"taskState": state}
            if exit_code is not None:
                description += f" with exit code {exit_code}"
                extra["taskExecution"] = {"exitCode": exit_code}
            if why:
                description += f": {why}"
            description += "."
            task.events.append(model.event(description, self.store.clock(), **extra))
            task.state = state
            job.update_unix = self.store.clock()
            self.store.changed.notify_all()
            return description

    def end_unfinished_tasks(self, job: Job) -> None:
        """The job ends early (cancel, or a task that cannot run): tasks that never ran are
        UNEXECUTED; one stopped while it ran is FAILED."""
        with self.store.lock:
            for task in job.tasks:
                if task.state in (model.PENDING, model.ASSIGNED):
                    self._task_state(job, task, model.UNEXECUTED)
                elif task.state == model.RUNNING:
                    self._task_state(job, task, model.FAILED, why="the job ended while it ran")

    # --- the job -----------------------------------------------------------------------------
    def check_image(self, project: str, image: str) -> None:
        """The job's bootDisk.image must name a registered image (400 at create otherwise)."""
        try:
            self.images.resolve(image, project)
        except ApiError as err:
            raise model.bad_job(
                f"allocationPolicy.instances[0].policy.bootDisk.image {image!r}: {err.message}. "
                "Register the image with images.insert first."
            ) from None

    def start(self, job: Job) -> None:
        job.thread = threading.Thread(
            target=self._run_job, args=(job,), name=f"batch-job-{job.uid}", daemon=True
        )
        job.thread.start()

    def _run_job(self, job: Job) -> None:
        try:
            self._schedule(job)
        except Exception:
            log.exception("batch job %s crashed", job.name)
            self.end_unfinished_tasks(job)
            self.set_job_state(job, model.FAILED, " internal error in localgce")

    def _schedule(self, job: Job) -> None:
        self.set_job_state(job, model.SCHEDULED)
        queue = deque(range(len(job.tasks)))
        queue_lock = threading.Lock()
        fatal: list[str] = []
        workers = [
            threading.Thread(
                target=self._worker,
                args=(job, queue, queue_lock, fatal),
                name=f"batch-worker-{job.uid}-{n}",
                daemon=True,
            )
            for n in range(min(job.spec.parallelism, len(job.tasks)))
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if job.stop.is_set() or self._closing.is_set():
            return  # delete or cancel sets the final state; a daemon stop forgets the job
        if fatal:
            self.end_unfinished_tasks(job)
            self.set_job_state(job, model.FAILED, f" Job gets non-retryable error: {fatal[0]}")
            return
        with self.store.lock:
            failed = [t for t in job.tasks if t.state == model.FAILED]
            why = ""
            if failed:
                last = failed[0].events[-1]["description"]
                why = (
                    " Job failed due to task failure. Specifically, task with index "
                    f'{failed[0].index} failed due to the following task event: "{last}"'
                )
            self.set_job_state(job, model.FAILED if failed else model.SUCCEEDED, why)

    def _worker(self, job: Job, queue: deque, queue_lock: threading.Lock, fatal: list) -> None:
        while not job.stop.is_set() and not self._closing.is_set():
            with queue_lock:
                if not queue or fatal:
                    return
                index = queue.popleft()
            try:
                self._run_task(job, job.tasks[index])
            except _Fatal as exc:
                fatal.append(str(exc))
                return
            except Exception:
                log.exception("batch task %s/%d crashed", job.name, index)
                fatal.append("internal error in localgce")
                return

    def _run_task(self, job: Job, task: Task) -> None:
        spec = job.spec
        while True:
            result = self._execute(job, task)
            if result is None:
                return  # stopped (delete, cancel, daemon stop)
            exit_code, where = result
            if exit_code == 0:
                self._task_state(job, task, model.SUCCEEDED, where, 0)
                return
            if not spec.may_retry(exit_code) or task.attempt >= spec.max_retry_count:
                self._task_state(job, task, model.FAILED, where, exit_code)
                return
            self._task_state(job, task, model.PENDING, where, exit_code)
            with self.store.lock:
                task.attempt += 1

    # --- one execution -----------------------------------------------------------------------
    def _execute(self, job: Job, task: Task) -> tuple[int, str] | None:
        """Run `task` once on a new VM: (exit code, `zones/Z/instances/ID`), or None if the job
        was stopped meanwhile."""
        self._task_state(job, task, model.ASSIGNED)
        key = self._create_vm(job, task)
        if key is None:
            return None
        try:
            instance_id = self._wait_running(job, key)
            if instance_id is None:
                if job.stop.is_set():
                    return None
                return VM_LOST_EXIT_CODE, f"zones/{key.zone}/instances/{key.name}"
            where = f"zones/{key.zone}/instances/{instance_id}"
            self._task_state(job, task, model.RUNNING, where)
            self.set_job_state(job, model.RUNNING)
            exit_code = self._run_runnables(job, task, key)
        finally:
            if not self._closing.is_set():  # a daemon stop leaves VMs to the next start
                self._delete_vm(key)
            with self.store.lock:
                task.vm = None
        if job.stop.is_set() or self._closing.is_set():
            return None
        return exit_code, where

    def _vm_name(self, job: Job, task: Task) -> str:
        job_id = job.name.rsplit("/", 1)[-1][:20].rstrip("-")
        suffix = self.store.new_hex(2)
        return f"{job_id}-{job.uid[2:10]}-{model.TASK_GROUP_ID}-{task.index}-{suffix}"

    def _instance_body(self, job: Job, task: Task, name: str) -> dict:
        spec = job.spec
        scheduling: dict = {}
        if spec.provisioning_model == "SPOT":
            scheduling = {"provisioningModel": "SPOT"}
        elif spec.provisioning_model == "PREEMPTIBLE":
            scheduling = {"preemptible": True}
        if spec.accelerators:
            scheduling["onHostMaintenance"] = "TERMINATE"
            if spec.provisioning_model == "STANDARD":
                scheduling["automaticRestart"] = False
        return {
            "name": name,
            "machineType": f"zones/{spec.zone}/machineTypes/{spec.machine_type}",
            "labels": {**spec.vm_labels, JOB_UID_LABEL: job.uid},
            "scheduling": scheduling,
            "guestAccelerators": [
                {
                    "acceleratorType": f"zones/{spec.zone}/acceleratorTypes/{kind}",
                    "acceleratorCount": count,
                }
                for kind, count in spec.accelerators
            ],
            "disks": [
                {"boot": True, "autoDelete": True, "initializeParams": {"sourceImage": spec.image}}
            ],
            "networkInterfaces": [
                {
                    "network": "global/networks/default",
                    "accessConfigs": (
                        [{"type": "ONE_TO_ONE_NAT", "name": "External NAT"}]
                        if spec.external_ip
                        else []
                    ),
                }
            ],
        }

    def _create_vm(self, job: Job, task: Task) -> InstanceKey | None:
        """Insert and boot the execution's VM; None if the job is stopped first."""
        zone = job.spec.zone
        while not (job.stop.is_set() or self._closing.is_set()):
            name = self._vm_name(job, task)
            body = self._instance_body(job, task, name)
            req = Request(
                method="POST",
                path=f"/compute/v1/projects/{job.project}/zones/{zone}/instances",
                query={},
                headers={"content-type": "application/json"},
                body=json.dumps(body).encode(),
            )
            key = InstanceKey(job.project, zone, name)
            try:
                op = self.insert(req, project=job.project, zone=zone)
            except ApiError as err:
                raise _Fatal(f"creating VM {name}: {err.message}") from None
            errors = (op.get("error") or {}).get("errors") or []
            if not errors:
                with self.store.lock:
                    task.vm = key
                if job.stop.is_set():
                    self._delete_vm(key)
                    return None
                return key
            if errors[0].get("code") not in CAPACITY_CODES:
                raise _Fatal(f"creating VM {name}: {errors[0].get('message')}")
            log.info("batch: no capacity for %s (%s); retrying", name, errors[0].get("code"))
            job.stop.wait(self.capacity_retry_seconds)
        return None

    def _wait_running(self, job: Job, key: InstanceKey) -> str | None:
        """The VM's id once it is RUNNING; None if it went away or the job was stopped."""
        with self.store.lock:
            while not job.stop.is_set():
                rec = self.store.instances.get(key)
                if rec is None or rec.status in (Status.STOPPING, Status.TERMINATED):
                    return None
                if rec.status == Status.RUNNING:
                    return rec.resource["id"]
                self.store.changed.wait(STATE_POLL_SECONDS)
        return None

    def _delete_vm(self, key: InstanceKey) -> None:
        with self.store.lock:
            exists = key in self.store.instances
        if exists:
            self.lifecycle.delete(key)

    # --- runnables -----------------------------------------------------------------------------
    def _environment(self, job: Job, task: Task, runnable: Runnable) -> dict[str, str]:
        spec = job.spec
        env = dict(spec.variables)
        if spec.task_variables:
            env.update(spec.task_variables[task.index])
        env.update(runnable.variables)
        env.update(
            BATCH_TASK_INDEX=str(task.index),
            BATCH_TASK_COUNT=str(spec.task_count),
            BATCH_JOB_UID=job.uid,
            BATCH_TASK_RETRY_ATTEMPT=str(task.attempt),
        )
        return env

    def log_path(self, job: Job, task: Task) -> Path:
        """Where the output of one execution goes (emulator-only; Batch sends it to Cloud
        Logging)."""
        return self.log_dir / job.uid / f"task-{task.index}-attempt-{task.attempt}.log"

    def _run_runnables(self, job: Job, task: Task, key: InstanceKey) -> int:
        deadline = None
        if job.spec.max_run_seconds is not None:
            deadline = time.monotonic() + job.spec.max_run_seconds
        log_path = self.log_path(job, task)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        first_failure = 0
        with open(log_path, "ab") as log_file:
            for index, runnable in enumerate(job.spec.runnables):
                if first_failure and not runnable.always_run:
                    continue
                code = self._run_one(job, task, key, index, runnable, log_file, deadline)
                if code in (PREEMPTED_EXIT_CODE, VM_LOST_EXIT_CODE, RUN_DURATION_EXIT_CODE):
                    return code  # the VM is gone or going: nothing else runs
                if code and not runnable.ignore_exit_status and not first_failure:
                    first_failure = code
        return first_failure

    def _vm_gone_code(self, key: InstanceKey) -> int | None:
        """50001 if the VM was preempted, 50002 if it stopped or went away otherwise."""
        with self.store.lock:
            rec = self.store.instances.get(key)
            if rec is not None and rec.guest.get("preempted"):
                return PREEMPTED_EXIT_CODE
            if rec is None or rec.status != Status.RUNNING:
                return VM_LOST_EXIT_CODE
        return None

    def _run_one(
        self,
        job: Job,
        task: Task,
        key: InstanceKey,
        index: int,
        runnable: Runnable,
        log_file,
        deadline: float | None,
    ) -> int:
        proc = self._spawn(job, task, key, index, runnable)
        if proc is None:
            return self._vm_gone_code(key) or VM_LOST_EXIT_CODE
        pump = threading.Thread(
            target=_copy_lines, args=(proc, log_file), name=f"batch-log-{key.name}", daemon=True
        )
        pump.start()
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._delete_vm(key)  # the stop path ends every process of the boot
            proc.wait()
            return RUN_DURATION_EXIT_CODE
        finally:
            procs.untrack(proc.pid)
            pump.join(OUTPUT_DRAIN_SECONDS)
        gone = self._vm_gone_code(key)
        if gone is not None:
            return gone
        return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell says

    def _spawn(
        self, job: Job, task: Task, key: InstanceKey, index: int, runnable: Runnable
    ) -> subprocess.Popen | None:
        """Start a runnable as a process of the VM's current boot; None if it is not up."""
        m = self.lifecycle.machine(key)
        with m.lock:  # no stop of this VM can begin while the process joins the boot
            with self.store.lock:
                rec = self.store.instances.get(key)
                if (
                    rec is None
                    or rec.status != Status.RUNNING
                    or rec.guest.get("preempted")
                    or not m.marker
                    or job.stop.is_set()
                ):
                    return None
                disk = Path(rec.guest["disk"])
                image_dir = rec.guest.get("imageDir")
                metadata_port = rec.guest["metadataPort"]
                bin_dir = self.lifecycle.instance_dir(rec) / "guest-bin"
            env = guest_env(
                disk=disk,
                bin_dir=bin_dir,
                image_dir=image_dir,
                metadata_hostport=f"127.0.0.1:{metadata_port}",
                storage_url=self.lifecycle.storage_url,
                project=key.project,
                marker=m.marker + "main",
            )
            env.update(self._environment(job, task, runnable))
            env[procs.MARKER_VAR] = m.marker + "main"  # the job's variables never hide it
            argv = self._argv(disk, index, runnable)
            proc = subprocess.Popen(
                argv,
                cwd=disk,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            procs.track(proc.pid)
            m.groups.append(proc.pid)
            return proc

    @staticmethod
    def _argv(disk: Path, index: int, runnable: Runnable) -> list[str]:
        """script.text is written to the VM's disk; script.path is a path on the VM (under
        LOCALGCE_ROOT if it exists there, else the host path). A `#!` line picks the
        interpreter, else /bin/sh runs it, as Batch does."""
        if runnable.text is not None:
            script_dir = disk / "run" / "batch"
            script_dir.mkdir(parents=True, exist_ok=True)
            script = script_dir / f"runnable-{index}.sh"
            script.write_text(runnable.text)
            text = runnable.text
        else:
            inside = disk / runnable.path.lstrip("/")
            script = inside if inside.exists() else Path(runnable.path)
            try:
                text = script.read_text(errors="replace")
            except OSError:
                text = ""  # /bin/sh reports the missing file and exits 127
        if text.lstrip().startswith("#!"):
            return script_argv(text, script)
        return ["/bin/sh", str(script)]

    # --- stop --------------------------------------------------------------------------------
    def job_vms(self, job: Job) -> list[InstanceKey]:
        with self.store.lock:
            return [
                key
                for key, rec in self.store.instances.items()
                if (rec.resource.get("labels") or {}).get(JOB_UID_LABEL) == job.uid
            ]

    def stop(self, job: Job) -> None:
        """Delete and cancel: no new execution, every task VM deleted, the job's threads done."""
        job.stop.set()
        with self.store.lock:
            self.store.changed.notify_all()
        for key in self.job_vms(job):
            self._delete_vm(key)
        if job.thread is not None:
            job.thread.join()
        for key in self.job_vms(job):
            self._delete_vm(key)

    def delete_leftover_vms(self) -> list[InstanceKey]:
        """Daemon start: jobs live in memory only, so task VMs a previous daemon left behind
        belong to no job any more; delete them before they are booted again."""
        with self.store.lock:
            keys = [
                key
                for key, rec in self.store.instances.items()
                if JOB_UID_LABEL in (rec.resource.get("labels") or {})
            ]
        for key in keys:
            self._delete_vm(key)
        return keys

    def close(self) -> None:
        """Daemon stop: workers start nothing new (the daemon kills the VMs' processes)."""
        self._closing.set()


def _copy_lines(proc: subprocess.Popen, log_file) -> None:
    for raw in proc.stdout:
        log_file.write(raw)
        log_file.flush()
    proc.stdout.close()
