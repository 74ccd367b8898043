"""Fixtures for the trainer tests: job dirs (local and gs://), reference runs, a metadata server."""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import uuid

import pytest

from tests.trainer import helpers
from tests.trainer.fake_metadata import FakeMetadataServer

BUCKET = "trainer-tests"
# Small runs: each example's uninterrupted reference and the interrupted runs use these.
RUNS = {
    "sklearn_digits": {"framework": "sklearn", "steps": 150, "ckpt": 20, "args": []},
    "keras_digits": {"framework": "keras", "steps": 300, "ckpt": 40, "args": []},
    # A 4 MB checkpoint: big enough that a background write overlaps steps.
    "numpy_wide": {"framework": "numpy", "steps": 80, "ckpt": 10, "args": ["--checkpoint-mb", "4"]},
}
_counter = itertools.count()


@pytest.fixture(params=["local", "gs"])
def job_url(request, tmp_path):
    """A fresh job dir: a local path, or gs://trainer-tests/<unique> on fake-gcs-server."""
    if request.param == "local":
        return str(tmp_path / "job")
    request.getfixturevalue("gcs_env")
    from google.api_core.exceptions import Conflict

    from trainer.storage import _gcs_client

    with contextlib.suppress(Conflict):  # made by an earlier test of the session
        _gcs_client().create_bucket(BUCKET)
    return f"gs://{BUCKET}/job-{next(_counter)}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def reference():
    """Exported arrays of one uninterrupted run per example (shared by every comparison)."""
    cache: dict[str, dict] = {}

    def get(example: str) -> dict:
        if example not in cache:
            spec = RUNS[example]
            with tempfile.TemporaryDirectory() as tmp:
                job = os.path.join(tmp, "reference")
                result = helpers.run(
                    example,
                    job,
                    "--train-steps",
                    str(spec["steps"]),
                    "--checkpoint-steps",
                    "0",
                    "--seed",
                    "7",
                    *spec["args"],
                )
                assert result.returncode == 0, result.stderr
                cache[example] = helpers.export_arrays(job, spec["framework"])
        return cache[example]

    return get


@pytest.fixture
def metadata_server():
    server = FakeMetadataServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
