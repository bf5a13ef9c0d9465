"""The broker transport workers consume with: kombu's Redis transport, except that a fetched
message never leaves Redis before it is recorded as unacked.

kombu fetches with BRPOP, which takes the message off its queue, and records it in the `unacked`
hash (QoS.append) only once the worker has read and parsed the reply, or later still when the
reply arrives while the worker has no room for it (kombu then leaves it in the socket). A worker
killed in between takes the message with it: it is in neither the queue nor the hash, so no
sweep can give it back. A run with a row would wait for the relay's repair; a message from a
producer that keeps no row would be lost.

Here the fetch is `BLMOVE` from the queue to a landing list of the channel's own, and one Lua
script (`LAND`) moves what is there into the unacked hash and index, written as QoS.append
writes them. At every moment a message is on its queue, on a landing list or in the unacked
hash, all inside Redis. The delivered message is the one the script returns, so a landing
list emptied by a sweep (below) while its worker was frozen delivers nothing.

Landing lists are swept like unacked messages: `landing_index` scores each by the last time its
channel showed it is alive (on every landing, and on every renewal of worker.visibility), and
any worker's renewal tick moves the content of a landing list not renewed for the visibility
timeout back to the front of its queue (`RECLAIM`). The bound for a killed worker is the one
its unacked messages already have.

Limits, on purpose: BLMOVE waits on one list, so each queue has one list (`priority_steps` is
`[0]`: the API and Celery publish without priorities). A worker of several queues (the worker
kinds have one each) first asks which have messages, then waits on the first of those, or on
each in turn, `MULTI_QUEUE_WAIT` at a time, when all are empty. Redis 6.2 or later (BLMOVE,
LMOVE).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

from kombu.transport import virtual
from kombu.transport.redis import Channel as RedisChannel
from kombu.transport.redis import QoS as RedisQoS
from kombu.transport.redis import Transport as RedisTransport
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis.commands.core import Script

# Between a queue's key and the channel's id in the name of its landing list. kombu's own
# separator (`\x06\x16`) around a word no queue name holds: RECLAIM finds the queue by it.
LANDING_MARK = "\x06\x16landing\x06\x16"
LANDING_INDEX_KEY = "landing_index"
DELIVERY_COUNTER_KEY = "delivery_counter"
# A worker of several queues waits this long on each in turn: a message on the other queue
# waits at most this long per queue before its turn comes.
MULTI_QUEUE_WAIT = 0.1

# KEYS: landing list, unacked hash, unacked index, landing index, delivery counter. ARGV: now.
# Every message on the landing list gets a delivery tag of its own (the message's first tag,
# `#`, a counter), goes into the unacked hash as `[message, exchange, routing key]` and into the
# index scored `now`, as kombu's QoS.append writes them; the list is marked alive. Returns
# [message, 1 if recorded, ...]. A message that is not kombu's JSON envelope is returned
# unrecorded, for the consumer to refuse as kombu would (nothing could ack it).
#
# Why a tag per delivery: a worker frozen past the timeout whose message went to another worker
# acks it when it thaws. With the message's one tag for every delivery, that ack would delete
# the other worker's unacked record; with a tag per delivery it deletes nothing.
LAND = """
redis.call('ZADD', KEYS[4], ARGV[1], KEYS[1])
local landed = {}
while true do
    local raw = redis.call('RPOP', KEYS[1])
    if not raw then break end
    local ok, message = pcall(cjson.decode, raw)
    local properties = ok and type(message) == 'table' and message['properties']
    local route = type(properties) == 'table' and properties['delivery_info']
    local tag = type(route) == 'table' and properties['delivery_tag']
    local recorded = 0
    if type(tag) == 'string' then
        local quoted = '"' .. tag .. '"'
        local first, last = string.find(raw, quoted, 1, true)
        if first then
            tag = string.match(tag, '^[^#]*') .. '#' .. redis.call('INCR', KEYS[5])
            raw = string.sub(raw, 1, first) .. tag .. string.sub(raw, last)
        end
        redis.call('HSET', KEYS[2], tag, '[' .. raw .. ',' .. cjson.encode(route['exchange'])
            .. ',' .. cjson.encode(route['routing_key']) .. ']')
        redis.call('ZADD', KEYS[3], ARGV[1], tag)
        recorded = 1
    end
    table.insert(landed, raw)
    table.insert(landed, recorded)
end
return landed
"""

# KEYS: landing index. ARGV: cutoff, LANDING_MARK.
# Every landing list last marked alive at or before the cutoff goes back, message by message, to
# the end of its queue that is consumed next, and leaves the index. Returns how many messages.
RECLAIM = """
local moved = 0
for _, landing in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])) do
    local at = string.find(landing, ARGV[2], 1, true)
    if at then
        local queue = string.sub(landing, 1, at - 1)
        while redis.call('LMOVE', landing, queue, 'RIGHT', 'RIGHT') do
            moved = moved + 1
        end
    end
    redis.call('ZREM', KEYS[1], landing)
end
return moved
"""


# KEYS: unacked index, unacked hash. ARGV: delivery tag. What kombu's ack deletes, in one
# command instead of a MULTI/EXEC pipeline of two.
ACK = """
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('HDEL', KEYS[2], ARGV[1])
"""


class QoS(RedisQoS):
    """Records in Redis only the messages LAND has not recorded already, and acks with one
    script: every run is acked, and kombu's pipeline costs the consumer thread more than one
    command (62 against 38 us in a loop of 5,000)."""

    _ack: Script | None = None

    def append(self, message: Any, delivery_tag: str) -> None:
        channel = cast(Channel, self.channel)
        if channel.landed_tags.pop(delivery_tag, False):
            virtual.QoS.append(self, message, delivery_tag)
        else:  # fetched another way (basic_get): kombu's own write
            super().append(message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        channel = cast(Channel, self.channel)
        with channel.conn_or_acquire() as client:
            if self._ack is None:
                self._ack = client.register_script(ACK)
            self._ack(
                keys=[self.unacked_index_key, self.unacked_key], args=[delivery_tag], client=client
            )
        virtual.QoS.ack(self, delivery_tag)


class Channel(RedisChannel):
    """A Redis channel that fetches through its landing lists (see the module docstring)."""

    QoS = QoS
    priority_steps = [0]  # noqa: RUF012 (kombu's attribute, read as transport options are)
    landing_index_key = LANDING_INDEX_KEY
    # kombu's, untyped in its stubs.
    _queue_cycle: Any
    connection_errors: tuple[type[BaseException], ...]
    _flush_brpop_reauth: Callable[[], None]
    _create_client: Callable[[], Any]
    _commands_client: Any = None  # see conn_or_acquire

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:
            # The scripts and BLMOVE name their keys themselves; kombu's prefixing client
            # would not rewrite them.
            raise ValueError("the landing fetch does not support global_keyprefix")
        if self.priority_steps != [0]:
            raise ValueError("the landing fetch waits on one list per queue: priority_steps=[0]")
        self.landing_id = uuid.uuid4().hex
        # Tags LAND recorded, until QoS.append sees them (a dict: ordered, and pop with default).
        self.landed_tags: dict[str, bool] = {}
        self._fetching_from: str | None = None
        self._marked: set[str] = set()
        self._land: Script | None = None
        self._reclaim: Script | None = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """kombu builds a new client object on every call (per message: the landing and the
        ack, ~4% of the worker's CPU); one per connection pool does, since a client takes a
        pooled connection per command and may be shared by threads."""
        if client:
            yield client
            return
        pool = self.pool  # kombu makes a new pool after a fork or a failed connect
        if self._commands_client is None or self._commands_client.connection_pool is not pool:
            self._commands_client = self._create_client()
        yield self._commands_client

    def landing_key(self, queue: str) -> str:
        return f"{queue}{LANDING_MARK}{self.landing_id}"

    @property
    def landing_keys(self) -> list[str]:
        """The landing lists this channel has fetched through."""
        return sorted(self._marked)

    def mark_alive(self, keys: list[str] | None = None, now: float | None = None) -> None:
        """Score this channel's landing lists `now`: no sweep takes them for a while."""
        keys = self.landing_keys if keys is None else keys
        if not keys:
            return
        score = time.time() if now is None else now
        with self.conn_or_acquire() as client:
            client.zadd(self.landing_index_key, dict.fromkeys(keys, score))

    def reclaim_stale_landings(self, timeout: float, now: float | None = None) -> int:
        """Give back to their queues the messages on landing lists not marked alive within
        `timeout`: their workers died between the fetch and the landing."""
        cutoff = (time.time() if now is None else now) - timeout
        with self.conn_or_acquire() as client:
            if self._reclaim is None:
                self._reclaim = client.register_script(RECLAIM)
            return int(
                self._reclaim(
                    keys=[self.landing_index_key], args=[cutoff, LANDING_MARK], client=client
                )
            )

    def _brpop_start(self, timeout: float | None = None) -> None:
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        queue = queues[0]
        if len(queues) > 1:
            queue = self._first_with_messages(queues)
            timeout = min(timeout or MULTI_QUEUE_WAIT, MULTI_QUEUE_WAIT)
        landing = self.landing_key(queue)
        if landing not in self._marked:
            # Known to the sweep before anything can land on it.
            self.mark_alive([landing])
            self._marked.add(landing)
        self._fetching_from = queue
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        self.client.connection.send_command("BLMOVE", queue, landing, "RIGHT", "LEFT", timeout or 0)

    def _first_with_messages(self, queues: list[str]) -> str:
        """The first queue, in turn order, that has messages now; else the first one."""
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            for queue in queues:
                pipe.llen(queue)
            lengths = pipe.execute()
        return next((q for q, length in zip(queues, lengths, strict=True) if length), queues[0])

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                moved = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                # As kombu: disconnect, so that the next poll reconnects.
                self.client.connection.disconnect()
                raise
            queue = self._fetching_from
            if queue is None:
                raise virtual.Empty()
            self._queue_cycle.rotate(queue)  # the next wait starts on the next queue
            if moved is None:
                raise virtual.Empty()
            landed = self._land_from(queue)
            if not landed:
                raise virtual.Empty()  # swept back while this worker was stopped
            for raw, recorded in zip(landed[::2], landed[1::2], strict=True):
                message = loads(bytes_to_str(cast(bytes, raw)))
                if recorded:
                    self.landed_tags[message["properties"]["delivery_tag"]] = True
                self.connection._deliver(message, queue)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _land_from(self, queue: str) -> list[bytes | int]:
        keys = [
            self.landing_key(queue),
            self.unacked_key,
            self.unacked_index_key,
            self.landing_index_key,
            DELIVERY_COUNTER_KEY,
        ]
        with self.conn_or_acquire() as client:
            if self._land is None:
                self._land = client.register_script(LAND)
            landed: list[bytes | int] = self._land(keys=keys, args=[time.time()], client=client)
        return landed


class Transport(RedisTransport):
    Channel = Channel
