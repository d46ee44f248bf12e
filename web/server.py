"""``espbridge serve``: gunicorn running the app factory, one app (and Runtime) per worker process.

The app is built after fork, in each worker, so no database connection or thread crosses a fork. With the
embedded broker each worker also runs Dramatiq worker threads and a relay; the outbox claims keep those
relays from sending a row twice.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from connector.settings import Settings

from . import create_app


class Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, *, workers: int, threads: int) -> None:
        self.settings = settings
        self.options: dict[str, Any] = {
            "bind": f"{settings.host}:{settings.port}",
            "workers": workers,
            "threads": threads,
            "worker_class": "gthread" if threads > 1 else "sync",
            "timeout": 60,
            "graceful_timeout": 20,
            "keepalive": 5,
            "loglevel": settings.log_level.lower(),
            "accesslog": None,
            "errorlog": "-",
            "proc_name": "espbridge",
            "worker_exit": _close_runtime,
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        app = create_app(self.settings)
        if self.settings.embedded_broker:
            app.extensions["espbridge"].start_background()
        return app


def _close_runtime(_server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    if isinstance(app, Flask):
        app.extensions["espbridge"].close()
