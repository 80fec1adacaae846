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

import base64
import binascii
import functools

from protocol.limits import validate_channel_id

PREFIX = "message_queue"

QUEUE = "redis"  # list: the channel's finished items, head first
CONFIG = "config"  # hash: per-channel settings (window, disabled)
PROCESSING = "processing"  # the item in flight, until its processor answers
OPEN_BATCH = "open"  # the batch still collecting
DEAD_LETTER = "dead"  # list: DeadLetter frames: items that failed their last attempt, entries that failed to decode
SEEN_IDS = "ids"  # list: message ids the channel accepted (SeenId), for duplicate detection across restarts
RETRY = "retry"  # string (JSON): the head item waiting out its retry backoff, and until when (RetryWait)

ROLES = (QUEUE, CONFIG, PROCESSING, OPEN_BATCH, DEAD_LETTER, SEEN_IDS, RETRY)

CHANNEL_INDEX = f"{PREFIX}:index:channels"  # set of channel ids holding persisted state
EPOCH = f"{PREFIX}:index:epoch"  # written once; its absence after data was seen means Redis lost data
# The writer lease: the one node allowed to persist to this database ("host=... pid=... taken=... token=...",
# with an expiry its holder keeps renewing), and the last node that took it (same value, no expiry), which
# lets a holder whose lease merely expired take it back when nobody else took it meanwhile.
LEASE = f"{PREFIX}:index:lease"
LEASE_HOLDER = f"{PREFIX}:index:holder"
# Admin commands for the node holding the writer lease (``run_system.py admin --redis URL pause ...``): a
# stream of requests it polls, each answered on a list of its own (:func:`control_reply_key`) that expires.
CONTROL = f"{PREFIX}:index:control"
PAUSED = f"{PREFIX}:index:paused"  # set of paused channel ids, re-applied by a persisting node that starts

MAX_REQUEST_ID = 64


def control_reply_key(request_id: str) -> str:
    """The list the lease holder pushes its answer to admin request ``request_id`` onto.

    Raises:
        ValueError: for a request id that is not 1-64 characters of ``A-Z a-z 0-9 - _``.
    """
    if not isinstance(request_id, str) or not 1 <= len(request_id) <= MAX_REQUEST_ID or \
            not _TAG_ALPHABET.issuperset(request_id):
        raise ValueError(f"request id must be 1-{MAX_REQUEST_ID} characters of A-Z a-z 0-9 - _, "
                         f"got {request_id!r:.80}")
    return f"{PREFIX}:index:reply:{request_id}"


def channel_key(role: str, channel_id: str) -> str:
    """The key of ``role`` for ``channel_id``.

    Raises:
        ValueError: for an unknown role.
        InvalidInput: for a channel id that breaks the limits.
    """
    if type(role) is str and type(channel_id) is str:
        return _cached_channel_key(role, channel_id)
    return _channel_key(role, channel_id)


def _channel_key(role: str, channel_id: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return f"{PREFIX}:{role}:{validate_channel_id(channel_id)}"


# On every stored operation's path; a call that raised is not cached.
_cached_channel_key = functools.lru_cache(maxsize=1 << 16)(_channel_key)


def queue_key(channel_id: str) -> str:
    return channel_key(QUEUE, channel_id)


def config_key(channel_id: str) -> str:
    return channel_key(CONFIG, channel_id)


# -- distributed mode (several nodes batching in one Redis) ------------------------------------------------
#
# Layout: ``message_queue:dist:{<tag>}:<role>``, where ``<tag>`` is :func:`channel_tag` of the channel id:
# the unpadded URL-safe base64 of its UTF-8 bytes. Base64 never contains ``{``, ``}`` or ``:``, so
#   * the Redis Cluster hash tag of every key of one channel is exactly ``<tag>``: all of a channel's keys
#     live in one hash slot, as the atomic scripts require;
#   * (role, channel) -> key is injective: the tag is a bijective encoding of the id and ends at the first
#     ``}``, and the role after it is a fixed word.
# The keys shared by every channel (the deadline index, the outbox, the relay lease, the nodes' operation
# counters, the seq floor, the paused set) follow ``message_queue:dist:`` with a letter, never ``{``, so they
# cannot collide with a channel's key. They live outside the channels' slots, and the scripts touch them
# together with a channel's keys (and its settings hash ``message_queue:config:<channel>``, whose ``paused``
# field they read): distributed mode needs one Redis server, not a Cluster (a Cluster variant would shard the
# deadline index and the stream by slot). ``dist`` and ``inbound`` are not roles of :func:`channel_key`, so no
# persistence key can take these names either.

DIST = "dist"
DIST_MESSAGES = "msgs"  # list: codec frames (QueuedMessage) of the channel's open batch, oldest first
DIST_STATE = "state"  # hash: the open batch's times and settings, and the channel's batch counter ``seq``;
#                       expires after the node's idle_ttl once nothing is open
DIST_IDS = "ids"  # sorted set: message ids the channel accepted -> when (ms), for duplicate detection
DIST_HELD = "held"  # list: batches closed while the channel is paused, oldest first, until resumed or cleared

DIST_ROLES = (DIST_MESSAGES, DIST_STATE, DIST_IDS, DIST_HELD)

DIST_DEADLINES = f"{PREFIX}:{DIST}:deadlines"  # sorted set: channel tag -> deadline (Redis server time, ms)
DIST_OUTBOX = f"{PREFIX}:{DIST}:outbox"  # stream: finished batches waiting for a custom event bus's relay
DIST_RELAY_LEASE = f"{PREFIX}:{DIST}:relay"  # string: id of the node whose relay may publish the outbox
DIST_DEAD = f"{PREFIX}:{DIST}:dead"  # stream: outbox entries a relay could not decode, with the reason
DIST_SEQ_FLOOR = f"{PREFIX}:{DIST}:floor"  # string: a new or expired channel numbers its batches above it
DIST_PAUSED = f"{PREFIX}:{DIST}:paused"  # set: tags of the channels paused (or holding batches) until resumed
INBOUND_STREAM = f"{PREFIX}:inbound"  # the default stream of RedisStreamEventBus

MAX_NODE_ID = 64


def dist_node_key(node_id: str) -> str:
    """The key holding the number of the last operation a node applied (its appends are replay-safe).

    Raises:
        ValueError: for a node id that is not 1-64 characters of ``A-Z a-z 0-9 . _ -``.
    """
    if not isinstance(node_id, str) or not 1 <= len(node_id) <= MAX_NODE_ID or not _NODE_ALPHABET.issuperset(node_id):
        raise ValueError(f"node id must be 1-{MAX_NODE_ID} characters of A-Z a-z 0-9 . _ -, got {node_id!r:.80}")
    return f"{PREFIX}:{DIST}:node:{node_id}"


def channel_tag(channel_id: str) -> str:
    """The unpadded URL-safe base64 of ``channel_id``'s UTF-8 bytes: the hash tag of its distributed keys.

    Raises:
        InvalidInput: for a channel id that breaks the limits.
    """
    raw = validate_channel_id(channel_id).encode("utf-8")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def channel_of_tag(tag: str) -> str:
    """The channel id a :func:`channel_tag` stands for.

    Raises:
        ValueError: if ``tag`` is not the tag of a valid channel id.
    """
    if not tag or not _TAG_ALPHABET.issuperset(tag) or len(tag) % 4 == 1:
        raise ValueError(f"not a channel tag: {tag[:80]!r}")
    try:
        channel = base64.urlsafe_b64decode(tag + "=" * (-len(tag) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"not a channel tag: {tag[:80]!r}") from exc
    if channel_tag(channel) != tag:  # non-canonical trailing bits
        raise ValueError(f"not a channel tag: {tag[:80]!r}")
    return channel


def dist_key_of_tag(role: str, tag: str) -> str:
    """The distributed key of ``role`` for the channel whose :func:`channel_tag` is ``tag``.

    Raises:
        ValueError: for an unknown role or a string that cannot be a tag.
    """
    if role not in DIST_ROLES:
        raise ValueError(f"role must be one of {', '.join(DIST_ROLES)}, got {role!r}")
    if not tag or not _TAG_ALPHABET.issuperset(tag):
        raise ValueError(f"not a channel tag: {tag[:80]!r}")
    return f"{PREFIX}:{DIST}:{{{tag}}}:{role}"


def dist_key_affixes(role: str) -> tuple[str, str]:
    """The text before and after the tag in every distributed key of ``role``:
    ``dist_key_of_tag(role, tag) == before + tag + after`` (for scripts that name keys from the deadline index).

    Raises:
        ValueError: for an unknown role.
    """
    key = dist_key_of_tag(role, "A")
    cut = key.index("{") + 1
    return key[:cut], key[cut + 1:]


def dist_key(role: str, channel_id: str) -> str:
    """The distributed key of ``role`` for ``channel_id`` (see the layout above).

    Raises:
        ValueError: for an unknown role.
        InvalidInput: for a channel id that breaks the limits.
    """
    return dist_key_of_tag(role, channel_tag(channel_id))


_TAG_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_NODE_ALPHABET = _TAG_ALPHABET | {"."}


def writer_key(writer_id: str) -> str:
    """A store's transaction marker: lets a retry tell whether its last transaction ran after all."""
    return f"{PREFIX}:index:writer:{writer_id}"
