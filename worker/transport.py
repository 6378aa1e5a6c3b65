"""Our Redis broker transport: kombu's, made so that neither a Redis restart nor a raw
queue entry can stop a worker.

**Redis restarts.** On a lost connection Celery closes the connection's channels
(``connection.collect()``, then ``close()``). kombu's Redis ``Channel.close()`` first
drains the BRPOP in flight and deletes auto-delete queues; with Redis down either step
raises, the rest of ``close()`` -- ``closed = True`` included -- is skipped, and the
transport is detached (``client = None``). Celery's second ``close()`` then restores the
unacked messages, builds a new Redis pool, and ``_connparams`` reads
``self.connection.client.hostname`` of a detached transport: AttributeError, which is not
a connection error, so the worker exits with "Unrecoverable error" (kombu#582, kombu#970;
seen in kombu 5.7.0). Here ``close()`` always completes, unacked messages that cannot be
restored now stay in the ``unacked`` hash (``restore_visible`` re-queues them after the
visibility timeout, on any worker), and a detached transport raises a connection error.

**Raw entries.** kombu's Redis transport pops an entry off a queue (BRPOP/RPOP) and decodes
it in the same step. An entry that is not JSON, not an object, or an envelope kombu cannot build a
message from (a bad base64 body, no properties) raises out of ``_brpop_read``, and the
worker dies with "Unrecoverable error" -- the entry is already popped, so it is lost too.

Here each raw entry is checked before it is delivered. One that cannot become a message
is handed to the ``undeliverable`` callback given in the transport options (the worker
keeps it as a dead letter, raw bytes, queue and reason), and the worker goes on. If even
that fails, the raw bytes go to a Redis list beside the queues, never nowhere.

Workers select it with ``broker_transport`` (see :mod:`shared.queues`); producers need
nothing of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger("credits.transport")

Undeliverable = Callable[[bytes, str, str], None]  # (raw bytes, queue, reason)
FALLBACK_LIST = "undeliverable"


class QoS(kombu_redis.QoS):
    def restore_unacked(self, client: Any = None) -> None:
        try:
            super().restore_unacked(client)
        except self.channel.connection_errors as exc:
            # They stay in the unacked hash; restore_visible() re-queues them later.
            log.warning("cannot restore %d unacked message(s) now (%s); they are re-queued "
                        "after the visibility timeout", len(self._delivered), exc)  # fmt: skip
            self._delivered.clear()


class Channel(kombu_redis.Channel):
    QoS = QoS

    def close(self) -> None:
        if self._in_poll:
            try:
                self._brpop_read()
            except (Empty, *self.connection_errors):
                pass  # _brpop_read's finally cleared _in_poll; the socket is dead anyway
        try:
            super().close()
        except self.connection_errors:
            if not self.closed:  # stopped before the virtual close: finish without Redis
                self._disconnect_pools()
                self._close_clients()
                kombu_redis.virtual.Channel.close(self)

    def queue_delete(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().queue_delete(queue, *args, **kwargs)
        except self.connection_errors:
            if not getattr(self, "_closing", False):
                raise
            return None  # an auto-delete queue of a closing channel: Redis is down

    def conn_or_acquire(self, client: Any = None):
        # kombu builds a new redis client object for every queue operation (each ack,
        # each unacked record): building one costs more CPU than the command it sends.
        # One client per pool does the same: a client checks a connection out of its
        # pool for each command, so sharing it is safe.
        if client is not None:
            return nullcontext(client)
        pool = self.pool
        cached = self.__dict__.get("_shared_client")
        if cached is None or cached.connection_pool is not pool:
            cached = self.__dict__["_shared_client"] = self._create_client()
        return nullcontext(cached)

    def _connparams(self, asynchronous: bool = False) -> dict:
        if self.connection is None or self.connection.client is None:
            raise RedisConnectionError("the broker transport is closed")
        return super()._connparams(asynchronous=asynchronous)

    def _brpop_read(self, **options: Any) -> bool:
        # kombu's own, but for the decoding of the entry (kombu/transport/redis.py).
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            self._deliver_checked(item, dest)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _get(self, queue: str) -> Any:
        # The polling path (no event loop) pops too: the same check applies.
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                item = client.rpop(self._q_for_pri(queue, pri))
                if item:
                    self._maybe_update_queues_expire(client, queue)
                    payload = self._decoded(item, queue)
                    if payload is None:
                        raise Empty()
                    return payload
            self._maybe_update_queues_expire(client, queue)
            raise Empty()

    def _deliver_checked(self, item: bytes, queue: str) -> None:
        payload = self._decoded(item, queue)
        if payload is not None:
            self.connection._deliver(payload, queue)

    def _decoded(self, item: bytes, queue: str) -> dict | None:
        """The entry as kombu's message payload, or None once it is kept as undeliverable."""
        try:
            payload = loads(bytes_to_str(item))
            # Everything kombu will do with it before a consumer sees it, done now: build
            # the message, and read where it came from (the unacked record needs both).
            message = self.Message(payload, channel=self)
            message.delivery_info["exchange"], message.delivery_info["routing_key"]
        except Exception as exc:
            self._keep(item, queue, f"undecodable queue entry ({type(exc).__name__}: {exc})")
            return None
        return payload

    def _keep(self, item: bytes, queue: str, reason: str) -> None:
        handler = self.connection.client.transport_options.get("undeliverable")
        try:
            if handler is None:
                raise LookupError("no undeliverable handler configured")
            handler(item if isinstance(item, bytes) else str(item).encode(), queue, reason)
            log.warning("kept an undeliverable entry of %s as a dead letter: %s", queue, reason)
        except Exception:
            # The database is away too: keep the bytes in Redis, beside the queue.
            log.exception("could not record an undeliverable entry of %s; kept in Redis", queue)
            with self.conn_or_acquire() as client:
                client.lpush(FALLBACK_LIST, item)  # the client adds the key prefix


class Transport(kombu_redis.Transport):
    Channel = Channel
