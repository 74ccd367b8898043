"""The SSH key `invoke ssh-logs` uses, created and published the way gcloud does it.

gcloud keeps one key pair at ~/.ssh/google_compute_engine and publishes the public half in the
project's `ssh-keys` metadata as one line ``USER:ssh-rsa AAAA... USER``; the guest agent (and
localgce) turns those lines into authorized keys. The path is a setting (survival.ssh_key_path),
so tests use a temporary one and never touch the real ~/.ssh.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from survival.compute import Compute
from survival.errors import ConfigError

SSH_KEYS_METADATA_KEY = "ssh-keys"
KEY_BITS = 3072


def ensure_key(private_key: Path, user: str) -> str:
    """Create the key pair if missing; return the public key line (type, base64, comment)."""
    public_key = private_key.with_name(private_key.name + ".pub")
    if not private_key.exists():
        private_key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        proc = subprocess.run(
            ["ssh-keygen", "-q", "-t", "rsa", "-b", str(KEY_BITS), "-N", "", "-C", user,
             "-f", str(private_key)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise ConfigError(
                f"ssh-keygen could not create {private_key}: {proc.stderr.strip()} "
                "(install openssh-client: make system-deps)"
            )
    if not public_key.exists():
        raise ConfigError(
            f"{public_key} is missing: delete {private_key} so a new pair is made, or restore it"
        )
    kind, blob, *_ = public_key.read_text().split()
    return f"{kind} {blob} {user}"


def publish_key(compute: Compute, user: str, public_key: str) -> bool:
    """Add ``USER:KEY`` to the project's ssh-keys unless present; True if metadata changed."""
    line = f"{user}:{public_key}"
    current = compute.get_project_metadata().get(SSH_KEYS_METADATA_KEY, "")
    blob = public_key.split()[1]
    for existing in current.splitlines():
        found_user, _, key = existing.partition(":")
        if found_user == user and blob in key.split():
            return False
    updated = "\n".join([*(x for x in current.splitlines() if x.strip()), line])
    compute.set_project_metadata_item(SSH_KEYS_METADATA_KEY, updated)
    return True
