"""The Lua scripts of distributed mode, loaded from ``message_queue/lua/`` and run with ``EVALSHA``.

Each script's source is ``common.lua`` followed by the script's own file: static text shipped with the
package. Channel ids and every other input travel only as ``KEYS``/``ARGV``. The SHA1 digests are computed
here, so a node sends ``EVALSHA`` from the start; a server that does not know a script (``NOSCRIPT``: new,
restarted, or ``SCRIPT FLUSH``) gets every script loaded again and the command retried, which is safe because
a command refused with ``NOSCRIPT`` did not run.

The ``*_call`` functions build the ``KEYS`` and ``ARGV`` of one call of a batching script, in the layout its
Lua file documents. Their ``now_ms`` replaces Redis server time with the time given (ms): a fake clock for
tests; nodes never give it, and the scripts then read ``TIME`` as before.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Final, Iterable, Sequence

from actors.batching import MAX_REMEMBERED_IDS
from protocol.keys import DIST_DEADLINES, DIST_PAUSED, DIST_SEQ_FLOOR
from protocol.values import BatchSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

APPEND: Final = "append"
FLUSH: Final = "flush"
DUE: Final = "due"
PUBLISH: Final = "publish"
LEASE: Final = "lease"
RELEASE: Final = "release"
CONFIGS: Final = "configs"
STATS: Final = "stats"
ADMIN: Final = "admin"

NAMES: Final = (APPEND, FLUSH, DUE, PUBLISH, LEASE, RELEASE, CONFIGS, STATS, ADMIN)
_STANDALONE: Final = frozenset({LEASE, RELEASE, CONFIGS, STATS})  # need none of the shared helpers

IDLE_TTL: Final = 24 * 3600.0
"""Default seconds a channel's state hash stays in Redis once the channel holds no open batch (renewed by each
batch published on it; see ``common.lua``)."""

NODE_KEY_TTL_MS: Final = 24 * 3600 * 1000
"""Milliseconds a node's operation counter (``protocol.keys.dist_node_key``) outlives its last operation."""

Arg = str | bytes | int
Key = str | bytes

AppendEntry = tuple[Key, Key, Key, Key, Key, bytes, Arg, Arg, Arg, Arg]
"""One message of an append call: its channel's messages key, state key, ids key, settings hash key
(``protocol.keys.config_key``) and held key, the message's codec frame, the channel id, the channel's tag, the
settings argument (:func:`settings_argument`) and the message's ``message_id`` (empty: none)."""

FlushEntry = tuple[Key, Key, Key, Key, Arg]
"""One channel of a flush call: its messages key, state key, settings hash key, held key and tag."""

ADMIN_MODES: Final = ("flush", "clear", "pause", "resume")


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str


def _read(name: str) -> str:
    return resources.files("message_queue").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def _build() -> dict[str, Script]:
    common = _read("common")
    scripts = {}
    for name in NAMES:
        source = _read(name) if name in _STANDALONE else f"{common}\n{_read(name)}"
        scripts[name] = Script(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest())
    return scripts


SCRIPTS: Final = _build()


async def load_all(redis: Redis) -> None:
    """``SCRIPT LOAD`` every script (one round trip)."""
    async with redis.pipeline(transaction=False) as pipe:
        for script in SCRIPTS.values():
            pipe.script_load(script.source)
        await pipe.execute()


async def run(redis: Redis, name: str, keys: Sequence[Key], args: Sequence[Arg]) -> object:
    """Run one script on its own (not pipelined), loading the scripts first if the server lacks them."""
    from redis.exceptions import NoScriptError

    script = SCRIPTS[name]
    try:
        return await redis.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        await load_all(redis)
        return await redis.evalsha(script.sha, len(keys), *keys, *args)


def settings_argument(settings: BatchSettings) -> bytes:
    """``settings`` as the append script takes them: ``<window ms>:<max_wait ms, 0: none>:<cap>:<1|0
    batching>:<dedupe_ttl ms, 0: off>:<max_queued>:<overflow: r, o or n>`` (times rounded to the ms; a
    max_wait or dedupe_ttl above 0 but below 1 ms counts as 1 ms; overflow reject, drop_oldest, drop_newest)."""
    window_ms = round(settings.window * 1000)
    max_wait_ms = max(1, round(settings.max_wait * 1000)) if settings.max_wait is not None else 0
    dedupe_ms = max(1, round(settings.dedupe_ttl * 1000)) if settings.dedupe_ttl > 0 else 0
    batching = "1" if settings.batching else "0"
    overflow = _OVERFLOW_CODES[settings.overflow]
    return (f"{window_ms}:{max_wait_ms}:{settings.max_batch_size}:{batching}:{dedupe_ms}:{settings.max_queued}:"
            f"{overflow}").encode()


_OVERFLOW_CODES = {"reject": "r", "drop_oldest": "o", "drop_newest": "n"}


def append_call(stream: str, node_key: str, maxlen: int, by: Arg, first: int, idle_ms: int,
                entries: Iterable[AppendEntry], now_ms: int | None = None,
                max_ids: int = MAX_REMEMBERED_IDS) -> tuple[list[Key], list[Arg]]:
    """KEYS and ARGV of one ``append`` call: the messages of ``entries`` in order, as the node's operations
    ``first``, ``first + 1``, ...; ``max_ids``: the most message ids a channel remembers."""
    keys: list[Key] = [DIST_DEADLINES, stream, node_key, DIST_SEQ_FLOOR]
    args: list[Arg] = [maxlen, by, first, NODE_KEY_TTL_MS, idle_ms, max_ids]
    for messages_key, state_key, ids_key, config, held, frame, channel, tag, settings, message_id in entries:
        keys += (messages_key, state_key, ids_key, config, held)
        args += (frame, channel, tag, settings, message_id)
    if now_ms is not None:
        args.append(now_ms)
    return keys, args


def flush_call(stream: str, maxlen: int, by: Arg, idle_ms: int, channels: Iterable[FlushEntry],
               now_ms: int | None = None) -> tuple[list[Key], list[Arg]]:
    """KEYS and ARGV of one ``flush`` call; ``channels``: the keys and tag of each (:data:`FlushEntry`)."""
    keys: list[Key] = [DIST_DEADLINES, stream, DIST_SEQ_FLOOR]
    args: list[Arg] = [maxlen, by, idle_ms]
    for messages_key, state_key, config, held, tag in channels:
        keys += (messages_key, state_key, config, held)
        args.append(tag)
    if now_ms is not None:
        args.append(now_ms)
    return keys, args


def publish_call(state_key: Key, config: Key, held: Key, stream: str, maxlen: int, channel: Arg, tag: Arg,
                 frame: bytes, count: int, reason: str, by: Arg, idle_ms: int, node: tuple[str, int] | None = None,
                 now_ms: int | None = None) -> tuple[list[Key], list[Arg]]:
    """KEYS and ARGV of one ``publish`` call (``config``, ``held``: the channel's settings hash and held list);
    ``node``: the node key and operation number, which make a replayed call a no-op."""
    keys: list[Key] = [state_key, stream, DIST_SEQ_FLOOR, config, held]
    args: list[Arg] = [channel, tag, frame, count, reason, maxlen, by, idle_ms]
    if node is not None:
        keys.append(node[0])
        args += (node[1], NODE_KEY_TTL_MS)
    if now_ms is not None:
        args.append(now_ms)
    return keys, args


def due_call(grace_ms: int, limit: int, now_ms: int | None = None) -> tuple[list[Key], list[Arg]]:
    """KEYS and ARGV of one ``due`` call."""
    args: list[Arg] = [grace_ms, limit]
    if now_ms is not None:
        args.append(now_ms)
    return [DIST_DEADLINES], args


def admin_call(mode: str, channel_keys: tuple[Key, Key, Key, Key], tag: Arg, by: Arg, idle_ms: int,
               streams: Sequence[Key] = (), st: bytes = b"", now_ms: int | None = None) -> tuple[list[Key], list[Arg]]:
    """KEYS and ARGV of one ``admin`` call: ``mode`` (one of :data:`ADMIN_MODES`) on the channel whose messages
    key, state key, settings hash key and held key are ``channel_keys``; ``streams``: flush: the stream of the
    state's ``st`` field, whose value (as read) is ``st``; resume: every stream the held batches name.

    Raises:
        ValueError: for an unknown mode.
    """
    if mode not in ADMIN_MODES:
        raise ValueError(f"mode must be one of {', '.join(ADMIN_MODES)}, got {mode!r}")
    keys: list[Key] = [DIST_DEADLINES, DIST_SEQ_FLOOR, DIST_PAUSED, *channel_keys, *streams]
    args: list[Arg] = [mode, tag, by, idle_ms, st]
    if now_ms is not None:
        args.append(now_ms)
    return keys, args
