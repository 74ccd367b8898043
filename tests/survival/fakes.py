"""A fake clock and an in-memory job dir for the supervisor's unit tests: markers, records and
the LEASE are set by the test; the supervisor's own notes go through the real trainer.jobdir
code."""

from __future__ import annotations

from trainer.jobdir import JobDir
from trainer.storage import ABSENT_GENERATION, PreconditionFailed


class MemoryStore:
    """The part of trainer.storage.Store the orchestrator writes through (event records)."""

    url = "mem://job"

    def __init__(self):
        self.objects = {}

    def read(self, name):
        found = self.read_with_generation(name)
        return None if found is None else found[0]

    def read_with_generation(self, name):
        return self.objects.get(name)

    def write(self, name, data, if_generation=None):
        current = self.objects.get(name, (None, ABSENT_GENERATION))[1]
        if if_generation is not None and if_generation != current:
            raise PreconditionFailed(name)
        generation = str(int(current) + 1)
        self.objects[name] = (data, generation)
        return generation


class FakeJobDir:
    url = "mem://job"

    def __init__(self):
        self.done_marker = self.failed_marker = self.lease_record = None
        self.attempt_records = []
        self.store = MemoryStore()
        self.fail_reads = 0  # the next N reads raise a connection error

    def done(self):
        if self.fail_reads:
            self.fail_reads -= 1
            import requests

            raise requests.exceptions.ConnectionError("connection refused")
        return self.done_marker

    def failed(self):
        return self.failed_marker

    def attempts(self):
        return self.attempt_records

    def lease(self):
        return self.lease_record

    def checkpoint_steps(self):
        return []

    def read_manifest(self, step):
        return None

    def events(self):
        return JobDir(self.store).events()

    def record_event(self, event, **fields):
        return JobDir(self.store).record_event(event, **fields)


class Clock:
    """Monotonic time the test moves: sleep() advances it at once."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds
