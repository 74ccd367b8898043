"""The image verbs of the Compute adaptor and survival.images' table, against localgce, through
google-cloud-compute (fidelity, not internals)."""

from __future__ import annotations

import os
import sys

import pytest

from localgce import daemon
from localgce.client import ensure_running
from survival import bake
from survival.backend import compute_for
from survival.errors import ImageError
from survival.images import format_table


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("localgce-images")
    endpoints = ensure_running(state_dir, ssh_enabled=False)
    try:
        yield compute_for(bake.LOCAL_PROJECT, endpoints), state_dir
    finally:
        daemon.stop(state_dir)


def image_dir(tmp_path, name):
    root = tmp_path / name
    root.mkdir()
    os.symlink(sys.prefix, root / "venv")
    return str(root)


def test_list_newest_first_deprecate_and_family_lookup(store, tmp_path):
    images, _ = store
    for name in ("fam-a-20260101000000", "fam-a-20260102000000", "fam-a-20260103000000"):
        images.insert_local_image(name, "fam-a", image_dir(tmp_path, name), {"k": "v"})
    images.insert_local_image("other-20260101000000", "other", image_dir(tmp_path, "o"))

    listed = images.list_images("fam-a")
    assert [i.name for i in listed] == [
        "fam-a-20260103000000",
        "fam-a-20260102000000",
        "fam-a-20260101000000",
    ]
    assert listed[0].labels == {"k": "v"}
    assert images.newest_image("fam-a").name == "fam-a-20260103000000"

    images.deprecate_image("fam-a-20260103000000", replacement="fam-a-20260102000000")
    listed = images.list_images("fam-a")
    assert listed[0].deprecated and listed[0].deprecated_state == "DEPRECATED"
    assert not listed[1].deprecated
    assert images.newest_image("fam-a").name == "fam-a-20260102000000"

    table = format_table(listed, "fam-a")
    rows = table.splitlines()
    assert "DEPRECATED" in rows[1] and rows[1].startswith("  fam-a-20260103000000")
    assert rows[2].startswith("* fam-a-20260102000000")


def test_missing_things_say_what_to_do(store):
    images, _ = store
    assert images.newest_image("no-such-family") is None
    assert images.list_images("no-such-family") == []
    assert "bake one with `invoke bake-image`" in format_table([], "no-such-family")
    with pytest.raises(ImageError, match="invoke images"):
        images.deprecate_image("no-such-image")


def test_register_entry_point_registers_a_local_image(store, tmp_path, capsys):
    images, state_dir = store
    source = image_dir(tmp_path, "reg")
    code = bake.main(
        ["register", "--state-dir", str(state_dir), "--name", "reg-20260101000000",
         "--family", "reg", "--source", source, "--label", "survival-kit-commit=abc"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    found = images.newest_image("reg")
    assert found.name == "reg-20260101000000"
    assert found.labels == {"survival-kit-commit": "abc"}
    # Registering the same name again is refused with a one-line reason.
    again = bake.main(
        ["register", "--state-dir", str(state_dir), "--name", "reg-20260101000000",
         "--family", "reg", "--source", source]
    )  # fmt: skip
    assert again == 1
    assert "exists already" in capsys.readouterr().err
