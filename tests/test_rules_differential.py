"""Differential test: the batching rules of distributed mode (the Lua scripts, run on a real redis-server)
against their reference, :class:`actors.batching.ChannelCore`.

Hypothesis draws a few channels with their settings and a sequence of steps on a fake clock (integer ms):
messages (several at one instant go in one append call, as a node sends them), enqueue-front, new settings
for a channel, "flush what is due", and the admin commands flush, pause, resume and clear on a channel. Each
step runs on both sides at the same fake time, which the scripts take as their ``now`` argument instead of
Redis server time (see ``message_queue/lua/common.lua``), so the run is deterministic. Both must publish the
same batches (the same messages), in the same order, for the same reasons, equally late; the scripts' replies
(a deadline, published, nothing open, a duplicate dropped) must match the core's deadline after the step, the
admin commands' results must match, each channel's open batch must hold as many messages on both sides, each
channel must hold as many batches while paused as the core has waiting, and each channel must have dropped as
many duplicates.

Message ids are drawn from a few values (and none), so that ids repeat on a channel, within and beyond its
``dedupe_ttl`` (0: off); the gaps between steps sometimes cross it.

Correspondence of operations:
    * ``append`` of a message at t  = ``core.enqueue(msg, t)`` then ``core.tick(t)`` (a deadline already
      reached when the message lands closes the batch at once: the shell's timer would fire immediately); the
      script answers -3 exactly when the core counted the message as a duplicate;
    * ``flush`` at t                = ``core.tick(t)``;
    * ``publish`` (enqueue_front)   = ``core.enqueue_front(payload, t)``;
    * admin ``flush`` at t          = ``core.flush(t)`` (both say whether a batch was open);
    * admin ``pause``               = ``core.pause()``;
    * admin ``resume`` at t         = ``core.resume(t)`` (the batches published = the items it had waiting);
    * admin ``clear``               = ``core.take_waiting()`` (both discard the open batch and the batches
      closed but not delivered, i.e. held while paused, and count the same messages);
    * the stream                    = the deliveries of a core whose processor is attached and answers every
      delivery at once (distributed mode hands a batch to the stream as soon as it closes); a paused channel's
      held list = the core's FIFO of waiting items (the same batches, in the same order).

Flush reasons: the stream's ``reason`` is the core's ``FlushReason`` value for ``window``, ``full``,
``max_wait``, ``unbatched``, ``settings``, ``front`` and ``flushed``. ``restored`` (restore after a restart) is
core-only: distributed mode has no such operation. ``published`` (an event bus's own ``publish_inbound``) is
stream-only: no core operation makes it. Lateness: for ``window`` and ``max_wait`` the entry's ``published -
deadline`` is the core's ``lateness`` (how late the batch closed) plus the time it then waited in the FIFO
(held while paused); for every other reason the entry's ``deadline`` is 0 and the core's lateness is 0.

Units: the core takes any monotonic unit, so it runs in ms here (a window of 20 ms is ``window=20``); its
rules only add and compare times, which is exact on integers, so a message exactly one window after the
previous hits the boundary on both sides. The ids key of a channel expires (in Redis's real time) dedupe_ttl
after its newest id, so the drawn ttls are seconds long: no key expires while an example runs, and the fake
clock alone decides what is forgotten.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator

import pytest
import redis
from hypothesis import example, given, settings
from hypothesis import strategies as st
from redis_support import REDIS_SERVER, redis_server, reply

from actors.batching import ChannelCore, Deliver, Effect, ItemQueued, MessageRejected, MessagesDropped
from message_queue import scripts
from protocol import codec
from protocol.keys import (
    DIST_HELD,
    DIST_IDS,
    DIST_MESSAGES,
    DIST_STATE,
    channel_tag,
    config_key,
    dist_key_of_tag,
    dist_node_key,
)
from protocol.stream import decode_entry
from protocol.values import BatchSettings, FlushReason, MessageBatch, Payload, QueuedMessage, payload_messages
from service import admin_distributed

pytestmark = pytest.mark.redis

CHANNELS = ("alpha", "beta", "chan ü")
STREAM = "test:differential"
NODE = "diff"
IDLE_MS = 60_000
START_MS = 1_700_000_000_000
TIMED = frozenset({FlushReason.WINDOW.value, FlushReason.MAX_WAIT.value})
# Core reason -> stream reason; the core's RESTORED has no distributed counterpart.
REASONS: dict[FlushReason, str] = {reason: reason.value for reason in FlushReason if reason is not FlushReason.RESTORED}


# -- the steps -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rules:
    """Settings in ms: ``max_wait`` 0 for none, ``dedupe`` (dedupe_ttl) 0 for off."""

    window: int
    max_wait: int
    cap: int
    batching: bool = True
    dedupe: int = 0
    max_queued: int = 10_000
    overflow: str = "reject"

    def core(self) -> BatchSettings:
        return BatchSettings(self.window, self.cap, self.max_wait or None, self.batching, dedupe_ttl=self.dedupe,
                             max_queued=self.max_queued, overflow=self.overflow)

    def argument(self) -> bytes:
        seconds = BatchSettings(self.window / 1000, self.cap, self.max_wait / 1000 or None, self.batching,
                                dedupe_ttl=self.dedupe / 1000, max_queued=self.max_queued, overflow=self.overflow)
        return scripts.settings_argument(seconds)


@dataclass(frozen=True)
class Messages:
    """One message per listed channel, at one instant, in one append call; ``ids``: their message ids, in the
    same order (missing: none)."""

    channels: tuple[int, ...]
    ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Front:
    """enqueue_front of ``size`` messages (a lone message when 1)."""

    channel: int
    size: int


@dataclass(frozen=True)
class Configure:
    channel: int
    rules: Rules


@dataclass(frozen=True)
class FlushDue:
    pass


@dataclass(frozen=True)
class Admin:
    """An admin command on one channel: ``flush``, ``pause``, ``resume`` or ``clear``."""

    command: str
    channel: int


Action = Messages | Front | Configure | FlushDue | Admin
Step = tuple[int, Action]  # (ms since the previous step, action)

channel_index = st.integers(0, len(CHANNELS) - 1)
# Round values are drawn more often, so that gaps land exactly on windows and age caps.
round_ms = st.sampled_from([0, 10, 20, 30])
rules = st.builds(
    Rules,
    window=round_ms | st.integers(0, 60),
    max_wait=st.sampled_from([0, 0, 10, 20, 30]) | st.integers(1, 90),
    cap=st.integers(1, 5),
    batching=st.sampled_from([True, True, True, True, False]),
    dedupe=st.sampled_from([0, 2000, 2000, 3000, 600_000]),
    max_queued=st.sampled_from([10_000, 10_000, 1, 2, 3, 4]),
    overflow=st.sampled_from(["reject", "drop_oldest", "drop_newest"]),
)
message_ids = st.sampled_from(["", "", "a", "b", "c", "d"])


def sent(count: int) -> st.SearchStrategy[Messages]:
    """Messages to up to ``count`` channels, with drawn ids."""
    pairs = st.lists(st.tuples(channel_index, message_ids), min_size=1, max_size=count)
    return pairs.map(lambda p: Messages(tuple(c for c, _ in p), tuple(i for _, i in p)))


actions: st.SearchStrategy[Action] = st.one_of(
    sent(4),
    sent(1),
    st.builds(Front, channel_index, st.integers(1, 3)),
    st.builds(Configure, channel_index, rules),
    st.just(FlushDue()),
    st.builds(Admin, st.sampled_from(["flush", "pause", "pause", "resume", "clear"]), channel_index),
)
# Now and then a gap of seconds, which may cross a channel's dedupe_ttl (exactly, too).
gaps = st.one_of(round_ms, st.integers(0, 70), round_ms, st.integers(0, 70), st.sampled_from([1000, 2000, 3000]))
steps = st.lists(st.tuples(gaps, actions), max_size=40)
initial_rules = st.lists(rules, min_size=len(CHANNELS), max_size=len(CHANNELS)).map(tuple)


# -- the two sides -------------------------------------------------------------------------------------------


Published = tuple[str, tuple[str, ...], str, "int | None"]
"""(channel, message texts, reason, lateness in ms or None when the reason has no deadline)"""


class CoreSide:
    """One ChannelCore per channel, with a processor that answers every delivery at once."""

    def __init__(self, initial: tuple[Rules, ...]) -> None:
        self.cores = [ChannelCore(name, r.core(), added_effects=False) for name, r in zip(CHANNELS, initial)]
        for core in self.cores:
            assert core.attach() == []
        self.published: list[Published] = []
        self.closed_at: dict[str, int] = {}  # item id -> when it joined the FIFO

    def take(self, core: ChannelCore, effects: list[Effect], now: int) -> None:
        pending = list(effects)
        while pending:
            effect = pending.pop(0)
            if isinstance(effect, ItemQueued):
                self.closed_at[effect.item.item_id] = now
            elif isinstance(effect, Deliver):
                reason = REASONS[effect.reason]
                if reason in TIMED:
                    waited = now - self.closed_at.pop(effect.item.item_id)
                    lateness: int | None = int(effect.lateness) + waited
                    assert lateness == effect.lateness + waited
                else:
                    assert effect.lateness == 0, effect
                    lateness = None
                texts = tuple(m.text for m in payload_messages(effect.item.payload))
                self.published.append((core.channel_id, texts, reason, lateness))
                pending.extend(core.finish(effect.delivery_id, now=now))

    def append(self, msg: QueuedMessage, now: int) -> int:
        """enqueue then tick; returns what the append script answers: the deadline, -1 (published), -3 (a
        duplicate, dropped), -4 (refused: max_queued, overflow reject) or -5 (dropped: overflow drop_newest)."""
        core = self.cores[CHANNELS.index(msg.channel_id)]
        duplicates = core.statistics().duplicates
        effects = core.enqueue(msg, now)
        dropped = core.statistics().duplicates > duplicates
        refused = any(isinstance(e, MessageRejected) and e.error == "QueueFull" for e in effects)
        newest = any(isinstance(e, MessagesDropped) and e.messages == (msg,) for e in effects)
        self.take(core, effects, now)
        self.take(core, core.tick(now), now)
        deadline = core.deadline
        if dropped:
            return -3
        if refused:
            return -4
        if newest:
            return -5
        return -1 if deadline is None else int(deadline)

    def front(self, index: int, payload: Payload, now: int) -> None:
        core = self.cores[index]
        self.take(core, core.enqueue_front(payload, now), now)

    def flush_due(self, now: int) -> list[int]:
        """tick every channel; returns what the flush script answers per channel: -1 published, -2 nothing
        open, or the deadline (not due)."""
        out = []
        for core in self.cores:
            if core.deadline is None:
                out.append(-2)
                continue
            self.take(core, core.tick(now), now)
            out.append(-1 if core.deadline is None else int(core.deadline))
        return out

    def admin(self, command: str, index: int, now: int) -> dict[str, object]:
        """The admin command's result as the distributed side reports it."""
        core = self.cores[index]
        channel = core.channel_id
        if command == "flush":
            flushed, effects = core.flush(now)
            self.take(core, effects, now)
            return {"channel": channel, "flushed": flushed}
        if command == "pause":
            core.pause()
            return {"channel": channel, "paused": True}
        if command == "resume":
            held = len(core.waiting())
            _, effects = core.resume(now)
            self.take(core, effects, now)
            return {"channel": channel, "paused": False, "published": held}
        taken, effects = core.take_waiting()
        self.take(core, effects, now)
        return {"channel": channel, "removed": len(taken)}

    def held(self) -> list[int]:
        return [len(core.waiting()) for core in self.cores]

    def open_sizes(self) -> list[int]:
        return [core.open_batch.size if core.open_batch is not None else 0 for core in self.cores]

    def duplicates(self) -> list[int]:
        return [core.statistics().duplicates for core in self.cores]

    def overflow_counts(self) -> list[tuple[int, int]]:
        return [(s.rejected_full, s.dropped_overflow) for s in (core.statistics() for core in self.cores)]


class ScriptSide:
    """The scripts on a real Redis, called as a node calls them, with the fake time as their clock."""

    def __init__(self, client: redis.Redis, initial: tuple[Rules, ...]) -> None:
        self.client = client
        self.arguments = [r.argument() for r in initial]
        self.tags = [channel_tag(name) for name in CHANNELS]
        self.node_key = dist_node_key(NODE)
        self.next_op = 1
        self.last_entry = "0-0"

    def keys_of(self, index: int) -> tuple[str, str]:
        tag = self.tags[index]
        return dist_key_of_tag(DIST_MESSAGES, tag), dist_key_of_tag(DIST_STATE, tag)

    def ids_key(self, index: int) -> str:
        return dist_key_of_tag(DIST_IDS, self.tags[index])

    def hold_keys(self, index: int) -> tuple[str, str]:
        """The channel's settings hash (its ``paused`` field) and held list."""
        return config_key(CHANNELS[index]), dist_key_of_tag(DIST_HELD, self.tags[index])

    def run(self, name: str, keys: list[scripts.Key], args: list[scripts.Arg]) -> object:
        return self.client.evalsha(scripts.SCRIPTS[name].sha, len(keys), *keys, *args)

    def append(self, messages: list[tuple[int, QueuedMessage]], now: int) -> list[int]:
        entries = [(*self.keys_of(i), self.ids_key(i), *self.hold_keys(i), codec.encode(m), m.channel_id,
                    self.tags[i], self.arguments[i], m.message_id) for i, m in messages]
        keys, args = scripts.append_call(STREAM, self.node_key, 0, f"{NODE}/append", self.next_op, IDLE_MS,
                                         entries, now_ms=now)
        self.next_op += len(messages)
        return self.numbers(self.run(scripts.APPEND, keys, args), now)

    def front(self, index: int, payload: Payload, now: int) -> None:
        batch = payload if isinstance(payload, MessageBatch) else MessageBatch([payload], payload.queued_at,
                                                                               payload.queued_at)
        keys, args = scripts.publish_call(self.keys_of(index)[1], *self.hold_keys(index), STREAM, 0, CHANNELS[index],
                                          self.tags[index], codec.encode(batch), len(batch.messages), "front",
                                          f"{NODE}/front", IDLE_MS, node=(self.node_key, self.next_op), now_ms=now)
        self.next_op += 1
        reply = self.run(scripts.PUBLISH, keys, args)
        assert isinstance(reply, list) and reply[1] == now, reply

    def flush_due(self, now: int) -> list[int]:
        keys, args = scripts.flush_call(STREAM, 0, f"{NODE}/timer", IDLE_MS,
                                        [(*self.keys_of(i), *self.hold_keys(i), tag)
                                         for i, tag in enumerate(self.tags)], now_ms=now)
        return self.numbers(self.run(scripts.FLUSH, keys, args), now)

    def admin(self, command: str, index: int, now: int) -> dict[str, object]:
        """The admin command, run as ``run_system.py admin --redis URL`` runs it."""
        result: dict[str, object] = admin_distributed.MUTATIONS[command](self.client, CHANNELS[index], now_ms=now)
        return result

    def held(self) -> list[int]:
        pipe = self.client.pipeline(transaction=False)
        for i in range(len(CHANNELS)):
            pipe.llen(self.hold_keys(i)[1])
        return [int(n) for n in pipe.execute()]

    @staticmethod
    def numbers(reply: object, now: int) -> list[int]:
        assert isinstance(reply, bytes), reply
        server_now, *results = (int(n) for n in reply.split(b","))
        assert server_now == now, "the script did not take the time given"
        return results

    def new_entries(self) -> list[Published]:
        out: list[Published] = []
        for entry_id, fields in reply(self.client.xrange(STREAM, f"({self.last_entry}", "+")):
            self.last_entry = entry_id.decode()
            inbound = decode_entry(fields, entry_id)
            lateness = inbound.lateness_ms
            if inbound.reason in TIMED:
                assert lateness is not None, inbound
            else:
                assert inbound.deadline_ms == 0, inbound
            texts = tuple(m.text for m in inbound.batch.messages)
            out.append((inbound.channel_id, texts, inbound.reason, lateness))
        return out

    def open_sizes(self) -> list[int]:
        pipe = self.client.pipeline(transaction=False)
        for i in range(len(CHANNELS)):
            pipe.llen(self.keys_of(i)[0])
        return [int(n) for n in pipe.execute()]

    def duplicates(self) -> list[int]:
        pipe = self.client.pipeline(transaction=False)
        for i in range(len(CHANNELS)):
            pipe.hget(self.keys_of(i)[1], "d")
        return [int(n or 0) for n in pipe.execute()]

    def overflow_counts(self) -> list[tuple[int, int]]:
        pipe = self.client.pipeline(transaction=False)
        for i in range(len(CHANNELS)):
            pipe.hmget(self.keys_of(i)[1], "rf", "do")
        return [(int(rf or 0), int(do or 0)) for rf, do in pipe.execute()]


# -- the test ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[redis.Redis]:
    """A client of a private redis-server shared by the examples (each starts from an empty database)."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server binary not found on PATH (.ci/run installs it with apt-get)")
    with redis_server(appendonly=False) as server:
        connection = redis.Redis.from_url(server.url)
        try:
            for script in scripts.SCRIPTS.values():
                connection.script_load(script.source)
            yield connection
        finally:
            connection.close()


def run_both(client: redis.Redis, initial: tuple[Rules, ...], plan: list[Step]) -> None:
    client.flushdb()
    core, lua = CoreSide(initial), ScriptSide(client, initial)
    texts = (str(n) for n in itertools.count())
    now = START_MS
    # The last steps flush everything and resume every channel (a paused one publishes what it holds).
    ending: list[Step] = [(10_000, FlushDue()), *((0, Admin("resume", i)) for i in range(len(CHANNELS)))]
    for number, (gap, action) in enumerate([*plan, *ending]):
        now += gap
        where = f"step {number} at +{now - START_MS} ms: {action}"
        if isinstance(action, Messages):
            ids = action.ids or ("",) * len(action.channels)
            messages = [(i, QueuedMessage("test", CHANNELS[i], "u", "U", next(texts), message_id=mid))
                        for i, mid in zip(action.channels, ids)]
            expected = [core.append(m, now) for _, m in messages]
            assert lua.append(messages, now) == expected, where
        elif isinstance(action, Front):
            batch = [QueuedMessage("test", CHANNELS[action.channel], "u", "U", next(texts)) for _ in range(action.size)]
            payload: Payload = batch[0] if action.size == 1 else MessageBatch(batch)
            core.front(action.channel, payload, now)
            lua.front(action.channel, payload, now)
        elif isinstance(action, Configure):
            core.cores[action.channel].configure(action.rules.core())
            lua.arguments[action.channel] = action.rules.argument()
        elif isinstance(action, Admin):
            assert lua.admin(action.command, action.channel, now) == \
                core.admin(action.command, action.channel, now), where
        else:
            assert lua.flush_due(now) == core.flush_due(now), where
        published, core.published = core.published, []
        assert lua.new_entries() == published, where
        assert lua.open_sizes() == core.open_sizes(), where
        assert lua.duplicates() == core.duplicates(), where
        assert lua.overflow_counts() == core.overflow_counts(), where
        assert lua.held() == core.held(), where
    assert core.open_sizes() == core.held() == [0] * len(CHANNELS)
    assert not any(core.paused for core in core.cores)


@settings(max_examples=300, deadline=None)
@given(initial=initial_rules, plan=steps)
# A batch past its deadline (no flush ran since) must not take the next message: it closes first (by time,
# late), and the message opens the next batch.
@example(
    initial=(Rules(window=10, max_wait=0, cap=5),) * 3,
    plan=[(0, Messages((0,))), (30, Messages((0,))), (0, FlushDue())],
)
# The same with batching turned off meanwhile: the overdue batch closes by time, not for the new settings.
@example(
    initial=(Rules(window=10, max_wait=0, cap=5),) * 3,
    plan=[(0, Messages((0,))), (0, Configure(0, Rules(window=10, max_wait=0, cap=5, batching=False))),
          (20, Messages((0,)))],
)
# The tie: the age cap falls exactly when the window ends; the core calls it max_wait.
@example(
    initial=(Rules(window=10, max_wait=20, cap=5),) * 3,
    plan=[(0, Messages((0,))), (10, Messages((0,))), (10, FlushDue())],
)
# A zero window closes each message's batch at once; an enqueue-front right after comes behind it.
@example(
    initial=(Rules(window=0, max_wait=0, cap=5),) * 3,
    plan=[(0, Messages((0, 0))), (0, Front(0, 2)), (0, FlushDue())],
)
# A retried message within dedupe_ttl is dropped; at exactly dedupe_ttl after the first it is accepted again.
@example(
    initial=(Rules(window=10, max_wait=0, cap=5, dedupe=2000),) * 3,
    plan=[(0, Messages((0, 0, 1), ("a", "a", "a"))), (1000, Messages((0,), ("a",))),
          (1000, Messages((0, 0), ("a", "a")))],
)
# A duplicate landing on an overdue batch: the batch closes (by time, late) and the duplicate is dropped.
@example(
    initial=(Rules(window=10, max_wait=0, cap=5, dedupe=2000),) * 3,
    plan=[(0, Messages((0,), ("a",))), (30, Messages((0,), ("a",))), (0, FlushDue())],
)
# dedupe_ttl 0 keeps every message; turned on again, the ids remembered before count again.
@example(
    initial=(Rules(window=10, max_wait=0, cap=5, dedupe=2000),) * 3,
    plan=[(0, Messages((0,), ("a",))), (0, Configure(0, Rules(window=10, max_wait=0, cap=5))),
          (5, Messages((0,), ("a",))), (0, Configure(0, Rules(window=10, max_wait=0, cap=5, dedupe=2000))),
          (5, Messages((0,), ("a",)))],
)
# max_queued: a full open batch refuses a message, or drops its first or the new one; an overdue full batch
# still counts (the core checks the cap before it closes it), and dropping the only message of a batch opens
# a new one.
@example(
    initial=(Rules(window=10, max_wait=0, cap=5, max_queued=2),) * 3,
    plan=[(0, Messages((0, 0, 0))), (30, Messages((0,))), (0, FlushDue())],
)
@example(
    initial=(Rules(window=10, max_wait=20, cap=5, max_queued=2, overflow="drop_oldest"),) * 3,
    plan=[(0, Messages((0, 0))), (5, Messages((0,))), (30, Messages((0,))), (0, FlushDue())],
)
@example(
    initial=(Rules(window=10, max_wait=0, cap=5, max_queued=1, overflow="drop_oldest"),) * 3,
    plan=[(0, Messages((0,))), (30, Messages((0,))), (5, Messages((0,))), (0, FlushDue())],
)
@example(
    initial=(Rules(window=10, max_wait=0, cap=5, max_queued=2, overflow="drop_newest"),) * 3,
    plan=[(0, Messages((0, 0, 0))), (0, FlushDue())],
)
# Paused: batches closing by window, cap and batching off are held, an enqueue-front goes ahead of them, a
# flush is held too; resume publishes them in that order, later than their deadline by the pause.
@example(
    initial=(Rules(window=10, max_wait=0, cap=2), Rules(window=10, max_wait=0, cap=2, batching=False),
             Rules(window=10, max_wait=0, cap=2)),
    plan=[(0, Admin("pause", 0)), (0, Admin("pause", 1)), (0, Messages((0, 1))), (20, FlushDue()),
          (0, Messages((0, 0, 0, 1))), (5, Front(0, 2)), (0, Admin("flush", 0)), (0, Admin("flush", 2)),
          (30, Admin("resume", 0)), (0, Messages((0,)))],
)
# Clear discards the open batch and the held ones; a flush with nothing open says so.
@example(
    initial=(Rules(window=10, max_wait=0, cap=3),) * 3,
    plan=[(0, Admin("pause", 0)), (0, Messages((0, 0, 0, 0))), (0, Admin("clear", 0)), (0, Admin("flush", 0)),
          (0, Messages((0,))), (0, Admin("flush", 0)), (0, Admin("resume", 0))],
)
# max_queued counts the held batches of a paused channel; drop_oldest takes the first message of the oldest
# held batch (the whole batch when it was its only one).
@example(
    initial=(Rules(window=10, max_wait=0, cap=3, max_queued=2, overflow="drop_oldest"),) * 3,
    plan=[(0, Admin("pause", 0)), (0, Messages((0, 0))), (20, FlushDue()), (0, Messages((0,))),
          (0, Messages((0,))), (0, Admin("resume", 0)), (20, FlushDue())],
)
@example(
    initial=(Rules(window=10, max_wait=0, cap=1, max_queued=2, overflow="reject"),) * 3,
    plan=[(0, Admin("pause", 0)), (0, Messages((0, 0, 0))), (0, Front(0, 2)), (0, Admin("resume", 0)),
          (0, Messages((0,)))],
)
def test_the_scripts_batch_as_the_core_does(client: redis.Redis, initial: tuple[Rules, ...], plan: list[Step]) -> None:
    run_both(client, initial, plan)
