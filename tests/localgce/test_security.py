"""localgce must not hand the machine to whoever reaches a port: header rules of the metadata
server, object names that would escape fake-gcs-server's root, processes a crashed daemon leaves,
and who may call the Compute API and the guest-shutdown endpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1
from google.cloud import storage as gcs
from lgtest import (
    PROJECT,
    ROOT,
    TEST_KNOBS,
    ZONE,
    Compute,
    fetch,
    instance_resource,
    unique,
    wait_for,
)
from test_leaks import descendants, socket_inodes

from localgce import daemon, procs
from localgce.client import compute_client_options, extension_headers
from localgce.httpserver import Request
from localgce.metadata_server import MetadataServer
from localgce.state import Store
from localgce.storage import start_storage


def _metadata_request(flavor: str) -> Request:
    return Request(
        method="GET",
        path="/computeMetadata/v1/instance/name",
        query={},
        headers={"metadata-flavor": flavor},
        body=b"",
    )


def test_metadata_flavor_must_be_exactly_google(tmp_path):
    server = MetadataServer(
        Store(tmp_path), tree=lambda: {"instance": {"name": "vm"}}, guest_shutdown=lambda _: None
    )
    assert server(_metadata_request("Google")).status == 200
    for spelling in ("google", "GOOGLE", "Googl", ""):
        resp = server(_metadata_request(spelling))
        assert resp.status == 403, spelling
        assert b"Missing Metadata-Flavor:Google header." in resp.body


def _raw(url: str, method: str, path: str, body: bytes | None = None, content_type: str = ""):
    """(status, JSON body or None) of one request; HTTP errors are answers."""
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(  # noqa: S310 - loopback
        url + path, data=body, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - loopback
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture
def guarded_storage(tmp_path):
    # Deep enough that every escape attempt below would land inside tmp_path, where we look.
    root = tmp_path / "a" / "b" / "c" / "storage"
    server = start_storage(root, log_path=tmp_path / "fake-gcs-server.log")
    try:
        yield server, tmp_path, root
    finally:
        server.stop()


def test_storage_refuses_object_names_that_leave_its_root(guarded_storage):
    server, outside, root = guarded_storage
    client = gcs.Client(
        project="p",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": server.url},
    )
    bucket = client.create_bucket("bkt")
    # Ordinary use still works through the guard: small (multipart) and chunked (resumable)
    # uploads, downloads, listing, names with dots and slashes.
    bucket.blob("dir/a..b/.hidden").upload_from_string(b"ok")
    big = bucket.blob("ckpt/big.bin", chunk_size=256 * 1024)
    payload = bytes(range(256)) * 4096  # 1 MiB: four resumable chunks
    big.upload_from_string(payload)
    assert bucket.blob("ckpt/big.bin").download_as_bytes() == payload
    assert bucket.blob("dir/a..b/.hidden").download_as_bytes() == b"ok"
    assert sorted(b.name for b in client.list_blobs("bkt")) == ["ckpt/big.bin", "dir/a..b/.hidden"]

    evil = ["../../../../escaped-1", "x/../../../../../escaped-2", "/tmp-escaped-3"]
    for name in evil:
        with pytest.raises(exceptions.BadRequest):
            bucket.blob(name).upload_from_string(b"pwned")  # multipart: the name is in the body
        with pytest.raises(exceptions.BadRequest):
            bucket.blob(name, chunk_size=256 * 1024).upload_from_string(b"p" * 300_000)
    up = "/upload/storage/v1/b/bkt/o?uploadType=media&name="
    raw = [
        ("POST", up + "..%2F" * 4 + "escaped-4"),
        ("POST", up + "%2e%2e%2f" * 4 + "escaped-5"),
        ("POST", up + "%252e%252e%252f" * 4 + "escaped-6"),  # encoded twice
        ("POST", up + "%2Fescaped-7"),
        ("GET", "/storage/v1/b/bkt/o/" + "%2e%2e%2f" * 4 + "fake-gcs-server.log?alt=media"),
        ("GET", "/download/storage/v1/b/bkt/o/" + "..%2F" * 4 + "fake-gcs-server.log?alt=media"),
        ("GET", "/storage/v1/b/bkt/o//etc/hostname?alt=media"),
        ("GET", "/bkt/" + "..%2F" * 4 + "fake-gcs-server.log"),
    ]
    for method, path in raw:
        status, body = _raw(server.url, method, path, b"pwned" if method == "POST" else None,
                            "text/plain")  # fmt: skip
        assert status == 400, (path, status, body[:200])
        error = json.loads(body)["error"]
        assert error["code"] == 400 and error["errors"][0]["reason"] == "invalid", path
    boundary = "BOUNDARY"
    multipart = (
        f"--{boundary}\r\nContent-Type: application/json\r\n\r\n"
        '{"name": "%2e%2e/%2e%2e/%2e%2e/%2e%2e/escaped-8"}'
        f"\r\n--{boundary}\r\nContent-Type: text/plain\r\n\r\npwned\r\n--{boundary}--\r\n"
    ).encode()
    status, _ = _raw(
        server.url,
        "POST",
        "/upload/storage/v1/b/bkt/o?uploadType=multipart",
        multipart,
        f"multipart/related; boundary={boundary}",
    )
    assert status == 400

    leaked = [
        p
        for p in outside.rglob("*")
        if p.is_file() and root not in p.parents and p.name != "fake-gcs-server.log"
    ]
    assert leaked == []


def _listening_inodes() -> set[str]:
    """Socket inodes of every TCP listener on the machine (state 0A is LISTEN)."""
    found = set()
    for name in ("tcp", "tcp6"):
        with open(f"/proc/net/{name}") as fh:
            for line in fh.read().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":
                    found.add(fields[9])
    return found


@pytest.mark.slow
def test_a_restart_after_kill_9_leaves_nothing_of_the_old_daemon(tmp_path, image_dir):
    state_dir = tmp_path / "state"
    first = daemon.start(state_dir, knobs=TEST_KNOBS)
    try:
        opts = compute_client_options(first)
        compute_v1.ImagesClient(**opts).insert(
            project=PROJECT,
            image_resource=compute_v1.Image(
                name="img", raw_disk=compute_v1.RawDisk(source=str(image_dir))
            ),
        ).result()
        instances = compute_v1.InstancesClient(**opts)
        instances.insert(
            project=PROJECT,
            zone=ZONE,
            instance_resource=instance_resource(
                "vm", f"projects/{PROJECT}/global/images/img", startup="sleep 600\n"
            ),
        ).result()
        nat_ip = (
            instances.get(project=PROJECT, zone=ZONE, instance="vm")
            .network_interfaces[0]
            .access_configs[0]
            .nat_i_p
        )
        if os.path.exists("/usr/sbin/sshd"):
            assert nat_ip.startswith("127.0.0.1:"), "an sshd should run for the instance"
        old = {pid: procs.start_time(pid) for pid in descendants(first["pid"])}
        old.pop(first["pid"])
        assert len(old) >= 2, "fake-gcs-server and the startup script at least"
        old_listeners = socket_inodes(set(old)) & _listening_inodes()
        assert old_listeners, "fake-gcs-server (and sshd) listen"

        os.kill(first["pid"], signal.SIGKILL)
        wait_for(lambda: daemon.status(state_dir) is None, what="the daemon to die")
        second = daemon.start(state_dir, knobs=TEST_KNOBS)
        assert second["pid"] != first["pid"]

        # A killed child of the dead daemon stays a zombie until init reaps it: gone all the
        # same (it holds no port, file or memory), so only live ones count.
        survivors = {
            pid
            for pid, started in old.items()
            if procs.start_time(pid) == started and _state(pid) not in (None, "Z")
        }
        assert survivors == set(), {pid: _cmdline(pid) for pid in survivors}
        assert old_listeners & _listening_inodes() == set()
    finally:
        daemon.stop(state_dir)


def _state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (R, S, Z, ...), or None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"


def _api(endpoints, method, path, body=None, headers=None):
    """(status, parsed JSON) of a raw call to the compute endpoint."""
    return _raw_json(endpoints["compute"], method, path, body, headers or {})


def _raw_json(url, method, path, body, headers):
    request = urllib.request.Request(  # noqa: S310 - loopback
        url + path, data=body, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - loopback
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def test_compute_api_needs_the_token_a_loopback_host_and_json(lg, compute, image):
    instances = f"/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances"
    auth = extension_headers(lg)
    assert _api(lg, "GET", instances, headers=auth)[0] == 200

    status, body = _api(lg, "GET", instances)
    assert status == 401
    assert body["error"]["code"] == 401 and body["error"]["status"] == "UNAUTHENTICATED"
    assert body["error"]["errors"][0]["reason"] == "required"
    status, body = _api(lg, "GET", instances, headers={"Authorization": "Bearer guess"})
    assert status == 401 and body["error"]["errors"][0]["reason"] == "authError"
    # Emulator-only endpoints too, and the preempt extension.
    assert _api(lg, "GET", "/localgce/v1/config")[0] == 401
    assert _api(lg, "GET", "/localgce/v1/health")[0] == 401
    assert _api(lg, "POST", f"{instances}/nope/preempt")[0] == 401

    # What a web page can send: a cross-origin text/plain POST (no token), or, after rebinding a
    # DNS name to 127.0.0.1, a request whose Host is that name.
    name = unique("xorigin")
    evil = json.dumps(
        {"name": name, "disks": [{"boot": True, "initializeParams": {"sourceImage": image}}],
         "metadata": {"items": [{"key": "startup-script", "value": "touch /tmp/pwned"}]}}
    ).encode()  # fmt: skip
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "text/plain", **auth}):
        assert _api(lg, "POST", instances, evil, headers)[0] in (401, 415)
    assert _api(lg, "POST", instances, evil, {"Content-Type": "text/plain", **auth})[0] == 415
    port = lg["compute"].rsplit(":", 1)[1]
    for host in (f"evil.example:{port}", "127.0.0.1", f"127.0.0.1:{int(port) + 1}"):
        status, body = _api(lg, "GET", instances, headers={"Host": host, **auth})
        assert status == 403, host
        assert body["error"]["code"] == 403
    assert _api(lg, "GET", instances, headers={"Host": f"localhost:{port}", **auth})[0] == 200
    with pytest.raises(exceptions.NotFound):
        compute.get(name)


def test_token_and_state_dir_are_private(lg):
    state_dir = lg["state_dir"]
    assert os.stat(state_dir).st_mode & 0o777 == 0o700
    for name in ("token", "endpoints.json"):
        assert os.stat(state_dir / name).st_mode & 0o777 == 0o600, name
    assert "token" not in json.loads((state_dir / "endpoints.json").read_text())


def test_guest_tokens_reach_the_api_only_with_compute_scopes(lg, compute, image):
    names = {}
    for scope in ("compute", "devstorage.read_only"):
        name = unique("scope")
        resource = instance_resource(name, image, startup='echo "METADATA_HOST=$GCE_METADATA_HOST"')
        resource.service_accounts = [
            compute_v1.ServiceAccount(
                email="sa@lg-test.iam.gserviceaccount.com",
                scopes=[f"https://www.googleapis.com/auth/{scope}"],
            )
        ]
        compute.instances.insert(project=PROJECT, zone=ZONE, instance_resource=resource).result()
        names[scope] = name
    try:
        tokens = {}
        for scope, name in names.items():
            host = compute.metadata_host(name)
            status, _, body = fetch(host, ROOT + "instance/service-accounts/default/token")
            assert status == 200
            tokens[scope] = json.loads(body)["access_token"]
        path = f"/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances/{names['compute']}"
        bearer = {s: {"Authorization": f"Bearer {t}"} for s, t in tokens.items()}
        assert _api(lg, "GET", path, headers=bearer["compute"])[0] == 200
        status, body = _api(lg, "GET", path, headers=bearer["devstorage.read_only"])
        assert status == 403
        assert body["error"]["status"] == "PERMISSION_DENIED"
        assert body["error"]["details"][0]["reason"] == "ACCESS_TOKEN_SCOPE_INSUFFICIENT"
        # A VM's token is a GCE credential, not the emulator's: no knobs, no chaos.
        assert _api(lg, "GET", "/localgce/v1/config", headers=bearer["compute"])[0] == 403
    finally:
        for name in names.values():
            compute.delete(name)


def test_only_the_guest_itself_can_shut_it_down(lg, compute: Compute, image):
    name = unique("shut")
    compute.insert(name, image, startup='echo "METADATA_HOST=$GCE_METADATA_HOST"\nsleep 600\n')
    try:
        host = compute.metadata_host(name)
        shims = lg["state_dir"] / "instances" / str(compute.get(name).id) / "guest-bin"
        request = urllib.request.Request(
            f"http://{host}/localgce/v1/guest/shutdown?action=poweroff",
            data=b"",
            method="POST",
            headers={"Metadata-Flavor": "Google", "X-Localgce-Shutdown-Secret": "guess"},
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=10)  # noqa: S310 - loopback
        assert err.value.code == 403
        assert compute.status(name) == "RUNNING"
        assert os.stat(shims / "shutdown").st_mode & 0o777 == 0o700
        # The shim, which holds the secret, still works.
        subprocess.run([str(shims / "poweroff")], check=True, timeout=60)
        compute.wait_status(name, "TERMINATED")
    finally:
        compute.delete(name)
