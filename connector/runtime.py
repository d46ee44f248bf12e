"""Everything one process needs at run time, built from Settings: database, broker, actors, relay."""

from __future__ import annotations

import logging
import threading
import time

import dramatiq

from .ingest.committer import GroupCommitter
from .jobs.broker import build_broker
from .jobs.relay import Relay
from .jobs.tasks import Jobs
from .settings import Settings
from .store import Database, connect
from .tenancy import WriteKeyCache

log = logging.getLogger(__name__)

#: A store's projection is kicked at most this often per process; the relay tick catches anything skipped.
KICK_INTERVAL = 0.05


class Runtime:
    """Owns the process's connections and background threads; ``close()`` releases them."""

    def __init__(
        self, settings: Settings, *, db: Database | None = None, broker: dramatiq.Broker | None = None
    ) -> None:
        self.settings = settings
        self.db = db or connect(settings.database_url, pool_size=settings.db_pool_size)
        self.broker = broker or build_broker(settings)
        self.jobs = Jobs(settings=settings, db=self.db, broker=self.broker)
        self.relay = Relay(self.jobs)
        self.committer = GroupCommitter(self.db)
        self.write_keys = WriteKeyCache(self.db)
        self._worker: dramatiq.Worker | None = None
        self._last_kick: dict[int, float] = {}
        self._kick_lock = threading.Lock()

    def start_background(self) -> None:
        """Start Dramatiq worker threads and the relay in this process."""
        self._worker = dramatiq.Worker(self.broker, worker_threads=self.settings.worker_threads, worker_timeout=100)
        self._worker.start()
        self.relay.start()

    def kick_projection(self, store_id: int) -> None:
        """Ask for the store's new events to be projected soon. Never raises: the relay is the safety net."""
        now = time.monotonic()
        with self._kick_lock:
            if now - self._last_kick.get(store_id, 0.0) < KICK_INTERVAL:
                return
            self._last_kick[store_id] = now
        try:
            self.jobs.project_events.send(store_id)
        except Exception:
            log.warning("could not enqueue projection for store %s; the relay will", store_id, exc_info=True)

    def close(self) -> None:
        self.committer.close()
        self.relay.stop()
        if self._worker is not None:
            self._worker.stop(timeout=10_000)
            self._worker = None
        self.broker.close()
        self.db.dispose()
