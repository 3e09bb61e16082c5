"""The shared Redis: the ``redis`` config section, plugins inheriting its URL, and pub/sub channels that
survive a lost connection. Against a real redis-server (tests/redis_server.py)."""

from __future__ import annotations

import asyncio

import pytest
from redis import asyncio as aioredis

from plugins.cache.store import MemoryStore, RedisStore
from plugins.ratelimit.redis_buckets import RedisBuckets
from proxy.config import SECRET_MASK, parse
from proxy.errors import ConfigError
from proxy.gateway import Gateway
from proxy.plugin_loader import build_plugins, plugin_options
from proxy.shared_redis import ChannelListener, SharedRedis
from tests.fault_proxy import Fault, FaultProxy

CACHE_AND_LIMITS = """
redis: {url: "redis://:hunter2@127.0.0.1:6399/2"}
plugins:
  - name: cache
  - name: ratelimit
    options: {per_principal: {rate: 60, per_seconds: 60}}
"""


def test_the_redis_section_is_optional_and_its_password_is_never_shown() -> None:
    assert parse("{}").redis is None
    config = parse('redis: {url: "redis://:hunter2@127.0.0.1:6399/2"}')
    assert config.redis is not None
    assert config.redis.url == "redis://:hunter2@127.0.0.1:6399/2"
    assert config.redis.key_prefix == "portico"
    assert "hunter2" not in repr(config) and SECRET_MASK in repr(config)
    assert "hunter2" not in config.model_dump_json()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:6379", "redis://, rediss:// or unix://"),
        ("redis://", "must name a host"),
        ("redis://127.0.0.1:notaport/0", "bad port or database"),
        ("redis://127.0.0.1:6379/zero", "bad port or database"),
    ],
)
def test_a_bad_redis_url_is_a_clear_config_error(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=f"redis.url.*{why}"):
        parse(f'redis: {{url: "{url}"}}')


def test_unknown_keys_in_the_redis_section_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"redis\.hostname"):
        parse('redis: {url: "redis://127.0.0.1", hostname: x}')


async def test_plugins_with_a_redis_url_option_inherit_the_sections_url() -> None:
    plugins = {named.name: named.plugin for named in build_plugins(parse(CACHE_AND_LIMITS))}
    cache, limits = plugins["cache"], plugins["ratelimit"]
    assert isinstance(cache.store, RedisStore)  # type: ignore[attr-defined]
    assert isinstance(limits.store, RedisBuckets)  # type: ignore[attr-defined]
    assert plugin_options(parse(CACHE_AND_LIMITS), "cache").redis_url == "redis://:hunter2@127.0.0.1:6399/2"
    for plugin in plugins.values():
        await plugin.close()  # type: ignore[attr-defined]


async def test_a_plugins_own_redis_url_wins_and_without_the_section_state_stays_in_memory() -> None:
    own = parse(
        'redis: {url: "redis://127.0.0.1:6399/2"}\n'
        'plugins: [{name: cache, options: {redis_url: "redis://127.0.0.1:6400/5"}}]'
    )
    assert plugin_options(own, "cache").redis_url == "redis://127.0.0.1:6400/5"
    alone = build_plugins(parse("plugins: [cache]"))[0].plugin
    assert isinstance(alone.store, MemoryStore)  # type: ignore[attr-defined]


async def test_keys_carry_the_prefix(redis_url: str) -> None:
    shared = SharedRedis(redis_url, "tenant-a", 1.0)
    try:
        assert shared.key("session", "abc") == "tenant-a:session:abc"
        await shared.client.set(shared.key("probe"), b"1")
        assert await shared.client.get("tenant-a:probe") == b"1"
    finally:
        await shared.close()


async def test_a_listener_hears_what_is_published_and_catches_up_after_losing_its_connection(
    redis_url: str,
) -> None:
    heard: list[bytes] = []
    subscriptions = 0

    async def on_message(data: bytes) -> None:
        heard.append(data)

    async def on_subscribed() -> None:
        nonlocal subscriptions
        subscriptions += 1

    listener = ChannelListener(
        redis_url, "portico:test", on_message, on_subscribed=on_subscribed, retry_seconds=0.1
    )
    publisher = aioredis.Redis.from_url(redis_url)
    listener.start()
    try:
        await asyncio.wait_for(listener.subscribed.wait(), 5)
        assert subscriptions == 1
        await publisher.publish("portico:test", b"first")
        await publisher.publish("portico:elsewhere", b"not ours")
        await _until(lambda: heard == [b"first"])

        # Redis drops the subscriber's connection: the listener subscribes again and says so.
        assert await publisher.client_kill_filter(_type="pubsub") == 1
        await _until(lambda: subscriptions == 2 and listener.subscribed.is_set())
        await publisher.publish("portico:test", b"second")
        await _until(lambda: heard == [b"first", b"second"])
    finally:
        await listener.stop()
        await publisher.aclose()


async def test_a_handler_that_fails_is_logged_and_the_listener_goes_on(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    heard: list[bytes] = []

    async def on_message(data: bytes) -> None:
        if data == b"bad":
            raise ValueError("cannot read this one")
        heard.append(data)

    listener = ChannelListener(redis_url, "portico:test", on_message)
    publisher = aioredis.Redis.from_url(redis_url)
    listener.start()
    try:
        await asyncio.wait_for(listener.subscribed.wait(), 5)
        await publisher.publish("portico:test", b"bad")
        await publisher.publish("portico:test", b"good")
        await _until(lambda: heard == [b"good"])
        assert "handling a message of the Redis channel portico:test failed" in caplog.text
    finally:
        await listener.stop()
        await publisher.aclose()


async def _until(condition: object, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)


def test_several_instances_without_a_shared_request_state_secret_are_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    warned = "request_state.secret is not"
    Gateway(parse('redis: {url: "redis://127.0.0.1:6399/0"}'), [])
    assert warned in caplog.text
    caplog.clear()
    secret = "s" * 40
    Gateway(parse(f'redis: {{url: "redis://127.0.0.1:6399/0"}}\nrequest_state: {{secret: "{secret}"}}'), [])
    Gateway(parse("{}"), [])
    assert warned not in caplog.text


async def test_a_connection_that_goes_silent_is_noticed_and_followed_again(redis_url: str) -> None:
    """A network path that drops everything closes nothing: only the listener's PINGs find out."""
    subscriptions = 0
    heard: list[bytes] = []

    async def on_subscribed() -> None:
        nonlocal subscriptions
        subscriptions += 1

    async def on_message(data: bytes) -> None:
        heard.append(data)

    async with FaultProxy.for_url(redis_url) as proxy:
        listener = ChannelListener(
            proxy.rewrite(redis_url),
            "portico:test",
            on_message,
            on_subscribed=on_subscribed,
            retry_seconds=0.1,
            check_seconds=0.2,
        )
        publisher = aioredis.Redis.from_url(redis_url)
        listener.start()
        try:
            await asyncio.wait_for(listener.subscribed.wait(), 5)
            proxy.set_fault(Fault.blackhole())
            await _until(lambda: not listener.subscribed.is_set())
            proxy.set_fault(Fault.passing())
            await _until(lambda: subscriptions == 2 and listener.subscribed.is_set())
            await publisher.publish("portico:test", b"after the silence")
            await _until(lambda: heard == [b"after the silence"])
        finally:
            await listener.stop()
            await publisher.aclose()
