"""Acceptance 2: metadata conformance through google-auth (in a subprocess) and raw HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from google.cloud import compute_v1
from lgtest import PROJECT, ROOT, ZONE, fetch, unique

GOOGLE_AUTH_CHECKS = """
import json
import google.auth.transport.requests as tr
from google.auth import compute_engine
from google.auth.compute_engine import _metadata

request = tr.Request()
credentials = compute_engine.Credentials()
credentials.refresh(request)
print(json.dumps({
    "ping": _metadata.ping(request),
    "name": _metadata.get(request, "instance/name"),
    "project": _metadata.get_project_id(request),
    "attrs": _metadata.get(request, "instance/attributes/", recursive=True),
    "scheduling": _metadata.get(request, "instance/scheduling/", recursive=True),
    "token": credentials.token,
    "email": credentials.service_account_email,
}))
"""


@pytest.fixture(scope="module")
def vm(compute, image):
    name = unique("md")
    compute.insert(
        name,
        image,
        startup='echo "METADATA_HOST=$GCE_METADATA_HOST"\n',
        extra_metadata={"color": "blue", "Mixed_Case-key": "v"},
    )
    yield name, compute.metadata_host(name)
    compute.delete(name)


def test_google_auth_sees_a_gce_metadata_server(vm):
    name, host = vm
    env = dict(
        os.environ,
        GCE_METADATA_HOST=host,
        GCE_METADATA_IP=host,
        GCE_METADATA_MTLS_MODE="none",
    )
    out = subprocess.run(
        [sys.executable, "-c", GOOGLE_AUTH_CHECKS],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["ping"] is True
    assert result["name"] == name
    assert result["project"] == PROJECT
    assert result["attrs"]["Mixed_Case-key"] == "v"  # user keys keep their spelling
    assert result["scheduling"] == {
        "automaticRestart": "FALSE",
        "onHostMaintenance": "TERMINATE",
        "preemptible": "TRUE",
        "provisioningModel": "SPOT",
    }
    assert result["token"].startswith("ya29.")
    assert result["email"].endswith("-compute@developer.gserviceaccount.com")


def test_header_rules(vm):
    _, host = vm
    status, headers, body = fetch(host, ROOT + "instance/name", headers={})
    assert status == 403
    assert "Missing Metadata-Flavor:Google header." in body
    status, _, _ = fetch(
        host,
        ROOT + "instance/name",
        headers={"Metadata-Flavor": "Google", "X-Forwarded-For": "1.2.3.4"},
    )
    assert status == 403
    status, headers, _ = fetch(host, "/")
    assert status == 200 and headers["Metadata-Flavor"] == "Google"
    status, headers, body = fetch(host, ROOT + "instance/?recursive=true")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    tree = json.loads(body)
    assert tree["maintenanceEvent"] == "NONE" and tree["preempted"] == "FALSE"
    assert tree["attributes"]["color"] == "blue"
    status, _, body = fetch(host, ROOT + "instance/attributes/color?alt=json")
    assert (status, body) == (200, '"blue"')
    status, _, body = fetch(host, ROOT + "instance/attributes/")
    assert "color" in body.splitlines()
    assert fetch(host, ROOT + "instance/attributes/missing")[0] == 404
    assert fetch(host, ROOT + "instance/service-accounts/default/token/")[0] == 404


def test_wait_for_change_returns_on_set_metadata(vm, compute):
    name, host = vm
    _, headers, body = fetch(host, ROOT + "instance/attributes/color")
    assert body == "blue"
    etag = headers["ETag"]
    result = {}

    def waiter():
        result["answer"] = fetch(
            host, ROOT + f"instance/attributes/color?wait_for_change=true&last_etag={etag}"
        )

    thread = threading.Thread(target=waiter)
    thread.start()
    current = compute.get(name).metadata
    items = [compute_v1.Items(key=i.key, value=i.value) for i in current.items if i.key != "color"]
    items.append(compute_v1.Items(key="color", value="green"))
    compute.instances.set_metadata(
        project=PROJECT,
        zone=ZONE,
        instance=name,
        metadata_resource=compute_v1.Metadata(fingerprint=current.fingerprint, items=items),
    ).result()
    thread.join(timeout=60)
    status, new_headers, new_body = result["answer"]
    assert (status, new_body) == (200, "green")
    assert new_headers["ETag"] != etag


def test_wait_for_change_timeout_returns_unchanged_etag(vm):
    _, host = vm
    _, headers, body = fetch(host, ROOT + "instance/name")
    started = time.monotonic()
    status, new_headers, new_body = fetch(
        host, ROOT + f"instance/name?wait_for_change=true&last_etag={headers['ETag']}&timeout_sec=1"
    )
    assert time.monotonic() - started >= 1.0
    assert (status, new_body, new_headers["ETag"]) == (200, body, headers["ETag"])
    # A stale etag answers at once.
    status, _, now_body = fetch(host, ROOT + "instance/name?wait_for_change=true&last_etag=0")
    assert (status, now_body) == (200, body)


def test_wait_for_change_on_plain_directory_is_400(vm):
    _, host = vm
    assert fetch(host, ROOT + "instance/attributes/?wait_for_change=true")[0] == 400
    assert (
        fetch(host, ROOT + "instance/service-accounts/default/token?wait_for_change=true")[0] == 400
    )
