"""Reading Redis replies, and the errors that mean Redis could not be reached."""

from __future__ import annotations

import asyncio


def connection_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)


def reply_int(value: object) -> int:
    if isinstance(value, bytes):
        return int(value)
    if isinstance(value, (int, str)):
        return int(value)
    raise TypeError(f"expected an integer reply, got {type(value).__name__}")


def reply_str(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def reply_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"expected a string reply, got {type(value).__name__}")
