"""Fixtures shared by every test area."""

from __future__ import annotations

import os

import pytest

from localgce.storage import start_storage


def pytest_addoption(parser):
    # Options must be added by a root-level conftest: tests/chaos/ is not loaded at start-up.
    group = parser.getgroup("chaos", "the chaos soak (tests/chaos)")
    group.addoption("--soak", type=int, default=10, metavar="N",
                    help="faults the chaos soak injects into its one job (default 10)")  # fmt: skip
    group.addoption("--soak-seed", type=int, default=None, metavar="SEED",
                    help="replay a soak: the seed it printed (default: a random one)")  # fmt: skip


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory):
    """A fake-gcs-server on loopback for the session; yields its URL (STORAGE_EMULATOR_HOST)."""
    server = start_storage(tmp_path_factory.mktemp("fake-gcs") / "data")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def gcs_env(fake_gcs, monkeypatch):
    """Point google-cloud-storage (in this process and in subprocesses) at fake-gcs-server."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test-project")
    return dict(os.environ)
