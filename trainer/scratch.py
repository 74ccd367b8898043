"""This process's scratch directory: where a checkpoint is restored and checked, and where
temporary files go (TensorFlow's autograph modules among them).

It lives under the job's scratch root (``Store.scratch_root()``: inside a local job dir, or
a per-job directory under the system temp dir for gs://). Its name says which process owns it
(boot id, pid, start time), so a trainer starting up removes the directories of trainers that
were killed, and only those: a live trainer's directory is never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path

from trainer.lease import boot_id, process_alive, process_identity

log = logging.getLogger(__name__)

_OWNED = re.compile(r"(?P<boot>[0-9a-f]{32}|noboot)-(?P<pid>[0-9]+)-(?P<start>[0-9]+|x)-[0-9a-f]+")


def _name() -> str:
    identity = process_identity()
    boot = (identity.get("boot_id") or "noboot").replace("-", "")
    start = identity.get("pid_start")
    return f"{boot}-{os.getpid()}-{'x' if start is None else start}-{secrets.token_hex(4)}"


def _owner_alive(match: re.Match) -> bool:
    boot = (boot_id() or "noboot").replace("-", "")
    if match["boot"] != boot:
        return False  # made before a reboot: its process is gone
    start = None if match["start"] == "x" else int(match["start"])
    return process_alive(int(match["pid"]), start)


def sweep(root: Path) -> list[Path]:
    """Remove the scratch directories under root whose process is gone; returns them."""
    removed = []
    try:
        entries = list(root.iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = _OWNED.fullmatch(entry.name)
        if match is None or not entry.is_dir() or _owner_alive(match):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    if removed:
        log.info("removed %d scratch dir(s) left by killed trainers in %s", len(removed), root)
    return removed


class Scratch:
    """``with Scratch(root) as path:`` a fresh directory owned by this process, also used as
    the temp dir of this process (``tempfile``) until the block ends; removed afterwards."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path: Path | None = None
        self._saved_tempdir: str | None = None

    def __enter__(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        sweep(self.root)
        self.path = self.root / _name()
        (self.path / "tmp").mkdir(parents=True)
        # Temporary files (ours, TensorFlow's autograph modules) go where the next trainer
        # will clean them up if this one is killed.
        self._saved_tempdir = tempfile.tempdir
        tempfile.tempdir = str(self.path / "tmp")
        return self.path

    def __exit__(self, *exc_info) -> None:
        tempfile.tempdir = self._saved_tempdir
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.root.rmdir()  # only when no other trainer uses it
