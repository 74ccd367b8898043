"""Fixtures for localgce: a daemon per session, driven only through the official clients."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from google.cloud import compute_v1
from lgtest import PROJECT, TEST_KNOBS, Compute

from localgce import daemon
from localgce.client import ensure_running


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    """A local image: a directory whose venv/ is this test run's Python environment."""
    root = tmp_path_factory.mktemp("image")
    os.symlink(Path(sys.prefix), root / "venv")
    return root


@pytest.fixture(scope="session")
def lg(tmp_path_factory):
    """A localgce daemon for the session; yields its endpoints."""
    state_dir = tmp_path_factory.mktemp("localgce")
    endpoints = ensure_running(state_dir, **TEST_KNOBS)
    endpoints["state_dir"] = state_dir
    try:
        yield endpoints
    finally:
        daemon.stop(state_dir)


@pytest.fixture(scope="session")
def compute(lg) -> Compute:
    return Compute(lg)


@pytest.fixture(scope="session")
def image(compute, image_dir) -> str:
    """Register the local image once; returns its family URL for sourceImage."""
    compute.images.insert(
        project=PROJECT,
        image_resource=compute_v1.Image(
            name="lg-image-1", family="lg-test", raw_disk=compute_v1.RawDisk(source=str(image_dir))
        ),
    ).result()
    return f"projects/{PROJECT}/global/images/family/lg-test"
