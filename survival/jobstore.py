"""Local record of the jobs this machine launched: what is needed to (re)create their instance
in any zone (`invoke watch`, zone moves) and to label `invoke status` rows. One JSON per job under
``<local_state_dir>/jobs/``."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from survival.errors import ConfigError
from survival.instance_spec import JobSpec, MachineSpec


def _dir(state_dir: Path) -> Path:
    return Path(state_dir) / "jobs"


def save(
    state_dir: Path, job: JobSpec, machine: MachineSpec, extra_metadata: dict[str, str]
) -> None:
    folder = _dir(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "job": dataclasses.asdict(job),
        "machine": {**dataclasses.asdict(machine), "scopes": list(machine.scopes)},
        "extra_metadata": extra_metadata,
    }
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle, indent=1, sort_keys=True)
    os.replace(tmp, folder / f"{job.name}.json")


def load(state_dir: Path, name: str) -> tuple[JobSpec, MachineSpec, dict[str, str]]:
    path = _dir(state_dir) / f"{name}.json"
    if not path.is_file():
        raise ConfigError(
            f"no job named {name!r} was launched from here ({path} missing): see `invoke status`"
        )
    record: dict[str, Any] = json.loads(path.read_text())
    machine = record["machine"]
    machine["scopes"] = tuple(machine["scopes"])
    return JobSpec(**record["job"]), MachineSpec(**machine), record.get("extra_metadata", {})


def names(state_dir: Path) -> list[str]:
    folder = _dir(state_dir)
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
