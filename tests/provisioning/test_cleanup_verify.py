"""cleanup.sh and verify.sh on a planted directory tree (keys, histories, credentials)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.provisioning.helpers import run_script

# Fake key material, assembled at run time so that no key-shaped literal sits in the repository
# (secret scanners and the before-stop hook look for "-----BEGIN ... PRIVATE KEY-----").
BEGIN, END = "-----" + "BEGIN", "-----" + "END"


def pem(label: str, body: str) -> str:
    return f"{BEGIN} {label}-----\n{body}\n{END} {label}-----\n"


PEM_KEY = pem("OPENSSH PRIVATE KEY", "b3BlbnNzaC1rZXktdjEAAAAA")
RSA_KEY = pem("RSA PRIVATE KEY", "MIIEpAIBAAKCAQEA")
SA_KEY = f'{{"type": "service_account", "private_key": "{BEGIN} PRIVATE KEY-----\\nMII\\n"}}\n'

# Every planted secret, relative to the tree's root: what cleanup must remove and verify must flag.
SECRETS = {
    "etc/ssh/ssh_host_ed25519_key": PEM_KEY,
    "etc/ssh/ssh_host_rsa_key": RSA_KEY,
    "home/packer/.ssh/authorized_keys": "ssh-ed25519 AAAAC3Nza packer\n",
    "root/.ssh/authorized_keys": "ssh-rsa AAAAB3Nza root\n",
    "home/packer/.ssh/id_ed25519": PEM_KEY,
    "root/.bash_history": "gcloud auth login\n",
    "home/packer/.bash_history": "sudo reboot\n",
    "home/packer/.python_history": "import os\n",
    "root/.config/gcloud/credentials.db": "sqlite",
    "root/.config/gcloud/application_default_credentials.json": '{"refresh_token": "x"}\n',
    "home/packer/.boto": "[Credentials]\n",
    "home/packer/.git-credentials": "https://user:token@example.invalid\n",
    # Found by content, whatever the name.
    "opt/app/deploy.pem": RSA_KEY,
    "srv/keys/svc.json": SA_KEY,
}
# Removed by cleanup but not secrets (verify does not look at them).
LITTER = {
    "etc/ssh/ssh_host_ed25519_key.pub": "ssh-ed25519 AAAA host\n",
    "var/cache/apt/archives/foo_1.0_amd64.deb": "deb",
    "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease": "lists",
    "root/.cache/pip/http/abc": "cache",
    "tmp/build-leftover": "tmp",
    "tmp/.hidden-leftover": "tmp",
    "var/tmp/x": "tmp",
}
# Must survive: look-alikes that are not secrets.
KEEP = {
    "etc/ssh/sshd_config": "PermitRootLogin no\n",
    "etc/ssl/certs/ca.pem": pem("CERTIFICATE", "MIIB"),
    # Library source mentioning key markers inside strings (google-auth does this).
    "opt/survival/lib/helper.py": (
        f'MARK = "{BEGIN} PRIVATE KEY-----"\ninfo = {{"private_key": k}}\n'
    ),
    "opt/survival/lib/config.json": '{"private_key_path": "/nowhere"}\n',
    "home/packer/notes.txt": "nothing secret\n",
}


def plant(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "image"
    plant(root, SECRETS | LITTER | KEEP)
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    return root


def verify_secrets(root: Path):
    return run_script("verify.sh", "--root", str(root), "--checks", "secrets")


def test_verify_flags_every_planted_secret(tree):
    result = verify_secrets(tree)
    assert result.returncode == 5
    for rel in SECRETS:
        assert str(tree / rel) in result.stderr, rel
    for rel in KEEP:
        assert str(tree / rel) not in result.stderr, rel


def test_cleanup_removes_them_and_verify_passes_after(tree):
    result = run_script("cleanup.sh", "--root", str(tree))
    assert result.returncode == 0, result.stderr
    for rel in SECRETS | LITTER:
        assert not (tree / rel).exists(), rel
    for rel, text in KEEP.items():
        assert (tree / rel).read_text() == text, rel
    assert (tree / "var/cache/apt/archives").is_dir()  # contents go, directories stay
    assert (tree / "etc/machine-id").read_text() == ""
    assert verify_secrets(tree).returncode == 0

    again = run_script("cleanup.sh", "--root", str(tree))
    assert again.returncode == 0
    assert "0 paths removed" in again.stderr


@pytest.mark.parametrize("rel", sorted(SECRETS))
def test_verify_fails_when_one_remains(tree, rel):
    assert run_script("cleanup.sh", "--root", str(tree)).returncode == 0
    plant(tree, {rel: SECRETS[rel]})
    result = verify_secrets(tree)
    assert result.returncode == 5
    assert f"secret left on the image: {tree / rel}" in result.stderr


def test_full_verify_on_a_cleaned_tree_with_an_environment(tree):
    """All checks, with the tree's environment linked to this test run's (it has the trainer)."""
    assert run_script("cleanup.sh", "--root", str(tree)).returncode == 0
    venv = tree / "opt/survival/venv"
    os.symlink(sys.prefix, venv)
    result = run_script("verify.sh", "--root", str(tree), "--expect-gpu", "no")
    assert result.returncode == 0, result.stderr
    assert "all checks passed" in result.stderr
    assert "trainer.examples.sklearn_digits --help runs" in result.stderr


def test_verify_fails_without_an_environment(tree):
    assert run_script("cleanup.sh", "--root", str(tree)).returncode == 0
    result = run_script("verify.sh", "--root", str(tree), "--checks", "secrets,env")
    assert result.returncode == 5
    assert "no Python environment" in result.stderr


def test_cleanup_needs_an_explicit_root():
    result = run_script("cleanup.sh")
    assert result.returncode == 2
    assert "--root is required" in result.stderr
