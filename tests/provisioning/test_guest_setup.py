"""guest-setup.sh on a directory tree: log dir and journald forwarding, idempotent."""

from __future__ import annotations

from tests.provisioning.helpers import run_script


def test_guest_setup_writes_journald_forwarding_and_log_dir(tmp_path):
    first = run_script("guest-setup.sh", "--root", str(tmp_path))
    assert first.returncode == 0, first.stderr
    conf = tmp_path / "etc/systemd/journald.conf.d/90-survival.conf"
    text = conf.read_text()
    assert "ForwardToConsole=yes" in text
    assert "TTYPath=/dev/ttyS0" in text
    assert (tmp_path / "var/log/survival").is_dir()

    second = run_script("guest-setup.sh", "--root", str(tmp_path))
    assert second.returncode == 0, second.stderr
    assert conf.read_text() == text  # rewritten whole, never appended


def test_guest_setup_rejects_a_bad_user_name(tmp_path):
    result = run_script("guest-setup.sh", "--root", str(tmp_path), "--user", "x;rm")
    assert result.returncode == 2
    assert "not a valid user name" in result.stderr
