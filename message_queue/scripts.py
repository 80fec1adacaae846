"""The Lua scripts of distributed mode, loaded from ``message_queue/lua/`` and run with ``EVALSHA``.

Each script's source is ``common.lua`` followed by the script's own file: static text shipped with the
package. Channel ids and every other input travel only as ``KEYS``/``ARGV``. The SHA1 digests are computed
here, so a node sends ``EVALSHA`` from the start; a server that does not know a script (``NOSCRIPT``: new,
restarted, or ``SCRIPT FLUSH``) gets every script loaded again and the command retried, which is safe because
a command refused with ``NOSCRIPT`` did not run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Final, Sequence, Union

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

NAMES: Final = (APPEND, FLUSH, DUE, PUBLISH, LEASE, RELEASE, CONFIGS, STATS)
_STANDALONE: Final = frozenset({LEASE, RELEASE, CONFIGS, STATS})  # need none of the shared helpers

IDLE_TTL: Final = 24 * 3600.0
"""Default seconds a channel's state hash stays in Redis once the channel holds no open batch (renewed by each
batch published on it; see ``common.lua``)."""

Arg = Union[str, bytes, int]


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


async def run(redis: Redis, name: str, keys: Sequence[str], args: Sequence[Arg]) -> object:
    """Run one script on its own (not pipelined), loading the scripts first if the server lacks them."""
    from redis.exceptions import NoScriptError

    script = SCRIPTS[name]
    try:
        return await redis.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        await load_all(redis)
        return await redis.evalsha(script.sha, len(keys), *keys, *args)
