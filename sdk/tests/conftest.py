"""A recording ``httpx.MockTransport`` stands in for the ingestion service: the SDK's own tests need no server
(the integration tests in tests/e2e/ run the SDK against a real ``espbridge serve``)."""

from __future__ import annotations

import json
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from espbridge import Client

Responder = Callable[[httpx.Request, list[dict[str, Any]]], httpx.Response]


class Sink:
    """Records every request's messages; answers 200 unless ``responder`` says otherwise."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.batches: list[list[dict[str, Any]]] = []
        self.responder: Responder | None = None
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = request.content
        if request.headers.get("Content-Encoding") == "gzip":
            body = zlib.decompress(body, wbits=31)
        batch: list[dict[str, Any]] = json.loads(body)["batch"]
        with self.lock:
            self.requests.append(request)
            response = self.responder(request, batch) if self.responder else None
            if response is None or response.status_code < 300:
                self.batches.append(batch)
        return response or httpx.Response(200, json={"success": True, "accepted": len(batch)})

    @property
    def messages(self) -> list[dict[str, Any]]:
        with self.lock:
            return [message for batch in self.batches for message in batch]

    def message_ids(self) -> list[str]:
        return [message["messageId"] for message in self.messages]


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def make_client(sink: Sink, spool_dir: Path) -> Iterator[Callable[..., Client]]:
    """``make_client(**options)``: a Client on the sink with a private spool; shut down after the test."""
    clients: list[Client] = []

    def make(**options: Any) -> Client:
        options.setdefault("spool_dir", spool_dir)
        options.setdefault("transport", httpx.MockTransport(sink))
        client = Client("test-write-key", "http://espbridge.test", **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.shutdown(timeout=2)
