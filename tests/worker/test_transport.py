"""The worker's fetch (worker.transport) on real Redis: a message is on its queue, on a landing
list or unacked, never only in a worker's socket, and a dead worker's landing list goes back."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from queue import Empty
from typing import Any

import pytest
from kombu import Connection, Consumer, Message, Producer
from kombu import Queue as KombuQueue
from kombu.transport.redis import Channel as RedisChannel
from redis.asyncio import Redis

from shared.settings import settings
from tests.environment import TEST_REDIS_URL
from tests.fixtures.waiting import wait_until
from worker.transport import LANDING_MARK, Channel
from worker.visibility import transport_options

QUEUE = KombuQueue("transport-test", routing_key="transport-test")
OTHER = KombuQueue("transport-other", routing_key="transport-other")
TIMEOUT = settings.broker_visibility_timeout
TRANSPORT = "worker.transport:Transport"


@pytest.fixture
def connect(redis: Redis) -> Iterator[Callable[..., Connection]]:
    """Connections to the test's Redis index (the `redis` fixture emptied it first)."""
    opened: list[Connection] = []

    def open_connection(transport: str = TRANSPORT) -> Connection:
        connection = Connection(
            TEST_REDIS_URL, transport=transport, transport_options=transport_options()
        )
        opened.append(connection)
        return connection

    yield open_connection
    for connection in opened:
        connection.release()


def publish(connection: Connection, body: dict[str, int], queue: KombuQueue = QUEUE) -> None:
    Producer(connection.channel(), serializer="json").publish(
        body, routing_key=queue.routing_key, declare=[queue]
    )


def consuming(connection: Connection, *queues: KombuQueue) -> tuple[RedisChannel, list[Message]]:
    """A channel consuming `queues` as a worker does (late acks); the messages it receives."""
    channel = connection.channel()
    assert isinstance(channel, RedisChannel)
    received: list[Message] = []
    Consumer(channel, list(queues), callbacks=[lambda _body, m: received.append(m)]).consume()
    return channel, received


def keys_of(channel: RedisChannel) -> dict[str, int]:
    """Messages on the queues, on landing lists, and unacked."""
    with channel.conn_or_acquire() as client:
        landing = sum(int(client.llen(key)) for key in client.keys(f"*{LANDING_MARK}*"))
        return {
            "queued": int(client.llen(QUEUE.name)),
            "landing": landing,
            "unacked": int(client.hlen(channel.unacked_key)),
        }


def fetched_unread(
    connect: Callable[..., Connection], transport: str = TRANSPORT
) -> tuple[Connection, RedisChannel, list[Message]]:
    """A consumer of QUEUE that sent its fetch of one message, which Redis answered and nobody
    read yet: what a worker killed or frozen mid-fetch left."""
    connection = connect(transport)
    channel, received = consuming(connection, QUEUE)
    assert isinstance(channel, Channel) == (transport == TRANSPORT)
    publish(connect(), {"n": 1})
    poller: Any = getattr(connection.transport, "cycle")  # noqa: B009 (not in kombu's stubs)
    poller._register_BRPOP(channel)  # as the worker's poll sends it
    wait_until(lambda: keys_of(channel)["queued"] == 0, 5, "Redis to serve the fetch")
    return connection, channel, received


def test_a_consumed_message_is_recorded_unacked_as_kombu_records_it(
    connect: Callable[..., Connection],
) -> None:
    connection = connect()
    channel, received = consuming(connection, QUEUE)
    assert isinstance(channel, Channel)
    publish(connect(), {"n": 1})

    connection.drain_events(timeout=5)

    [message] = received
    with channel.conn_or_acquire() as client:
        record = client.hget(channel.unacked_key, message.delivery_tag)
        assert client.zscore(channel.unacked_index_key, message.delivery_tag) is not None
    # What kombu's QoS.append writes and its sweep reads back.
    raw: object = getattr(message, "_raw")  # noqa: B009 (kombu's, untyped in its stubs)
    assert json.loads(record) == [raw, "", QUEUE.routing_key]
    assert keys_of(channel) == {"queued": 0, "landing": 0, "unacked": 1}
    message.ack()
    assert keys_of(channel) == {"queued": 0, "landing": 0, "unacked": 0}
    with channel.conn_or_acquire() as client:
        assert client.zscore(channel.unacked_index_key, message.delivery_tag) is None


def test_kombus_own_fetch_loses_a_message_its_worker_never_read(
    connect: Callable[..., Connection],
) -> None:
    """Why the transport exists: with BRPOP the message is gone from Redis once served."""
    _, channel, received = fetched_unread(connect, transport="redis")
    channel.client.connection.disconnect()  # killed

    assert keys_of(channel) == {"queued": 0, "landing": 0, "unacked": 0}
    assert received == []


def test_a_message_its_killed_worker_never_read_goes_back_to_its_queue(
    connect: Callable[..., Connection],
) -> None:
    _, dead, _ = fetched_unread(connect)
    dead.client.connection.disconnect()  # killed
    assert keys_of(dead) == {"queued": 0, "landing": 1, "unacked": 0}

    live_connection = connect()
    live, received = consuming(live_connection, QUEUE)
    assert isinstance(live, Channel)
    # Not before the visibility timeout: the worker might only be slow.
    assert live.reclaim_stale_landings(TIMEOUT) == 0
    assert live.reclaim_stale_landings(TIMEOUT, now=time.time() + TIMEOUT + 1) == 1
    assert keys_of(live)["queued"] == 1

    live_connection.drain_events(timeout=5)
    [message] = received
    assert message.payload == {"n": 1}
    message.ack()
    assert keys_of(live) == {"queued": 0, "landing": 0, "unacked": 0}


def test_a_live_workers_landing_list_is_not_taken(connect: Callable[..., Connection]) -> None:
    connection, channel, received = fetched_unread(connect)
    assert isinstance(channel, Channel)

    # Long after the fetch, but marked alive by the renewal since.
    later = time.time() + 10 * TIMEOUT
    channel.mark_alive(now=later)
    assert channel.reclaim_stale_landings(TIMEOUT, now=later) == 0

    connection.drain_events(timeout=5)
    assert [m.payload for m in received] == [{"n": 1}]
    assert keys_of(channel) == {"queued": 0, "landing": 0, "unacked": 1}


def test_a_frozen_worker_whose_landing_list_was_swept_delivers_nothing(
    connect: Callable[..., Connection],
) -> None:
    _, frozen, received = fetched_unread(connect)
    assert isinstance(frozen, Channel)

    sweeper, _ = consuming(connect(), OTHER)
    assert isinstance(sweeper, Channel)
    assert sweeper.reclaim_stale_landings(TIMEOUT, now=time.time() + TIMEOUT + 1) == 1

    # Thawed: it reads the reply Redis sent before the sweep, and delivers nothing from it.
    with pytest.raises(Empty):
        frozen._brpop_read()
    assert received == []
    assert keys_of(frozen) == {"queued": 1, "landing": 0, "unacked": 0}


def test_a_worker_of_two_queues_takes_from_the_one_with_messages(
    connect: Callable[..., Connection],
) -> None:
    connection = connect()
    _, received = consuming(connection, QUEUE, OTHER)
    producer = connect()
    for n in range(20):
        publish(producer, {"n": n}, OTHER)
    publish(producer, {"n": 100}, QUEUE)

    started = time.monotonic()
    while len(received) < 21:
        connection.drain_events(timeout=5)
    elapsed = time.monotonic() - started

    assert sorted(m.payload["n"] for m in received) == [*range(20), 100]
    # Not one empty wait per message on the idle queue: a backlog drains at fetch speed.
    assert elapsed < 20 * 0.1


def test_a_thawed_workers_ack_leaves_the_next_holders_record_alone(
    connect: Callable[..., Connection],
) -> None:
    frozen_connection, next_connection = connect(), connect()
    frozen, first = consuming(frozen_connection, QUEUE)
    publish(connect(), {"n": 1})
    frozen_connection.drain_events(timeout=5)
    # Frozen past the timeout: its record ages, and a sweep gives the message back.
    with frozen.conn_or_acquire() as client:
        client.zadd(frozen.unacked_index_key, {first[0].delivery_tag: time.time() - 2 * TIMEOUT})
    frozen.qos.restore_visible(num=None, interval=1)
    holder, second = consuming(next_connection, QUEUE)
    next_connection.drain_events(timeout=5)

    [old], [new] = first, second
    assert new.payload == old.payload == {"n": 1}
    assert new.delivery_tag != old.delivery_tag
    old.ack()  # thawed
    assert keys_of(holder)["unacked"] == 1
    new.ack()
    assert keys_of(holder) == {"queued": 0, "landing": 0, "unacked": 0}
