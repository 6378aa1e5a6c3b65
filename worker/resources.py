"""Per-process resources: database, Redis, event stream, provider, catalog, locks, keys.

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

from shared.adapters.events import EventStream
from shared.adapters.redis_client import make_redis
from shared.client import CreditsClient
from shared.config import Settings
from shared.db import Database
from shared.pricing import Catalog, catalog_from_settings
from worker import metrics
from worker.fulfilment import FulfilmentProvider, make_provider
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
        vendor_store = self.settings.vendor_store_url
        redis = self.redis if vendor_store == self.settings.redis_url else make_redis(vendor_store)
        return make_provider(self.settings, redis)

    @cached_property
    def client(self) -> CreditsClient:
        """For re-sending jobs (sweeps): signed with this worker's key, like any producer."""
        return CreditsClient(settings=self.settings)

    @cached_property
    def verify_keys(self) -> dict[str, str]:
        return self.settings.verify_keys()

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.dispose()
        if "client" in self.__dict__:
            self.client.close()


_BY_PROCESS: dict[tuple[int, int], Resources] = {}


def resources_for(settings: Settings) -> Resources:
    key = (os.getpid(), id(settings))
    found = _BY_PROCESS.get(key)
    if found is None:
        with _LOCK:
            found = _BY_PROCESS.setdefault(key, Resources(settings))
    return found
