"""`invoke sweep`: many points of one example, each a job of its own, on Batch or on VMs.

The points are expanded and every one is validated against the example's declared
hyperparameters before anything is pushed or created. The sweep is recorded once in
``gs://BUCKET/sweeps/NAME/sweep.json`` (its points, the spec they share, the commit), created
with ``ifGenerationMatch=0`` and never overwritten, so a sweep name always means one set of
points. Each point trains in its own job dir:

- ``--engine batch``: one Batch job with ``taskCount`` = points and ``parallelism`` P. Its tasks
  get only ``SURVIVAL_SWEEP`` (the sweep.json URL); task I trains point I (or the I-th of
  ``SURVIVAL_SWEEP_POINTS`` for a job over some points only) in
  ``gs://BUCKET/sweeps/NAME/points/<point>``.
- ``--engine vms``: one supervised VM per point, at most P at a time (a pool of P supervisors
  running the same launch and supervisor code as `invoke train`); point I is the job
  ``NAME-pI`` with its job dir under ``jobs/``.

The local sweep record (``<local_state_dir>/sweeps/NAME.json``) lists the Batch jobs or the
point jobs, for `invoke status` and `invoke down`.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from survival.errors import ConfigError
from survival.request import EXAMPLES, HPARAM_KEY_RE, check_hparams, parse_hparams

SWEEP_FILE = "sweep.json"
SWEEP_VERSION = 1
# Batch runs at most 10,000 tasks per task group; a sweep this large is a mistake anyway.
MAX_POINTS = 1000
_RANGE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]{0,63})=([^:]+):([^:]+)(?::(lin|log))?$")
# The settings a sweep's points share, as the runner's metadata keys (hparams and job-dir are
# per point).
SHARED_KEYS = (
    "trainer-repo",
    "trainer-bundle",
    "trainer-branch",
    "trainer-commit",
    "trainer-module",
    "train-steps",
    "checkpoint-steps",
    "seed",
    "crash-retries",
)


@dataclass(frozen=True)
class Range:
    name: str
    low: float
    high: float
    scale: str  # lin | log


def parse_grid(flags: tuple[str, ...] | list[str]) -> dict[str, list[Any]]:
    """``NAME=V1,V2,...`` flags → {NAME: [values]} (values typed as --hparam types them)."""
    grid: dict[str, list[Any]] = {}
    for flag in flags:
        key, sep, raw = flag.partition("=")
        if not sep or not HPARAM_KEY_RE.match(key) or not raw:
            raise ConfigError(
                f"--grid {flag[:60]!r}: use NAME=V1,V2,..., e.g. --grid learning_rate=0.01,0.03"
            )
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice: list all its values in one flag")
        grid[key] = [parse_hparams([f"{key}={value}"])[key] for value in raw.split(",")]
    return grid


def parse_range(flag: str) -> Range:
    """``NAME=LOW:HIGH[:lin|log]`` → Range (log needs LOW > 0)."""
    match = _RANGE_RE.match(flag)
    try:
        low, high = float(match.group(2)), float(match.group(3))  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        raise ConfigError(
            f"--range {flag[:60]!r}: use NAME=LOW:HIGH[:lin|log], e.g. "
            "--range learning_rate=1e-4:1e-1:log"
        ) from None
    scale = match.group(4) or "lin"  # type: ignore[union-attr]
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ConfigError(f"--range {flag[:60]!r}: LOW must be a number no larger than HIGH")
    if scale == "log" and low <= 0:
        raise ConfigError(f"--range {flag[:60]!r}: a log range needs LOW > 0")
    return Range(match.group(1), low, high, scale)  # type: ignore[union-attr]


def expand(
    example: str,
    grid: dict[str, list[Any]],
    ranges: list[Range],
    random_points: int,
    seed: int,
) -> list[dict[str, Any]]:
    """The sweep's points, each validated against the example's declared hyperparameters.

    Without --random: the grid's product (in the order the flags were given). With --random N:
    N points, each drawing every --range value (uniform, or log-uniform) and every --grid value
    at random from a PRNG seeded with ``seed``, so the same flags give the same points."""
    if example not in EXAMPLES:
        raise ConfigError(f"--example {example!r}: use one of {', '.join(EXAMPLES)}")
    names = [r.name for r in ranges]
    both = sorted(set(names) & set(grid))
    if both or len(set(names)) != len(names):
        raise ConfigError(f"hyperparameter {(both or names)[0]} is given twice (--grid/--range)")
    if random_points < 0:
        raise ConfigError("--random must be a number of points, 1 or more")
    if ranges and not random_points:
        raise ConfigError("--range draws values at random: give --random N as well")
    points: list[dict[str, Any]]
    if random_points:
        import importlib

        declared = importlib.import_module(EXAMPLES[example]).HPARAMS
        # Reproducible draws of hyperparameters, not secrets: a plain seeded PRNG is right.
        rng = random.Random(seed)  # noqa: S311
        points = []
        for _ in range(random_points):
            point: dict[str, Any] = {}
            for key, values in grid.items():
                point[key] = rng.choice(values)
            for r in ranges:
                if r.scale == "log":
                    value = math.exp(rng.uniform(math.log(r.low), math.log(r.high)))
                else:
                    value = rng.uniform(r.low, r.high)
                param = declared.get(r.name)
                point[r.name] = (
                    round(value) if param and param.type is int else float(f"{value:.6g}")
                )
            points.append(point)
    else:
        keys = list(grid)
        points = [
            dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())
        ]
    if not points or not any(points):
        raise ConfigError(
            "a sweep needs points: give --grid NAME=V1,V2 (and/or --random N --range)"
        )
    if len(points) > MAX_POINTS:
        raise ConfigError(f"{len(points)} points is over the limit of {MAX_POINTS}")
    checked = []
    for index, point in enumerate(points):
        try:
            checked.append(check_hparams(example, point))
        except ConfigError as err:
            raise ConfigError(f"point {index} {json.dumps(point, sort_keys=True)}: {err}") from None
    return checked


def sweep_dir(bucket: str, name: str) -> str:
    return f"gs://{bucket}/sweeps/{name}"


def point_dir(bucket: str, name: str, point: int) -> str:
    return f"{sweep_dir(bucket, name)}/points/{point}"


def sweep_document(
    name: str, example: str, spec: dict[str, str], points: list[dict[str, Any]], now: float
) -> dict[str, Any]:
    return {
        "version": SWEEP_VERSION,
        "name": name,
        "example": example,
        "created_unix": now,
        "commit": spec.get("trainer-commit", ""),
        "spec": {key: value for key, value in spec.items() if key in SHARED_KEYS},
        "points": [{"index": i, "hparams": point} for i, point in enumerate(points)],
    }


def write_sweep(store: Any, document: dict[str, Any]) -> None:
    """Create sweep.json in ``store`` (the sweep dir); ConfigError if it exists already."""
    from trainer.storage import ABSENT_GENERATION, PreconditionFailed

    data = (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()
    try:
        store.write(SWEEP_FILE, data, if_generation=ABSENT_GENERATION)
    except PreconditionFailed:
        raise ConfigError(
            f"sweep {document['name']} exists ({store.url}/{SWEEP_FILE} is never overwritten): "
            "choose another --name"
        ) from None


def read_sweep(store: Any) -> dict[str, Any] | None:
    data = store.read(SWEEP_FILE)
    if data is None:
        return None
    value: dict[str, Any] = json.loads(data)
    return value


# --- the local sweep record ------------------------------------------------------------------
def _records(state_dir: Path) -> Path:
    return Path(state_dir) / "sweeps"


def save_record(state_dir: Path, record: dict[str, Any]) -> None:
    folder = _records(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle, indent=1, sort_keys=True)
    os.replace(tmp, folder / f"{record['name']}.json")


def read_record(state_dir: Path, name: str) -> dict[str, Any] | None:
    path = _records(state_dir) / f"{name}.json"
    if not path.is_file():
        return None
    value: dict[str, Any] = json.loads(path.read_text())
    return value


def names(state_dir: Path) -> list[str]:
    folder = _records(state_dir)
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def new_record(name: str, engine: str, points: int, **fields: Any) -> dict[str, Any]:
    return {"name": name, "engine": engine, "points": points, "created_unix": time.time(), **fields}


# --- status ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PointState:
    """One point as `invoke status` shows it."""

    index: int
    hparams: dict[str, Any]
    job_dir: str
    state: str  # DONE | FAILED | RUNNING | PENDING | ENDED (its job ended without DONE)
    progress: Any = None  # survival.progress.Progress, when the job dir could be read


def point_state(progress: Any, task_state: str | None) -> str:
    """DONE/FAILED from the job dir; otherwise what runs the point says (a Batch task state,
    or a supervised VM's status)."""
    if progress is not None and progress.done:
        return "DONE"
    if progress is not None and progress.failed:
        return "FAILED"
    if task_state in ("RUNNING", "ASSIGNED"):
        return "RUNNING"
    if task_state in ("PENDING", "QUEUED", "SCHEDULED", None):
        return "PENDING"
    return "ENDED"


def counts(points: list[PointState]) -> dict[str, int]:
    result = {"DONE": 0, "RUNNING": 0, "FAILED": 0, "PENDING": 0, "ENDED": 0}
    for point in points:
        result[point.state] += 1
    return result


def short_hparams(hparams: dict[str, Any]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(hparams.items()))
