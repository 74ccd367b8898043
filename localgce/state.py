"""The one owner of the emulator's state: projects, images, instances, operations and knobs.

Every read and write of that state holds `Store.lock`; every write calls `commit()`, which bumps a
version, persists everything but operations to `STATE_DIR/state.json` (temp file + rename, so a
crash leaves the old or the new file, never half of one) and wakes metadata `wait_for_change`
callers and operation waiters through `Store.changed`. A daemon restart reloads the file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

from localgce.config import Knobs

STATE_FILE = "state.json"
OPERATION_RETENTION_SECONDS = 3600.0


class Status(StrEnum):
    """An instance's `status`: every value GCE's Instance resource can show."""

    PROVISIONING = "PROVISIONING"
    STAGING = "STAGING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    SUSPENDING = "SUSPENDING"
    SUSPENDED = "SUSPENDED"
    TERMINATED = "TERMINATED"
    REPAIRING = "REPAIRING"


class InstanceKey(NamedTuple):
    """What names an instance: instance names are unique per project and zone."""

    project: str
    zone: str
    name: str


@dataclass
class InstanceRecord:
    """An instance: its API resource plus what only the emulator knows about it."""

    resource: dict
    # Emulator-side facts: disk dir, boot count, preempted, maintenance event, serial, ports.
    guest: dict = field(default_factory=dict)

    @property
    def status(self) -> Status:
        return Status(self.resource["status"])


class Store:
    def __init__(
        self,
        state_dir: Path,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ):
        self.state_dir = Path(state_dir)
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - ids and chaos, not secrets
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.version = 0
        self.knobs = Knobs()
        self.projects: dict[str, dict] = {}
        self.images: dict[tuple[str, str], dict] = {}
        self.instances: dict[InstanceKey, InstanceRecord] = {}
        self.operations: dict[str, dict] = {}
        # Metadata-server access tokens → (instance key, expiry); in memory, like GCE's.
        self.guest_tokens: dict[str, tuple[InstanceKey, float]] = {}

    # --- persistence -----------------------------------------------------------------------
    def load(self) -> None:
        path = self.state_dir / STATE_FILE
        if not path.exists():
            return
        data = json.loads(path.read_text())
        with self.lock:
            self.knobs.update_from_json(data.get("knobs", {}))
            self.projects = data.get("projects", {})
            self.images = {(i["_project"], i["name"]): i for i in data.get("images", [])}
            for entry in data.get("instances", []):
                rec = InstanceRecord(resource=entry["resource"], guest=entry["guest"])
                self.instances[self.key_of(rec)] = rec

    def commit(self) -> None:
        """Persist and wake waiters. Call with the lock held, after a change."""
        self.version += 1
        data = {
            "knobs": self.knobs.to_json(),
            "projects": self.projects,
            "images": list(self.images.values()),
            "instances": [
                {"resource": r.resource, "guest": r.guest} for r in self.instances.values()
            ],
        }
        tmp = self.state_dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, self.state_dir / STATE_FILE)
        self.prune_operations()
        self.changed.notify_all()

    def reset(self) -> None:
        """Forget everything (tests). Running instances are the caller's to stop first."""
        with self.lock:
            self.projects.clear()
            self.images.clear()
            self.instances.clear()
            self.operations.clear()
            self.knobs = Knobs()
            self.commit()

    # --- helpers ---------------------------------------------------------------------------
    @staticmethod
    def key_of(rec: InstanceRecord) -> InstanceKey:
        return InstanceKey(rec.guest["project"], rec.guest["zone"], rec.resource["name"])

    def new_id(self) -> str:
        """A 64-bit decimal id (GCE ids are uint64, sent as JSON strings)."""
        return str(self.rng.getrandbits(63) | (1 << 62))

    def new_hex(self, nbytes: int = 8) -> str:
        return self.rng.getrandbits(nbytes * 8).to_bytes(nbytes, "big").hex()

    def timestamp(self) -> str:
        """RFC 3339 with milliseconds and a numeric offset, as GCE writes them."""
        now = self.clock()
        whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        return f"{whole}.{int((now % 1) * 1000):03d}-00:00"

    def project(self, name: str) -> dict:
        """Projects exist on first use; the numeric id is derived from the name (stable)."""
        proj = self.projects.get(name)
        if proj is None:
            digest = hashlib.sha256(name.encode()).hexdigest()
            number = str(100000000000 + int(digest[:12], 16) % 900000000000)
            proj = {
                "name": name,
                "id": number,
                "creationTimestamp": self.timestamp(),
                "commonInstanceMetadata": {"items": [], "fingerprint": fingerprint([])},
                "defaultServiceAccount": f"{number}-compute@developer.gserviceaccount.com",
            }
            self.projects[name] = proj
            self.commit()
        return proj

    def prune_operations(self) -> None:
        horizon = self.clock() - OPERATION_RETENTION_SECONDS
        stale = [n for n, op in self.operations.items() if op["_created"] < horizon]
        for name in stale:
            del self.operations[name]


def fingerprint(items: list[dict], nonce: str = "") -> str:
    """URL-safe base64 of 8 bytes of a hash of the item list and a per-update nonce.

    GCE's fingerprint changes on every update, even one that writes the same items
    (docs/gce-behaviour.md, "Metadata and fingerprints").
    """
    canonical = json.dumps([nonce, sorted((i["key"], i.get("value", "")) for i in items)])
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()[:8]).decode()
