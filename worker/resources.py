"""Per-process resources: database, Redis, event stream, provider, catalog, locks.

Prefork children must not share sockets with their parent, so everything is created
lazily in the process that uses it, keyed by pid. ``memory://`` stands in for Redis with
an in-process fakeredis server, for the embedded demo and unit tests.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from shared.config import Settings
from shared.db import Database
from shared.events import EventStream
from shared.pricing import Catalog, catalog_from_settings
from shared.redis_client import make_redis
from worker import metrics
from worker.fulfilment import FulfilmentProvider, StubProvider, StubRates
from worker.locks import Locks

_LOCK = threading.Lock()


@dataclass
class Resources:
    settings: Settings

    @cached_property
    def db(self) -> Database:
        return Database(self.settings.database_url)

    @cached_property
    def redis(self) -> Any:
        return make_redis(self.settings.redis_url)

    @cached_property
    def events(self) -> EventStream:
        return EventStream(
            self.redis, self.settings.stream, maxlen=self.settings.events_stream_maxlen
        )

    @cached_property
    def catalog(self) -> Catalog:
        return catalog_from_settings(self.settings)

    @cached_property
    def locks(self) -> Locks:
        locks = Locks(self.redis, self.settings)
        locks.wait_observer = metrics.lock_waited
        return locks

    @cached_property
    def provider(self) -> FulfilmentProvider:
        rates = StubRates.from_settings(self.settings)
        return StubProvider(self.redis, rates, prefix=self.settings.key_prefix)

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.dispose()


_BY_PROCESS: dict[tuple[int, int], Resources] = {}


def resources_for(settings: Settings) -> Resources:
    key = (os.getpid(), id(settings))
    found = _BY_PROCESS.get(key)
    if found is None:
        with _LOCK:
            found = _BY_PROCESS.setdefault(key, Resources(settings))
    return found
