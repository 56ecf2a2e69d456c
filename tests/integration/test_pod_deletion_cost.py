"""The worker's pod-deletion-cost patch against a real HTTPS server playing the Kubernetes API's pod endpoint.

Without a cluster this is the contract: the path of our own pod, the service account's bearer token, a merge
patch of metadata.annotations, over TLS verified with the service account's CA.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from taskproc.config import Settings
from taskproc.worker.podcost import ANNOTATION, PodDeletionCost

from support import wait_for


@dataclass
class FakeApiServer:
    port: int
    requests: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200


@pytest.fixture
def apiserver(tmp_path: Path) -> Iterator[FakeApiServer]:
    # A self-signed certificate for 127.0.0.1, which is also the "cluster CA" the service account mounts.
    sa_dir = tmp_path / "serviceaccount"
    sa_dir.mkdir()
    key = tmp_path / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(sa_dir / "ca.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    (sa_dir / "token").write_text("the-token\n")
    state = FakeApiServer(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_PATCH(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.requests.append(
                {
                    "path": self.path,
                    "authorization": self.headers.get("Authorization"),
                    "content_type": self.headers.get("Content-Type"),
                    "body": json.loads(body),
                }
            )
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"kind":"Pod"}')

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sa_dir / "ca.crt", key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def make(apiserver: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, busy: list[int]) -> PodDeletionCost:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(apiserver.port))
    settings = Settings(
        pod_deletion_cost=True,
        pod_name="worker-abc",
        pod_namespace="jobs",
        serviceaccount_dir=tmp_path / "serviceaccount",
    )
    return PodDeletionCost(settings, lambda: busy[0], interval_s=0.05)


async def test_patches_its_own_pods_annotation_with_the_running_count_when_it_changes(
    apiserver: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = [0]
    cost = make(apiserver, tmp_path, monkeypatch, busy)
    assert await cost.sync() is True
    assert await cost.sync() is False  # unchanged: no request
    busy[0] = 3
    assert await cost.sync() is True
    assert apiserver.requests == [
        {
            "path": "/api/v1/namespaces/jobs/pods/worker-abc",
            "authorization": "Bearer the-token",
            "content_type": "application/merge-patch+json",
            "body": {"metadata": {"annotations": {ANNOTATION: value}}},
        }
        for value in ("0", "3")
    ]


async def test_a_refused_patch_is_retried_at_the_next_round_and_never_raises(
    apiserver: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = [2]
    cost = make(apiserver, tmp_path, monkeypatch, busy)
    apiserver.status = 403  # no RBAC yet
    assert await cost.sync() is False
    apiserver.status = 200
    assert await cost.sync() is True
    assert [r["body"]["metadata"]["annotations"][ANNOTATION] for r in apiserver.requests] == ["2", "2"]
    assert cost.sent == 2


async def test_the_background_duty_follows_the_count(
    apiserver: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    busy = [1]
    cost = make(apiserver, tmp_path, monkeypatch, busy)
    task = asyncio.create_task(cost.run())
    try:
        await asyncio.to_thread(wait_for, lambda: cost.sent == 1, timeout=10, what="first patch")
        busy[0] = 0
        await asyncio.to_thread(wait_for, lambda: cost.sent == 0, timeout=10, what="second patch")
    finally:
        task.cancel()
    assert [r["body"]["metadata"]["annotations"][ANNOTATION] for r in apiserver.requests] == ["1", "0"]
