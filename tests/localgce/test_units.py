"""Small pure pieces: the serial buffer's byte offsets and the list filter grammar."""

from __future__ import annotations

import pytest

from localgce.errors import ApiError
from localgce.listing import list_response, matches, parse_filter
from localgce.serial import SerialPort


def test_serial_offsets_survive_trimming(tmp_path):
    changes = []
    port = SerialPort(tmp_path / "serial.log", limit_bytes=100, on_base_change=changes.append)
    port.write(b"a" * 150)
    data, start, nxt = port.read(0)
    assert (len(data), start, nxt) == (100, 50, 150)  # only the last limit_bytes are answered
    port.write(b"b" * 60)  # file grows past 2x the limit → trimmed, base moves
    assert changes and changes[-1] == port.base
    data, start, nxt = port.read(150)
    assert (data, start, nxt) == (b"b" * 60, 150, 210)
    assert port.read(210) == (b"", 210, 210)
    reopened = SerialPort(tmp_path / "serial.log", base=port.base, limit_bytes=100)
    assert reopened.read(150)[0] == b"b" * 60  # the base persisted in state is enough


def test_filter_grammar():
    vm = {
        "name": "train-1",
        "status": "RUNNING",
        "labels": {"job": "exp1"},
        "scheduling": {"preemptible": True},
    }
    assert matches(vm, parse_filter('name = "train-1"'))
    assert matches(vm, parse_filter("(status = RUNNING) AND (labels.job = exp1)"))
    assert matches(vm, parse_filter("name eq 'train-.*' scheduling.preemptible = true"))
    assert not matches(vm, parse_filter("status != RUNNING"))
    assert matches(vm, parse_filter("name = train-*"))
    with pytest.raises(ApiError):
        parse_filter("status = RUNNING OR status = STOPPING")


def test_paging_tokens_walk_every_item():
    items = [{"name": f"i{n}"} for n in range(5)]
    seen, token = [], ""
    while True:
        page = list_response("k", items, {"maxResults": "2", "pageToken": token}, "self")
        seen += [i["name"] for i in page["items"]]
        token = page.get("nextPageToken")
        if not token:
            break
    assert seen == [f"i{n}" for n in range(5)]


def test_script_argv_applies_the_shebang_like_the_kernel(tmp_path):
    from localgce.guest import script_argv

    script = tmp_path / "startup-script"
    assert script_argv("echo hi\n", script) == ["/bin/bash", str(script)]
    assert script_argv("  \n#!/usr/bin/env python3\nprint(1)\n", script) == [
        "/usr/bin/env",
        "python3",
        str(script),
    ]
    # Everything after the interpreter is one argument, as on Linux.
    assert script_argv("#!/bin/bash -e -u\n", script) == ["/bin/bash", "-e -u", str(script)]
    assert script_argv("#!\n", script) == ["/bin/bash", str(script)]
