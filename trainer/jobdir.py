"""The job directory (layout in docs/architecture.md) and a shell-safe CLI for startup.sh.

    python -m trainer.jobdir is-done URL
    python -m trainer.jobdir status URL
    python -m trainer.jobdir mark-failed URL --reason TEXT [--attempt N]
    python -m trainer.jobdir upload-log URL FILE --name NAME

Values travel as argv only; nothing is ever handed to a shell.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.storage import Store, StoreError, open_store

log = logging.getLogger(__name__)

DONE = "DONE"
FAILED = "FAILED"
LEASE = "LEASE"
ATTEMPTS = "attempts.jsonl"
METRICS = "metrics.jsonl"
MANIFEST = "manifest.json"
CKPT_PREFIX = "ckpt-"
EXPORT_DIR = "export"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _json_or_none(data: bytes | None, what: str) -> dict | None:
    if data is None:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        log.warning("%s is not valid JSON; ignoring it", what)
        return None
    return value if isinstance(value, dict) else None


def _jsonl(data: bytes | None) -> list[dict]:
    records = []
    for line in (data or b"").decode(errors="replace").splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                log.warning("skipping a malformed line in a .jsonl file")
    return records


def _dumps(value: Any) -> bytes:
    return (json.dumps(value, sort_keys=True) + "\n").encode()


class JobDir:
    """Reads and writes one job dir through a Store (local path or gs://)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.url = store.url

    @classmethod
    def open(cls, url: str) -> JobDir:
        return cls(open_store(url))

    # ----- markers and records -------------------------------------------------------------
    def done(self) -> dict | None:
        return _json_or_none(self.store.read(DONE), DONE)

    def failed(self) -> dict | None:
        return _json_or_none(self.store.read(FAILED), FAILED)

    def lease(self) -> dict | None:
        return _json_or_none(self.store.read(LEASE), LEASE)

    def attempts(self) -> list[dict]:
        return _jsonl(self.store.read(ATTEMPTS))

    def metrics(self) -> list[dict]:
        return _jsonl(self.store.read(METRICS))

    def write_done(self, summary: dict) -> None:
        self.store.write(DONE, _dumps(summary))

    def write_failed(self, reason: str, attempt: int | None = None) -> None:
        self.store.write(
            FAILED, _dumps({"reason": reason, "attempt": attempt, "at_unix": time.time()})
        )

    def upload_log(self, local_path: str | Path, name: str) -> None:
        if "/" in name or name in ("", ".", ".."):
            raise StoreError(f"bad log name {name!r}: use a plain file name like attempt-3.log")
        self.store.upload(Path(local_path), f"logs/{name}")

    def append_attempt(self, record: dict) -> None:
        # One writer (the LEASE holder); a rewrite keeps every write a single atomic object.
        found = self.store.read_with_generation(ATTEMPTS)
        old, generation = found if found else (b"", "0")
        self.store.write(ATTEMPTS, old + _dumps(record), if_generation=generation)

    def write_metrics(self, records: list[dict], keep_up_to_step: int | None) -> None:
        """Append records; with keep_up_to_step drop older lines past it (after a fallback)."""
        kept = self.metrics()
        if keep_up_to_step is not None:
            kept = [r for r in kept if r.get("step", 0) <= keep_up_to_step]
        self.store.write(METRICS, b"".join(_dumps(r) for r in kept + records))

    # ----- checkpoints ---------------------------------------------------------------------
    def checkpoint_steps(self) -> list[int]:
        """Steps of every ckpt-<step>/ present (valid or not), newest first."""
        steps = []
        for name in self.store.list_dirs(CKPT_PREFIX):
            suffix = name[len(CKPT_PREFIX) :]
            if suffix.isdigit():
                steps.append(int(suffix))
        return sorted(steps, reverse=True)

    def read_manifest(self, step: int) -> dict | None:
        return _json_or_none(
            self.store.read(f"{CKPT_PREFIX}{step}/{MANIFEST}"), f"{CKPT_PREFIX}{step}/{MANIFEST}"
        )

    def _fetch_verified(self, step: int, local_dir: Path) -> dict | None:
        """Download ckpt-<step> into local_dir and check it; the manifest or None (+ warning)."""
        name = f"{CKPT_PREFIX}{step}"
        manifest = self.read_manifest(step)
        if manifest is None or not isinstance(manifest.get("files"), dict):
            log.warning("checkpoint %s has no valid manifest.json; skipping it", name)
            return None
        for rel, expected in sorted(manifest["files"].items()):
            target = local_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.store.download(f"{name}/{rel}", target)
            except (FileNotFoundError, OSError, Exception) as error:
                log.warning("checkpoint %s: cannot read %s (%s); skipping it", name, rel, error)
                return None
            if sha256_file(target) != expected.get("sha256"):
                log.warning("checkpoint %s: checksum mismatch in %s; skipping it", name, rel)
                return None
        return manifest

    def restore_latest(self, local_dir: Path) -> dict | None:
        """Fetch the newest checkpoint that verifies into local_dir; its manifest, or None."""
        for step in self.checkpoint_steps():
            candidate = Path(tempfile.mkdtemp(prefix=f"ckpt-{step}-", dir=local_dir))
            manifest = self._fetch_verified(step, candidate)
            if manifest is not None:
                manifest["local_path"] = str(candidate)
                return manifest
        return None

    def latest_checkpoint(self) -> dict | None:
        """Manifest of the newest VALID checkpoint (checksums verified), or None."""
        with tempfile.TemporaryDirectory(prefix="survival-verify-") as tmp:
            manifest = self.restore_latest(Path(tmp))
        if manifest is not None:
            manifest.pop("local_path", None)
        return manifest

    def write_checkpoint(
        self,
        step: int,
        fill: Callable[[Path], None],
        manifest_fields: dict,
        before_manifest: Callable[[], None] = lambda: None,
    ) -> dict:
        """Save ckpt-<step>/: ``fill(dir)`` writes the files, the manifest becomes visible last."""
        with self.store.staging_dir() as staging:
            fill(staging)
            files = {
                p.relative_to(staging).as_posix(): {
                    "sha256": sha256_file(p),
                    "bytes": p.stat().st_size,
                }
                for p in sorted(staging.rglob("*"))
                if p.is_file()
            }
            manifest = {**manifest_fields, "step": step, "files": files}
            (staging / MANIFEST).write_bytes(_dumps(manifest))
            self.store.publish_dir(staging, f"{CKPT_PREFIX}{step}", MANIFEST, before_manifest)
        return manifest

    def prune_checkpoints(self, keep: int) -> None:
        """Keep the newest ``keep`` checkpoints that have a manifest; delete the rest."""
        kept = 0
        for step in self.checkpoint_steps():
            if kept < keep and self.read_manifest(step) is not None:
                kept += 1
                continue
            if kept >= keep:
                self.store.delete_tree(f"{CKPT_PREFIX}{step}", first=MANIFEST)

    def export_dir(self, local_dir: Path) -> str:
        """Upload every file of local_dir to export/; returns the export URL."""
        for path in sorted(Path(local_dir).rglob("*")):
            if path.is_file():
                self.store.upload(path, f"{EXPORT_DIR}/{path.relative_to(local_dir).as_posix()}")
        return f"{self.url}/{EXPORT_DIR}"

    # ----- summaries -----------------------------------------------------------------------
    def status(self) -> dict:
        done = self.done()
        failed = self.failed()
        attempts = self.attempts()
        latest = self.latest_checkpoint()
        return {
            "done": done is not None,
            "failed": failed is not None,
            "failed_reason": failed.get("reason") if failed else None,
            "step": int(latest["step"]) if latest else 0,
            "attempts": len(attempts),
            "notices": sum(1 for a in attempts if a.get("notice")),
            "last_checkpoint_unix": latest.get("created_unix") if latest else None,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.jobdir", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    is_done = sub.add_parser("is-done", help="exit 0 if the job has a DONE marker, 1 if not")
    is_done.add_argument("url")
    status = sub.add_parser("status", help="print the job's status as one JSON object")
    status.add_argument("url")
    failed = sub.add_parser("mark-failed", help="write the FAILED marker")
    failed.add_argument("url")
    failed.add_argument("--reason", required=True)
    failed.add_argument("--attempt", type=int, default=None)
    upload = sub.add_parser("upload-log", help="copy a log file to JOB_DIR/logs/NAME")
    upload.add_argument("url")
    upload.add_argument("file")
    upload.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    try:
        job = JobDir.open(args.url)
        if args.command == "is-done":
            return 0 if job.done() is not None else 1
        if args.command == "status":
            print(json.dumps(job.status(), sort_keys=True))
        elif args.command == "mark-failed":
            job.write_failed(args.reason, args.attempt)
        elif args.command == "upload-log":
            if not Path(args.file).is_file():
                print(f"error: log file {args.file} does not exist", file=sys.stderr)
                return 2
            job.upload_log(args.file, args.name)
    except StoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
