"""A recording ``httpx.MockTransport`` stands in for the ingestion service: the SDK's own tests need no server
(the integration tests in tests/e2e/ run the SDK against a real ``espbridge serve``)."""

from __future__ import annotations

import http.server
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


class HttpSink:
    """A real HTTP/1.1 keep-alive server on 127.0.0.1 (for what a mock transport cannot show: connections)."""

    def __init__(self) -> None:
        self.connections = 0
        self.messages: list[dict[str, Any]] = []
        self.statuses: list[int] = []  # answers to give first, in order; then 200
        self.hang_up = False  # close each connection after answering, without saying so (a restart, an idle cut)
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                sink.connections += 1

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = zlib.decompress(body, wbits=31)
                status = sink.statuses.pop(0) if sink.statuses else 200
                if status == 200:
                    sink.messages.extend(json.loads(body)["batch"])
                answer = b'{"success": true}'
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                self.close_connection = sink.hang_up

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_sink() -> Iterator[HttpSink]:
    sink = HttpSink()
    yield sink
    sink.close()
