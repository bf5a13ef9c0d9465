"""The renewal of held messages (worker.visibility) against kombu's own Redis sweep, on real
Redis: what a live worker renews stays unacked; what nobody renews goes back to its queue."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from kombu import Connection, Message, Producer
from kombu import Queue as KombuQueue
from kombu.transport.redis import Channel as RedisChannel
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.settings import settings
from tests.environment import TEST_REDIS_URL
from worker.visibility import (
    BLOCKED_MAIN_PROCESS_BOUND,
    RENEW_INTERVAL,
    VisibilityRenewal,
    held_tags,
    renew,
    transport_options,
)

QUEUE = KombuQueue("visibility-test", routing_key="visibility-test")
TIMEOUT = settings.broker_visibility_timeout


@pytest.fixture
def channel(redis: Redis) -> Iterator[RedisChannel]:
    """A channel configured as the worker's (the `redis` fixture emptied the index first)."""
    with Connection(TEST_REDIS_URL, transport_options=transport_options()) as connection:
        channel = connection.channel()
        assert isinstance(channel, RedisChannel)
        yield channel
        channel.close()


def deliver(channel: RedisChannel, count: int) -> list[Message]:
    """Publish `count` messages and take them unacked, as a worker's consumer does."""
    producer = connection_producer(channel)
    for number in range(count):
        producer.publish({"n": number}, routing_key=QUEUE.routing_key, declare=[QUEUE])
    bound = QUEUE(channel)
    messages = [bound.get(no_ack=False) for _ in range(count)]
    assert all(message is not None for message in messages)
    return [message for message in messages if message is not None]


def connection_producer(channel: RedisChannel) -> Producer:
    return Producer(channel, serializer="json")


def age_everything(channel: RedisChannel, seconds: float) -> None:
    """Make every unacked message look delivered `seconds` ago (its worker then went quiet)."""
    with channel.conn_or_acquire() as client:
        tags = client.zrange(channel.unacked_index_key, 0, -1)
        client.zadd(channel.unacked_index_key, dict.fromkeys(tags, time.time() - seconds))


def sweep(channel: RedisChannel) -> int:
    """kombu's sweep, as any worker runs it; returns how many messages went back to the queue."""
    before = waiting(channel)
    channel.qos.restore_visible(num=None, interval=1)
    return waiting(channel) - before


def waiting(channel: RedisChannel) -> int:
    with channel.conn_or_acquire() as client:
        return int(client.llen(QUEUE.name))


def test_the_defaults_renew_six_times_per_timeout_and_allow_a_long_blocked_main_process() -> None:
    assert TIMEOUT == 30
    assert RENEW_INTERVAL == 5
    assert BLOCKED_MAIN_PROCESS_BOUND == 20
    options = transport_options()
    assert options["unacked_restore_interval"] == RENEW_INTERVAL
    assert options["unacked_mutex_expire"] == RENEW_INTERVAL


def test_renewed_messages_are_not_restored_and_unrenewed_ones_are(channel: RedisChannel) -> None:
    deliver(channel, 3)
    assert len(held_tags(channel.qos)) == 3

    age_everything(channel, TIMEOUT + 1)
    assert renew(channel, held_tags(channel.qos)) == 3
    assert sweep(channel) == 0, "a renewed message must stay with its worker"

    age_everything(channel, TIMEOUT + 1)  # its worker stopped renewing
    assert sweep(channel) == 3


def test_an_acked_message_is_not_brought_back_by_a_renewal(channel: RedisChannel) -> None:
    first, second = deliver(channel, 2)
    first.ack()
    assert held_tags(channel.qos) == [second.delivery_tag]
    # Even a stale list of tags (taken before the ack) adds nothing back: XX only updates.
    assert renew(channel, [str(first.delivery_tag), str(second.delivery_tag)]) == 1
    with channel.conn_or_acquire() as client:
        assert client.zscore(channel.unacked_index_key, first.delivery_tag) is None
        assert client.hexists(channel.unacked_key, first.delivery_tag) == 0


def test_a_message_restored_to_the_queue_is_not_renewed_back(channel: RedisChannel) -> None:
    [message] = deliver(channel, 1)
    age_everything(channel, TIMEOUT + 1)
    assert sweep(channel) == 1  # the worker went quiet too long: another worker will get it
    assert renew(channel, [str(message.delivery_tag)]) == 0
    with channel.conn_or_acquire() as client:
        assert client.zcard(channel.unacked_index_key) == 0


def test_the_consumer_step_renews_what_the_task_consumer_holds(channel: RedisChannel) -> None:
    deliver(channel, 2)
    age_everything(channel, TIMEOUT + 1)
    consumer = SimpleNamespace(task_consumer=SimpleNamespace(channel=channel))
    VisibilityRenewal.renew_held(consumer)
    assert sweep(channel) == 0
    # Before the task consumer exists (or while it reconnects) the step does nothing.
    VisibilityRenewal.renew_held(SimpleNamespace(task_consumer=None))


def test_a_failed_renewal_is_logged_and_does_not_stop_the_timer(
    channel: RedisChannel, caplog: pytest.LogCaptureFixture
) -> None:
    deliver(channel, 1)
    consumer = SimpleNamespace(task_consumer=SimpleNamespace(channel=UnreachableChannel(channel)))
    VisibilityRenewal.renew_held(consumer)  # must not raise: the timer would stop for good
    assert "could not renew the messages this worker holds" in caplog.text


class UnreachableChannel(RedisChannel):
    """A channel holding messages whose Redis went away: every command fails."""

    def __init__(self, holding: RedisChannel) -> None:  # no super(): it would connect
        self._qos = holding.qos

    @contextmanager
    def conn_or_acquire(self, client: object = None) -> Iterator[object]:
        raise RedisConnectionError("Connection refused")
        yield
