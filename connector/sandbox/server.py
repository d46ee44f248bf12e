"""Serving the sandbox: werkzeug's threaded WSGI server in one process.

One process on purpose: the sandbox's state (profiles, rate-limit windows, captured requests) lives in memory,
so gunicorn's several workers would each see a different account. Threads keep a held request (timeout fault)
from blocking the others.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server

__all__ = ["SandboxServer"]


#: A WSGI app: :class:`Sandbox` (both ESPs, what ``espbridge sandbox`` serves) or one ESP's part alone.
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class SandboxServer:
    def __init__(self, sandbox: WSGIApp, *, host: str = "127.0.0.1", port: int = 8100) -> None:
        self.sandbox = sandbox
        self._server: BaseWSGIServer = make_server(host, port, sandbox, threaded=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def serve_forever(self) -> None:
        """Serve until SIGINT/SIGTERM (when called from the main thread) or :meth:`shutdown`."""
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, self._on_signal)
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            self._server.server_close()

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=self._server.shutdown, daemon=True).start()  # shutdown() blocks until the loop ends

    def shutdown(self) -> None:
        self._server.shutdown()
