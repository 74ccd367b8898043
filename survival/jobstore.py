"""Local record of the jobs this machine launched: what is needed to (re)create their instance
in any zone (`invoke watch`, zone moves) and to label `invoke status` rows. One JSON per job under
``<local_state_dir>/jobs/``.

Besides the job and machine, a record holds the state of the job's current run:

- ``run_id``, ``launched_unix``: the run (one launch, or one `invoke watch` after a `down`);
- ``down``: set by `invoke down` (``{"at_unix": ...}``); a supervisor that sees it stops;
- ``serial``: ``{"instance": creationTimestamp, "next": offset}``, how much of the instance's
  serial console was shown, so a resumed supervisor shows only what is new;
- ``engine``: ``vms`` (a supervised VM, the default; records written before engines existed
  have none and mean vms) or ``batch`` (a Cloud Batch job: ``batch_jobs`` lists its Batch job
  resource names, newest last, and there is no supervisor).

Every change is a read-modify-write under a short flock (``.NAME.record-lock``), so `invoke down`
and a supervisor saving its serial offset never lose each other's field. ``NAME.lock`` is the
supervisor's lock, held for its whole life (`supervisor_lock`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from survival.errors import ConfigError, SupervisedElsewhere
from survival.instance_spec import JobSpec, MachineSpec

ENGINE_VMS = "vms"
ENGINE_BATCH = "batch"


def engine_of(record: dict[str, Any]) -> str:
    """The record's engine: vms (also for records older than engines) or batch."""
    return str(record.get("engine") or ENGINE_VMS)


def _dir(state_dir: Path) -> Path:
    return Path(state_dir) / "jobs"


def _path(state_dir: Path, name: str) -> Path:
    return _dir(state_dir) / f"{name}.json"


@contextlib.contextmanager
def _record_lock(state_dir: Path, name: str) -> Iterator[None]:
    folder = _dir(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f".{name}.record-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(state_dir: Path, name: str, record: dict[str, Any]) -> None:
    folder = _dir(state_dir)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle, indent=1, sort_keys=True)
    os.replace(tmp, _path(state_dir, name))


def _machine_dict(machine: MachineSpec) -> dict[str, Any]:
    return {**dataclasses.asdict(machine), "scopes": list(machine.scopes)}


def save(
    state_dir: Path,
    job: JobSpec,
    machine: MachineSpec,
    extra_metadata: dict[str, str],
    *,
    engine: str = ENGINE_VMS,
    **run: Any,
) -> None:
    """A fresh record for a new run of ``job`` (``run``: run_id, launched_unix, ...)."""
    record = {
        "job": dataclasses.asdict(job),
        "machine": _machine_dict(machine),
        "extra_metadata": extra_metadata,
        "engine": engine,
        **run,
    }
    with _record_lock(state_dir, job.name):
        _write(state_dir, job.name, record)


def read(state_dir: Path, name: str) -> dict[str, Any]:
    """The raw record (ConfigError when there is none)."""
    path = _path(state_dir, name)
    if not path.is_file():
        raise ConfigError(
            f"no job named {name!r} was launched from here ({path} missing): see `invoke status`"
        )
    record: dict[str, Any] = json.loads(path.read_text())
    return record


def load(state_dir: Path, name: str) -> tuple[JobSpec, MachineSpec, dict[str, str]]:
    record = read(state_dir, name)
    machine = record["machine"]
    machine["scopes"] = tuple(machine["scopes"])
    return JobSpec(**record["job"]), MachineSpec(**machine), record.get("extra_metadata", {})


def update(state_dir: Path, name: str, **fields: Any) -> None:
    """Set ``fields`` of the record (None removes a field), keeping every other field."""
    with _record_lock(state_dir, name):
        record = read(state_dir, name)
        for key, value in fields.items():
            if value is None:
                record.pop(key, None)
            else:
                record[key] = value
        _write(state_dir, name, record)


def update_machine(state_dir: Path, name: str, machine: MachineSpec) -> None:
    update(state_dir, name, machine=_machine_dict(machine))


def mark_down(state_dir: Path, name: str, at_unix: float) -> bool:
    """Record an explicit `invoke down`; False when this machine has no record of ``name``."""
    if not _path(state_dir, name).is_file():
        return False
    update(state_dir, name, down={"at_unix": at_unix})
    return True


def down_marked(state_dir: Path, name: str) -> dict[str, Any] | None:
    try:
        down = read(state_dir, name).get("down")
    except (ConfigError, ValueError, OSError):
        return None
    return down if isinstance(down, dict) else None


def names(state_dir: Path) -> list[str]:
    folder = _dir(state_dir)
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


@contextlib.contextmanager
def supervisor_lock(state_dir: Path, name: str) -> Iterator[None]:
    """Hold the job's supervisor lock for the block, or raise SupervisedElsewhere (naming the
    holder's pid). A flock: the kernel drops it when its holder exits, crashed or not, so a
    dead supervisor never leaves it held."""
    folder = _dir(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise SupervisedElsewhere(
                f"{name} is already supervised by pid {holder} on this machine (one supervisor "
                f"acts on a job at a time): follow its logs with `invoke ssh-logs {name} "
                "--follow`"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
