"""Open the configured cloud: localgce (started if needed) or real GCE.

The one place the kit's cloud clients are made: the Compute adaptor (`compute_for`) and the Cloud
Storage client of the job bucket and job dirs. On localgce both are pointed at the emulator's
endpoints explicitly (nothing goes through this process's environment) and the job bucket is
created if missing; on GCE the bucket must exist and the error says how to create it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from survival.compute import Compute
from survival.config import Settings
from survival.errors import ConfigError
from survival.gce import GoogleCompute
from trainer.jobdir import JobDir
from trainer.storage import GcsStore

# The orchestrator polls job dirs: a read of an unreachable endpoint should fail within this
# (the supervisor backs off, tries again, and may reconnect to a restarted localgce) rather than
# block for google-cloud-storage's default 120 s of retries.
JOB_DIR_READ_TIMEOUT_SECONDS = 10.0


def _job_dir_read_retry() -> Any:
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(JOB_DIR_READ_TIMEOUT_SECONDS)


@dataclass
class Cloud:
    settings: Settings
    compute: Compute
    # google.cloud.storage.Client for the job bucket; None when the task needs no bucket.
    storage: Any = None

    def open_job_dir(self, url: str) -> JobDir:
        """The job dir at ``url``, read through this cloud's storage client (gs:// URLs)."""
        if self.storage is None or not url.startswith("gs://"):
            return JobDir.open(url)
        return JobDir(GcsStore(url, client=self.storage, read_retry=_job_dir_read_retry()))


def compute_for(project: str, endpoints: dict[str, Any] | None = None) -> GoogleCompute:
    """The Compute adaptor: on localgce's ``endpoints`` when given, else on real GCE."""
    if endpoints is None:
        return GoogleCompute(project)
    from localgce.client import compute_client_options

    return GoogleCompute(
        project,
        client_kwargs=compute_client_options(endpoints),
        extension_url=endpoints["compute"],
    )


def open_cloud(settings: Settings, *, job_bucket: bool = True, start: bool = True) -> Cloud:
    """The cloud of ``settings``; with ``job_bucket`` also its storage client, the bucket made
    (localgce) or checked (GCE). ``start``: on localgce, start the emulator if it is not running;
    read-only commands pass False so that looking never reboots stopped instances, and get a
    ConfigError saying how to start it instead."""
    endpoints = None
    if settings.is_local:
        endpoints = local_endpoints(settings.local_state_dir, start=start)
    cloud = Cloud(settings, compute_for(settings.project, endpoints))
    if job_bucket:
        cloud.storage = storage_client(settings.project, endpoints and endpoints["storage"])
        ensure_bucket(cloud.storage, settings.job_bucket, create=settings.is_local)
    return cloud


def local_endpoints(state_dir: Path, *, start: bool) -> dict[str, Any]:
    """The running localgce's endpoints; with ``start``, started first if needed."""
    from localgce.client import NotRunning, ensure_running, load_endpoints

    state_dir = Path(state_dir)
    if not start:
        try:
            return load_endpoints(state_dir)
        except NotRunning:
            raise ConfigError(
                f"localgce is not running for {state_dir}: start it with `invoke localgce.start` "
                "(or `make demo`)"
            ) from None
    if not state_dir.parent.resolve().is_dir():
        # Starting would create the whole path and leave a daemon running for a state dir that
        # is most likely a typo; refuse before anything is started.
        raise ConfigError(
            f"survival.local_state_dir {state_dir}: its parent {state_dir.parent} does not exist; "
            "create it or choose another state dir"
        )
    return ensure_running(state_dir)


def storage_client(project: str, emulator_url: str | None = None) -> Any:
    """A google-cloud-storage client: on the emulator at ``emulator_url`` (anonymous), else GCS
    with Application Default Credentials."""
    from google.cloud import storage

    if emulator_url:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(
            project=project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": emulator_url},
        )
    return storage.Client(project=project)


def ensure_bucket(client: Any, bucket: str, *, create: bool) -> None:
    if client.lookup_bucket(bucket) is not None:
        return
    if not create:
        raise ConfigError(
            f"job bucket gs://{bucket} does not exist: create it with `gcloud storage buckets "
            f"create gs://{bucket} --project {client.project} --location us-central1` or set "
            "survival.job_bucket"
        )
    client.create_bucket(bucket)
