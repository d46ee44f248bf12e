"""The Dramatiq broker: Redis when configured, otherwise an embedded in-process broker.

The broker is built from Settings and passed to the actors explicitly (``connector.jobs.tasks``); nothing
here touches dramatiq's global broker, so importing a module never builds one.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from ..settings import Settings


class EmbeddedBroker(StubBroker):
    """An in-memory broker for one machine: worker threads in this process consume what it queues.

    Losing it (a crash) loses only queued job messages, never data: every pending effect is an outbox row or
    an unprojected event in the database, which the relay enqueues again.
    """

    def __init__(self) -> None:
        super().__init__(fail_fast_default=False)


def build_broker(settings: Settings) -> dramatiq.Broker:
    if settings.redis_url:
        return RedisBroker(url=settings.redis_url)  # type: ignore[no-untyped-call]
    return EmbeddedBroker()
