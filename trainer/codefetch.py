"""Download the trainer code's git bundle from Cloud Storage on the VM (startup.sh calls this).

``python -m trainer.codefetch download gs://BUCKET/code/COMMIT.bundle DEST [--max-bytes N]``

The credentials are the VM's own: an access token of the instance's service account from the
metadata server (``instance/service-accounts/default/token``), which carries the scopes the
instance was created with (the kit's default includes devstorage.read_write). No key file and no
secret from metadata is involved. With ``STORAGE_EMULATOR_HOST`` set (localgce), the request goes
to that endpoint, with the same token. The object is written to a temporary file next to DEST and
renamed into place once its size matches what the bucket said; its content (a bundle of the
right commit) is checked by startup.sh with git. Exit 0 on success; otherwise 1 and one line on
stderr saying what is wrong and what to do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from trainer.gce import MetadataError, metadata_get

TOKEN_PATH = "instance/service-accounts/default/token"  # noqa: S105 - a metadata path
SCOPES_PATH = "instance/service-accounts/default/scopes"
PROJECT_PATH = "project/project-id"
# Scopes that allow reading an object (https://cloud.google.com/storage/docs/oauth-scopes).
STORAGE_READ_SCOPES = frozenset(
    "https://www.googleapis.com/auth/" + name
    for name in (
        "devstorage.read_only",
        "devstorage.read_write",
        "devstorage.full_control",
        "cloud-platform",
        "cloud-platform.read-only",
    )
)
# A bundle of a training repository is megabytes; refuse anything absurd before downloading.
DEFAULT_MAX_BYTES = 2 << 30
# gs://BUCKET/OBJECT with the bucket rules startup.sh applies to the job dir.
GS_URL_RE = re.compile(r"^gs://([a-z0-9][a-z0-9._-]{1,61}[a-z0-9])/([A-Za-z0-9._=/-]+)$")


class FetchError(Exception):
    """The bundle cannot be downloaded; the message says why and what to do."""


def parse_url(url: str) -> tuple[str, str]:
    match = GS_URL_RE.match(url)
    if not match or ".." in match.group(2).split("/") or match.group(2).endswith("/"):
        raise FetchError(f"{url[:200]!r} is not a gs://BUCKET/OBJECT URL")
    return match.group(1), match.group(2)


def access_token() -> str:
    """The default service account's access token, from the metadata server."""
    try:
        text, _ = metadata_get(TOKEN_PATH)
        token = json.loads(text)["access_token"]
    except (MetadataError, ValueError, KeyError, TypeError) as error:
        raise FetchError(
            f"no access token from the metadata server ({error}); the VM needs a service "
            "account (survival.service_account)"
        ) from None
    if not isinstance(token, str) or not token:
        raise FetchError("the metadata server returned an empty access token")
    return token


def check_scopes() -> None:
    """FetchError when the instance's scopes cannot read Cloud Storage (a clear message beats
    the 403 every request would get)."""
    try:
        text, _ = metadata_get(SCOPES_PATH)
    except MetadataError:
        return  # not knowing is no reason to refuse: the download will tell
    scopes = {line.strip() for line in text.splitlines() if line.strip()}
    if scopes and not scopes & STORAGE_READ_SCOPES:
        raise FetchError(
            "the VM's service account has no Cloud Storage scope (it has "
            f"{', '.join(sorted(scopes))}); keep devstorage.read_write in survival.scopes"
        )


def _client(token: str) -> Any:
    from google.cloud import storage
    from google.oauth2.credentials import Credentials

    try:
        project, _ = metadata_get(PROJECT_PATH)
    except MetadataError:
        project = os.environ.get("GOOGLE_CLOUD_PROJECT", "")
    # STORAGE_EMULATOR_HOST (localgce) is honoured by the client itself; the token still goes.
    return storage.Client(project=project or None, credentials=Credentials(token))


@contextlib.contextmanager
def _errors(url: str):
    from google.api_core import exceptions

    try:
        yield
    except (exceptions.Forbidden, exceptions.Unauthorized) as error:
        raise FetchError(
            f"access to {url} denied ({_first_line(error)}); the VM's service account needs "
            "roles/storage.objectViewer (or objectUser) on the job bucket"
        ) from None
    except exceptions.NotFound:
        raise FetchError(
            f"{url} does not exist; push the code again (`invoke push-code --branch BRANCH`)"
        ) from None
    except (exceptions.GoogleAPIError, OSError) as error:
        # OSError: the connection failed after the client's retries (requests' errors are
        # OSErrors), or the local disk refused the file.
        raise FetchError(f"cannot download {url}: {_first_line(error)}") from None


def download(url: str, dest: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """Download ``url`` to ``dest``; returns its size in bytes."""
    bucket_name, name = parse_url(url)
    check_scopes()
    client = _client(access_token())
    with _errors(url):
        blob = client.bucket(bucket_name).get_blob(name)
        if blob is None:
            raise FetchError(
                f"{url} does not exist; push the code again (`invoke push-code --branch BRANCH`)"
            )
        if blob.size is None or blob.size > max_bytes:
            raise FetchError(f"{url} is {blob.size} bytes, over the {max_bytes}-byte limit")
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(f".{dest.name}.partial")
        try:
            # Pinned to the generation whose size was checked.
            blob.download_to_filename(str(partial), if_generation_match=blob.generation)
            size = partial.stat().st_size
            if size != blob.size:
                raise FetchError(f"{url}: downloaded {size} bytes, expected {blob.size}")
            os.replace(partial, dest)
        finally:
            partial.unlink(missing_ok=True)
    return size


def _first_line(error: Exception) -> str:
    text = getattr(error, "message", None) or str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.codefetch", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("download", help="download a gs:// object with the VM's credentials")
    get.add_argument("url")
    get.add_argument("dest", type=Path)
    get.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES)
    args = parser.parse_args(argv)
    try:
        size = download(args.url, args.dest, args.max_bytes)
    except FetchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"downloaded {args.url} ({size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
