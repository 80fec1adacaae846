"""Every Redis key the project uses, built in one place.

Layout: ``message_queue:<role>:<channel id>``. The role is a fixed word without ``:`` and the channel id is
the whole rest of the key, so the mapping (role, channel) -> key is injective: no channel id, however
hostile (``*``, ``:``, ``{}``, newlines, NUL, ``x:processing``), can make two channels, or a channel and a
role, share a key. Keys are never matched with ``KEYS``/``SCAN MATCH``; the set of known channels is kept in
:data:`CHANNEL_INDEX`.

``message_queue:redis:<channel>`` (the FIFO list) and ``message_queue:config:<channel>`` (the settings hash)
are the original module's keys and keep their names.
"""

from __future__ import annotations

from protocol.limits import validate_channel_id

PREFIX = "message_queue"

QUEUE = "redis"  # list: the channel's finished items, head first
CONFIG = "config"  # hash: per-channel settings (window, disabled)
PROCESSING = "processing"  # the item in flight, until its processor answers
OPEN_BATCH = "open"  # the batch still collecting
DEAD_LETTER = "dead"  # list: stored items that could not be decoded, with the reason

ROLES = (QUEUE, CONFIG, PROCESSING, OPEN_BATCH, DEAD_LETTER)

CHANNEL_INDEX = f"{PREFIX}:index:channels"  # set of channel ids holding persisted state
EPOCH = f"{PREFIX}:index:epoch"  # written once; its absence after data was seen means Redis lost data


def channel_key(role: str, channel_id: str) -> str:
    """The key of ``role`` for ``channel_id``.

    Raises:
        ValueError: for an unknown role.
        InvalidInput: for a channel id that breaks the limits.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return f"{PREFIX}:{role}:{validate_channel_id(channel_id)}"


def queue_key(channel_id: str) -> str:
    return channel_key(QUEUE, channel_id)


def config_key(channel_id: str) -> str:
    return channel_key(CONFIG, channel_id)
