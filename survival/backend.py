"""Open the configured cloud: localgce (started if needed) or real GCE, as a `Compute`.

On localgce the storage emulator's URL goes into this process's environment (the trainer's
job-dir code and google-cloud-storage honour STORAGE_EMULATOR_HOST) and the job bucket is created
if missing; on GCE the bucket must exist and the error says how to create it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from survival.compute import Compute
from survival.config import TRAINER_REPO_NAME, Settings
from survival.errors import ConfigError
from survival.gce import GoogleCompute


@dataclass
class Cloud:
    settings: Settings
    compute: Compute


def open_cloud(settings: Settings) -> Cloud:
    if settings.is_local:
        return _open_local(settings)
    return _open_gce(settings)


def _open_local(settings: Settings) -> Cloud:
    from localgce.client import compute_client_options, ensure_running

    endpoints = ensure_running(settings.local_state_dir)
    os.environ["STORAGE_EMULATOR_HOST"] = endpoints["storage"]
    os.environ["GOOGLE_CLOUD_PROJECT"] = settings.project
    if settings.sources.get("trainer_repo", "").startswith("derived") and endpoints.get("git"):
        repo = (Path(endpoints["git"]) / f"{TRAINER_REPO_NAME}.git").resolve().as_uri()
        settings = dataclasses.replace(settings, trainer_repo=repo)
    compute = GoogleCompute(
        settings.project,
        client_kwargs=compute_client_options(endpoints),
        extension_url=endpoints["compute"],
    )
    ensure_bucket(settings.job_bucket, settings.project, create=True)
    return Cloud(settings, compute)


def _open_gce(settings: Settings) -> Cloud:
    ensure_bucket(settings.job_bucket, settings.project, create=False)
    return Cloud(settings, GoogleCompute(settings.project))


def ensure_bucket(bucket: str, project: str, *, create: bool) -> None:
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        client = storage.Client(project=project, credentials=AnonymousCredentials())
    else:
        client = storage.Client(project=project)
    if client.lookup_bucket(bucket) is not None:
        return
    if not create:
        raise ConfigError(
            f"job bucket gs://{bucket} does not exist: create it with `gcloud storage buckets "
            f"create gs://{bucket} --project {project} --location us-central1` or set "
            "survival.job_bucket"
        )
    client.create_bucket(bucket)
