"""Distributed mode: any number of stateless nodes batch messages in one shared Redis and publish finished
batches to a stream.

Redis is the engine. Each channel's open batch lives in Redis (keys of :mod:`protocol.keys`, one hash slot per
channel); Lua scripts (:mod:`message_queue.scripts`, sources in ``message_queue/lua/``) do every state change
atomically, on Redis server time:

    * ``append``: close the channel's open batch first if its deadline has passed (no flush reached it yet),
      then push the message, slide the deadline (``min(last + window, first + max_wait)``), and publish
      the batch at once when it reaches its cap (or batching is off for the channel); otherwise record the
      deadline in the shared deadline index and return it.
    * ``flush``: publish the channel's batch if its deadline has passed. Claiming the batch and appending it to
      the stream are one script: no two nodes publish the same batch, and no node can die between the two.
    * ``due``: list the channels whose deadline passed more than a grace period ago.
    * ``admin``: the admin commands on one channel (``run_system.py admin --redis URL``, see
      :mod:`service.admin_distributed`): ``flush`` (publish the open batch now, reason ``flushed``), ``clear``
      (discard the open batch and the held ones), ``pause`` and ``resume``.

Pause: while a channel's settings hash has ``paused`` = ``1``, every batch that closes on it (by any script)
is appended to its held list instead of the stream, and a batch of ``enqueue_front`` goes to the head of that
list; ``resume`` publishes them in order and removes the flag, in one script call. Batches still close on
time, so a paused channel leaves no overdue deadline for the sweepers to retry.

The rules are those of :class:`actors.batching.ChannelCore`; ``tests/test_rules_differential.py`` runs both on
random command sequences and requires the same batches, in the same order, for the same reasons.

A node (:class:`DistributedBatcher`) sends its scripts through one pipeline at a time; one ``append`` call
carries up to 64 messages of any channels, so a round trip stores hundreds of messages. Each channel's
settings hash (``message_queue:config:<channel>``) is read before its first message and re-read, alongside
the node's work, once older than ``config_ttl``. It arms a local timer for each deadline its own appends
returned and runs ``flush`` when it fires; a sweeper asks ``due`` every ``sweep_interval`` and flushes what it
finds, so the batches of a node that died are published by the others (about ``grace`` + ``sweep_interval``
after their deadline). A node whose timer fires for a deadline that another node's later message pushed back
lets it go: that node armed the new one.

Appends are replay-safe: each carries the node's next operation number and the script skips numbers already
applied, so a pipeline sent again after a lost connection (redis-py retries, or this node's own retry) stores
each message once. Batches are therefore published exactly once to the stream the scripts write to.

A channel's state outlives its batches only for a while: once the channel holds no open batch, its state hash
expires after ``idle_ttl`` (default 24 h, renewed by each batch published on it; no expiry while a batch is
open), so Redis holds no key for a channel that went quiet. Its batch numbers (``seq``, and the batch ids
``<tag>:<seq>``) still never go back: before a state may expire the scripts raise a shared floor
(``message_queue:dist:floor``) to its ``seq``, and a state made afresh numbers its batches from above that floor.
So a channel's numbers increase and are consecutive while its state lives; a new channel, or one whose state
expired, continues from a higher number. :func:`channel_statistics` reads channels' state in one script call.

With a custom event bus (any object with ``async publish_inbound(batch)``), the scripts write to an outbox
stream and an :class:`OutboxRelay` hands each entry to the bus, deleting it after the call returned: at
least once (a relay that dies after the call and before the delete leaves the entry for the next one).
Only the node holding a lease relays, so the bus sees each channel's batches in order.

The package, by concern: :mod:`.options` (:class:`NodeOptions`, :class:`NodeStatistics`), :mod:`.batcher` (the
node), :mod:`.operations` (what a node queues and the script calls carrying it), :mod:`.settings` (each
channel's settings hash, read there and nowhere else), :mod:`.clock` (Redis server time on the loop's clock),
:mod:`.relay` (:class:`OutboxRelay`), :mod:`.stats` (:func:`channel_statistics`), :mod:`.server` (durability
check, clients) and :mod:`.queue` (:class:`DistributedQueue`, what ``MessageQueue`` runs). Everything public
is importable from here.
"""


from __future__ import annotations

from message_queue.distributed.batcher import DistributedBatcher
from message_queue.distributed.options import NodeOptions, NodeStatistics
from message_queue.distributed.queue import DistributedQueue
from message_queue.distributed.relay import OutboxRelay
from message_queue.distributed.server import binary_client, check_durability, durability_problems, same_server
from message_queue.distributed.stats import channel_statistics
from message_queue.event_bus import EventBus, RedisStreamEventBus, check_event_bus

__all__ = [
    "DistributedBatcher",
    "DistributedQueue",
    "EventBus",
    "NodeOptions",
    "NodeStatistics",
    "OutboxRelay",
    "RedisStreamEventBus",
    "binary_client",
    "channel_statistics",
    "check_durability",
    "check_event_bus",
    "durability_problems",
    "same_server",
]
