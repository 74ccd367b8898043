"""One store abstraction for a job dir: a local directory or a ``gs://bucket/prefix`` URL.

Names are ``/``-separated paths relative to the store's root. Every write is atomic:
local files go to a temporary name, are fsynced and renamed; gs:// writes are single object
uploads. ``generation`` strings make read-compare-write safe between two writers (the LEASE):
on gs:// they are object generations, checked by the server with ``if_generation_match``;
locally they are (inode, mtime_ns) pairs checked under an ``flock`` of the root directory.
The generation ``"0"`` means "the object must not exist yet".
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ABSENT_GENERATION = "0"
STAGING_PREFIX = ".staging-"
# A local job dir's scratch area (restores, checkpoint checks, temporary files); each process
# owns a subdirectory of it and sweeps those of dead processes (trainer/scratch.py).
SCRATCH_DIR = f"{STAGING_PREFIX}scratch"


class PreconditionFailed(Exception):
    """A conditional write or delete lost: the object's generation was not the expected one."""


class StoreError(Exception):
    """A job dir URL or object that cannot be used; the message says what to do."""


class JobDirUnusable(StoreError):
    """The job dir itself cannot be used, and trying again will not help (the runner exits with
    the code of the subclass, which startup.sh does not retry)."""


class JobDirMissing(JobDirUnusable):
    """The gs:// bucket does not exist."""


class JobDirDenied(JobDirUnusable):
    """The job dir is read-only, or this identity may not write it."""


class JobDirFull(JobDirUnusable):
    """No space (or quota) left where the job dir or its scratch area lives."""


_DENIED_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def unusable_from_os_error(error: OSError, where: str) -> JobDirUnusable | None:
    """The JobDirUnusable an OSError stands for (read-only, denied, full), or None."""
    detail = f"{error.strerror or error} ({error.filename})" if error.filename else str(error)
    if error.errno in _DENIED_ERRNOS:
        return JobDirDenied(f"cannot write {where}: {detail}")
    if error.errno in _FULL_ERRNOS:
        return JobDirFull(f"no space left for {where}: {detail}")
    return None


def check_name(name: str) -> str:
    """An object name (or a listing prefix) must stay under the store's root: relative, with
    no ``..`` component. Both stores apply this, so a name read from the job dir itself (a
    manifest) can never reach outside it."""
    if name.startswith("/") or "\\" in name or ".." in name.split("/"):
        raise StoreError(f"bad object name {name!r}")
    return name


def open_store(url: str) -> Store:
    """Return the store for a local path or a gs://bucket/prefix URL."""
    if not url:
        raise StoreError("empty job dir: pass --job-dir PATH or gs://bucket/prefix")
    if url.startswith("gs://"):
        return GcsStore(url)
    if "://" in url:
        raise StoreError(f"unsupported job dir URL {url!r}: use a local path or gs://bucket/prefix")
    return LocalStore(url)


class Store:
    """Interface shared by LocalStore and GcsStore."""

    url: str

    def read(self, name: str) -> bytes | None:
        found = self.read_with_generation(name)
        return None if found is None else found[0]

    def read_with_generation(self, name: str) -> tuple[bytes, str] | None:
        raise NotImplementedError

    def write(self, name: str, data: bytes, if_generation: str | None = None) -> str:
        """Write atomically; with ``if_generation`` only if the current generation matches."""
        raise NotImplementedError

    def delete(self, name: str, if_generation: str | None = None) -> None:
        raise NotImplementedError

    def list(self, prefix: str = "") -> list[str]:
        """Names of the files under ``prefix`` (recursive), excluding staging areas."""
        raise NotImplementedError

    def list_dirs(self, prefix: str = "") -> list[str]:
        """Top-level 'directory' names that start with ``prefix``."""
        raise NotImplementedError

    def download(self, name: str, local_path: Path) -> None:
        """Copy ``name`` to local_path; FileNotFoundError if it does not exist (any backend)."""
        raise NotImplementedError

    def upload(self, local_path: Path, name: str) -> None:
        self.write(name, Path(local_path).read_bytes())

    def delete_tree(self, prefix: str, first: str | None = None) -> None:
        """Delete every file under ``prefix/``; ``first`` (e.g. the manifest) goes first."""
        names = self.list(prefix.rstrip("/") + "/")
        if first is not None and f"{prefix}/{first}" in names:
            names.remove(f"{prefix}/{first}")
            names.insert(0, f"{prefix}/{first}")
        for name in names:
            self.delete(name)

    @contextlib.contextmanager
    def staging_dir(self) -> Iterator[Path]:
        """A local scratch directory for building a directory to publish (removed afterwards)."""
        path = Path(tempfile.mkdtemp(prefix="survival-staging-"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def publish_dir(
        self,
        local_dir: Path,
        name: str,
        last_file: str,
        before_last: Callable[[], None] = lambda: None,
        before_each: Callable[[], None] = lambda: None,
    ) -> None:
        """Make ``local_dir`` appear as ``name/``, with ``last_file`` becoming visible last.
        ``before_each`` runs before each other file is published (a cancelled background save
        raises from it); ``before_last`` before ``last_file``."""
        raise NotImplementedError

    def sweep_staging(self) -> None:
        """Remove leftovers of interrupted publishes (only call while holding the LEASE)."""

    def scratch_root(self) -> Path:
        """A local directory for this job's scratch files: restores, checks, temporary files.
        Each trainer works in its own subdirectory and removes those of dead trainers."""
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"survival-job-{digest}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_fsync(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


class LocalStore(Store):
    def __init__(self, path: str) -> None:
        self.root = Path(path).expanduser().absolute()
        self.url = str(self.root)

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Serialises read-compare-write between processes sharing this job dir.
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    @staticmethod
    def _generation(path: Path) -> str:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return ABSENT_GENERATION
        return f"{stat.st_ino}-{stat.st_mtime_ns}"

    def read_with_generation(self, name: str) -> tuple[bytes, str] | None:
        path = self._path(name)
        try:
            with open(path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                return handle.read(), f"{stat.st_ino}-{stat.st_mtime_ns}"
        except FileNotFoundError:
            return None

    def _atomic_write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            _write_fsync(tmp, data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    def write(self, name: str, data: bytes, if_generation: str | None = None) -> str:
        path = self._path(name)
        if if_generation is None:
            self._atomic_write(path, data)
            return self._generation(path)
        with self._locked():
            current = self._generation(path)
            if current != if_generation:
                raise PreconditionFailed(f"{name}: generation {current}, expected {if_generation}")
            self._atomic_write(path, data)
            return self._generation(path)

    def delete(self, name: str, if_generation: str | None = None) -> None:
        path = self._path(name)
        if if_generation is None:
            path.unlink(missing_ok=True)
            return
        with self._locked():
            current = self._generation(path)
            if current != if_generation:
                raise PreconditionFailed(f"{name}: generation {current}, expected {if_generation}")
            path.unlink(missing_ok=True)

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        names = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(STAGING_PREFIX)]
            rel = Path(dirpath).relative_to(self.root)
            for filename in filenames:
                if ".tmp-" in filename:
                    continue
                name = (rel / filename).as_posix()
                if name.startswith(prefix):
                    names.append(name)
        return sorted(names)

    def list_dirs(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if entry.is_dir() and entry.name.startswith(prefix)
        )

    def download(self, name: str, local_path: Path) -> None:
        shutil.copyfile(self._path(name), local_path)

    def upload(self, local_path: Path, name: str) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            shutil.copyfile(local_path, tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    @contextlib.contextmanager
    def staging_dir(self) -> Iterator[Path]:
        # Inside the job dir, so publishing is a rename on the same filesystem.
        self.root.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def publish_dir(
        self, local_dir, name, last_file, before_last=lambda: None, before_each=lambda: None
    ) -> None:
        local_dir = Path(local_dir)
        if local_dir.parent != self.root:
            raise StoreError("publish_dir needs a directory from staging_dir()")
        for path in sorted(local_dir.rglob("*")):
            if path.is_file() and path.name != last_file:
                before_each()
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        before_last()
        last = local_dir / last_file
        if last.exists():
            with open(last, "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(local_dir)
        target = self._path(name)
        if target.exists():
            # Re-saving a step (e.g. after its checkpoint was found corrupt): invalidate first.
            (target / last_file).unlink(missing_ok=True)
            trash = self.root / f"{STAGING_PREFIX}trash-{secrets.token_hex(4)}"
            os.replace(target, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(local_dir, target)
        _fsync_dir(self.root)

    def delete_tree(self, prefix: str, first: str | None = None) -> None:
        # The manifest goes first (the directory stops being a checkpoint), then the whole
        # directory, so no empty ckpt-N/ is left behind.
        target = self._path(prefix.rstrip("/"))
        if first is not None:
            (target / first).unlink(missing_ok=True)
        if not target.is_dir():
            return
        trash = self.root / f"{STAGING_PREFIX}trash-{secrets.token_hex(4)}"
        os.replace(target, trash)
        shutil.rmtree(trash, ignore_errors=True)
        _fsync_dir(self.root)

    def sweep_staging(self) -> None:
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            # The scratch area holds other live processes' directories; it sweeps itself.
            if entry.name == SCRATCH_DIR:
                continue
            if entry.name.startswith(STAGING_PREFIX) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)

    def scratch_root(self) -> Path:
        # Inside the job dir: the job's own staging area, on the job dir's filesystem.
        return self.root / SCRATCH_DIR


class GcsStore(Store):
    """gs://bucket/prefix via google-cloud-storage. ``client``: a storage.Client to use (the
    orchestrator passes one pointed at its endpoint); by default one is made from the
    environment (it honours STORAGE_EMULATOR_HOST). ``read_retry``: the retry policy of reads
    and listings (google.api_core Retry); by default the library's, which keeps retrying an
    unreachable server for 120 s — too long for a caller that polls and would rather try
    again later (the orchestrator's supervisor)."""

    def __init__(self, url: str, client: Any = None, read_retry: Any = None) -> None:
        rest = url[len("gs://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise StoreError(f"bad job dir URL {url!r}: expected gs://bucket/prefix")
        self.url = url.rstrip("/")
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self._client = client
        self._read = {} if read_retry is None else {"retry": read_retry}
        self._bucket = None

    @property
    def bucket(self):
        if self._bucket is None:
            self._bucket = (self._client or _gcs_client()).bucket(self.bucket_name)
        return self._bucket

    def _key(self, name: str) -> str:
        check_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    @contextlib.contextmanager
    def _errors(self, missing_bucket: bool = False) -> Iterator[None]:
        """Turn a denied request (and, where no object could be missing, a 404: a missing
        bucket) into a one-line JobDirUnusable error."""
        from google.api_core import exceptions

        try:
            yield
        except (exceptions.Forbidden, exceptions.Unauthorized) as error:
            raise JobDirDenied(f"access to {self.url} denied: {_gcs_message(error)}") from None
        except exceptions.NotFound as error:
            if not missing_bucket:
                raise
            raise JobDirMissing(
                f"bucket gs://{self.bucket_name} of job dir {self.url} does not exist "
                f"({_gcs_message(error)})"
            ) from None

    def _rel(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def read_with_generation(self, name: str) -> tuple[bytes, str] | None:
        from google.api_core import exceptions

        blob = self.bucket.blob(self._key(name))
        try:
            with self._errors():
                data = blob.download_as_bytes(**self._read)
        except exceptions.NotFound:
            return None
        return data, str(blob.generation)

    def write(self, name: str, data: bytes, if_generation: str | None = None) -> str:
        from google.api_core import exceptions

        blob = self.bucket.blob(self._key(name))
        kwargs = {} if if_generation is None else {"if_generation_match": int(if_generation)}
        try:
            with self._errors(missing_bucket=True):
                blob.upload_from_string(data, content_type="application/octet-stream", **kwargs)
        except exceptions.PreconditionFailed as error:
            # The client retries uploads: when the first try landed but its reply was lost,
            # the retry finds the generation moved on. If the object now holds exactly what we
            # wrote (a LEASE body carries a per-write nonce, so nobody else writes the same
            # bytes), that write was ours and it succeeded.
            found = self.read_with_generation(name)
            if found is not None and found[0] == data:
                return found[1]
            raise PreconditionFailed(f"{name}: {error}") from error
        return str(blob.generation)

    def delete(self, name: str, if_generation: str | None = None) -> None:
        from google.api_core import exceptions

        blob = self.bucket.blob(self._key(name))
        kwargs = {} if if_generation is None else {"if_generation_match": int(if_generation)}
        try:
            with self._errors():
                blob.delete(**kwargs)
        except exceptions.NotFound:
            return
        except exceptions.PreconditionFailed as error:
            raise PreconditionFailed(f"{name}: {error}") from error

    def list(self, prefix: str = "") -> list[str]:
        with self._errors(missing_bucket=True):
            blobs = self.bucket.client.list_blobs(
                self.bucket_name, prefix=self._key(prefix), **self._read
            )
            return sorted(self._rel(blob.name) for blob in blobs)

    def list_dirs(self, prefix: str = "") -> list[str]:
        dirs = set()
        for name in self.list(prefix):
            head, sep, _ = name.partition("/")
            if sep:
                dirs.add(head)
        return sorted(dirs)

    def download(self, name: str, local_path: Path) -> None:
        from google.api_core import exceptions

        try:
            with self._errors():
                self.bucket.blob(self._key(name)).download_to_filename(str(local_path))
        except exceptions.NotFound as error:
            # The same error a LocalStore raises, so callers need not know the backend.
            raise FileNotFoundError(f"{self.url}/{name}: {error}") from error

    def upload(self, local_path: Path, name: str) -> None:
        blob = self.bucket.blob(self._key(name))
        with self._errors(missing_bucket=True):
            blob.upload_from_filename(str(local_path), content_type="application/octet-stream")

    def publish_dir(
        self, local_dir, name, last_file, before_last=lambda: None, before_each=lambda: None
    ) -> None:
        local_dir = Path(local_dir)
        # A previous object set under this name (corrupt or partial) must not mix with ours.
        self.delete_tree(name, first=last_file)
        files = [p for p in sorted(local_dir.rglob("*")) if p.is_file()]
        for path in files:
            if path.name != last_file:
                before_each()
                self.upload(path, f"{name}/{path.relative_to(local_dir).as_posix()}")
        before_last()
        last = local_dir / last_file
        self.write(f"{name}/{last_file}", last.read_bytes(), if_generation=ABSENT_GENERATION)


def _gcs_message(error) -> str:
    return getattr(error, "message", None) or str(error).splitlines()[0]


def _gcs_client():
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        project = os.environ.get("GOOGLE_CLOUD_PROJECT", "local-project")
        return storage.Client(project=project, credentials=AnonymousCredentials())
    return storage.Client()
