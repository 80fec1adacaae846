"""The Redis server a distributed node uses: whether it keeps acknowledged writes, and clients of it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from actors.journal import DURABILITY_SETTINGS, refuse_unsafe
from actors.journal import durability_problems as journal_durability_problems
from message_queue.distributed.replies import reply_str

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)


async def durability_problems(redis: Redis) -> list[str]:
    """Reasons this server could silently lose acknowledged messages (empty when it is safe)."""
    from redis.exceptions import ResponseError

    config: dict[str, str] = {}
    try:
        for name in DURABILITY_SETTINGS:
            config.update({reply_str(k): reply_str(v) for k, v in (await redis.config_get(name)).items()})
    except ResponseError as exc:
        return [f"cannot read the server's persistence settings with CONFIG GET ({exc})"]
    return journal_durability_problems(config)


async def check_durability(redis: Redis, allow_volatile: bool) -> None:
    """Refuse a server that could lose acknowledged messages, unless ``allow_volatile`` (then warn).

    Raises:
        UnsafeRedis: naming every problem found.
    """
    refuse_unsafe(await durability_problems(redis), allow_volatile, "batch in", log)


def same_server(a: Redis, b: Redis) -> bool:
    """True when two clients certainly reach the same Redis database (same pool, or same connection
    settings)."""
    if a is b or a.connection_pool is b.connection_pool:
        return True
    keys = ("host", "port", "db", "path", "username")
    ka, kb = a.connection_pool.connection_kwargs, b.connection_pool.connection_kwargs
    return (
        a.connection_pool.connection_class is b.connection_pool.connection_class
        and all(ka.get(k) == kb.get(k) for k in keys)
    )


def binary_client(redis: Redis) -> tuple[Redis, bool]:
    """``redis`` itself, or a client of the same server that returns bytes (when ``redis`` decodes replies
    to str); the flag says whether a new client was made (its owner closes it)."""
    if not redis.connection_pool.connection_kwargs.get("decode_responses"):
        return redis, False
    from redis.asyncio import ConnectionPool
    from redis.asyncio import Redis as AsyncRedis

    pool = redis.connection_pool
    kwargs = {**pool.connection_kwargs, "decode_responses": False}
    # from_pool: the new client owns its pool, so closing the client closes its connections.
    return AsyncRedis.from_pool(ConnectionPool(connection_class=pool.connection_class, **kwargs)), True
