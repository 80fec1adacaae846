"""Any value in any field of any command, sent to the real Supervisor on the simple base, is either accepted or
refused with a typed ``Rejected``; the Supervisor never fails, no channel is left stuck, and every good message
sent among the bad ones is delivered, once and in order.

Values come from ``st.from_type`` (what the annotations allow) and from hand-written strategies for the nasty
ones: naive and aware datetimes, a tzinfo that fails, strings with surrogates or NUL, oversized strings,
NaN and infinities, deep or cyclic dicts, bytes, sets, custom objects and plain wrong types.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import pytest
from actor_support import Recorded, RecordingProcessor, WaitFor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import (
    FailingZone,
    Opaque,
    wrong_types,
)
from strategies import arbitrary_datetimes as datetimes
from strategies import arbitrary_extras as extras
from strategies import arbitrary_strings as strings

from actors.system import SIMPLE_BASE, RunningSystem, start_system
from protocol.errors import InvalidInput
from protocol.limits import MAX_BATCH_SIZE, MAX_TEXT_BYTES
from protocol.messages import (
    BatchHeld,
    BatchReady,
    CancelCurrent,
    Cancelled,
    ChannelConfigured,
    Clear,
    Cleared,
    ConfigureChannel,
    Enqueue,
    Enqueued,
    EnqueueFront,
    EnqueueMany,
    GetStatistics,
    HoldBatch,
    ProcessingDone,
    ProcessingFailed,
    ProcessingStarted,
    Rejected,
    StartProcessing,
    Statistics,
)
from protocol.validation import validate_message, validate_payload
from protocol.values import BatchSettings, MessageBatch, QueuedMessage, payload_messages

ASK = 5.0  # seconds; never reached when things work
CONTROL = "control:good"  # the channel of the good messages: no generated command names it
POOL = ("pool:a", "pool:b")  # valid channels the generated commands aim at, among invalid ids


# -- nasty values (tests/strategies.py) -----------------------------------------------------------------

channel_ids = st.one_of(st.sampled_from(POOL), strings, wrong_types)


def good_message(channel: str, text: str) -> QueuedMessage:
    return QueuedMessage("test", channel, "u1", "U1", text)


messages = st.one_of(
    st.builds(
        QueuedMessage,
        platform=strings,
        channel_id=channel_ids,
        user_id=strings,
        user_name=strings,
        text=strings,
        queued_at=datetimes,
        extra=extras,
        raw=st.one_of(st.none(), st.builds(Opaque)),
    ),
    st.builds(  # a message with one nasty field, the others sound: reaches every check
        lambda channel, text, queued_at, extra: QueuedMessage("p", channel, "u", "n", text, queued_at, extra),
        st.sampled_from(POOL),
        st.one_of(st.just("ok"), strings),
        st.one_of(st.builds(lambda: datetime.now(timezone.utc)), datetimes),
        st.one_of(st.just({}), extras),
    ),
    wrong_types,
)
batches = st.builds(
    MessageBatch,
    messages=st.one_of(st.lists(messages, max_size=3), st.just([]), wrong_types,
                       st.builds(lambda: [good_message(POOL[0], "m")] * (MAX_BATCH_SIZE + 1))),
    first_at=datetimes,
    last_at=datetimes,
)
acks = st.one_of(st.booleans(), st.sampled_from([0, 1, "", "yes", None]))
settings_values = st.one_of(st.builds(BatchSettings, window=st.floats(0, 0.05), max_batch_size=st.integers(1, 10)),
                            wrong_types)

commands = st.one_of(
    st.builds(Enqueue, message=messages, ack=acks),
    st.builds(EnqueueMany, messages=st.one_of(st.lists(messages, max_size=4).map(tuple), wrong_types), ack=acks),
    st.builds(EnqueueFront, payload=st.one_of(messages, batches), ack=acks),
    st.builds(CancelCurrent, channel_id=channel_ids),
    st.builds(Clear, channel_id=channel_ids),
    st.builds(HoldBatch, channel_id=channel_ids),
    st.builds(ConfigureChannel, channel_id=channel_ids, settings=settings_values),
    st.builds(GetStatistics, channel_id=channel_ids),
    st.builds(ProcessingDone, channel_id=channel_ids, delivery_id=st.one_of(st.integers(), wrong_types)),
    st.builds(ProcessingFailed, channel_id=channel_ids, delivery_id=st.integers(), error=strings),
)


# -- the system under test ----------------------------------------------------------------------------------


@dataclass
class System:
    running: RunningSystem
    processor: Any

    def ask(self, msg: object) -> object:
        return self.running.asys.ask(self.running.supervisor, msg, ASK)

    def tell(self, msg: object) -> None:
        self.running.asys.tell(self.running.supervisor, msg)

    def listen(self) -> object:
        return self.running.asys.listen(ASK)


@pytest.fixture
def make_system() -> Iterator[Any]:
    started: list[RunningSystem] = []

    def make() -> System:
        running = start_system(SIMPLE_BASE, BatchSettings(window=0.01, max_batch_size=5), idle_timeout=0.05)
        started.append(running)
        processor = running.asys.createActor(RecordingProcessor)
        reply = running.asys.ask(running.supervisor, StartProcessing("", processor), ASK)
        assert isinstance(reply, ProcessingStarted), reply
        return System(running, processor)

    yield make
    for running in started:
        running.shutdown()


def accepts(check: Any, value: object) -> bool:
    try:
        check(value)
    except InvalidInput:
        return False
    return True


def is_rejected_input(reply: object, command: object) -> bool:
    # settings that break a rule are InvalidSettings, like those refused at construction
    errors = {"InvalidInput", "InvalidSettings"} if isinstance(command, ConfigureChannel) else {"InvalidInput"}
    return (
        isinstance(reply, Rejected)
        and reply.command == type(command).__name__
        and reply.error in errors
        and bool(reply.reason)
    )


def send(system: System, command: object) -> None:
    """Send ``command`` and check every reply it gets: the one its type promises, or a typed rejection."""
    if isinstance(command, (Enqueue, EnqueueMany, EnqueueFront)) and not command.ack:
        system.tell(command)  # no reply; a failure would surface as a stray reply to a later ask
        return
    if isinstance(command, (ProcessingDone, ProcessingFailed)):
        system.tell(command)  # routed to a live channel, or ignored with a warning; no reply
        return
    reply = system.ask(command)
    if isinstance(command, Enqueue):
        expected: object = Enqueued(1) if accepts(validate_message, command.message) else None
        assert reply == expected or (expected is None and is_rejected_input(reply, command)), (command, reply)
    elif isinstance(command, EnqueueFront):
        expected = Enqueued(1) if accepts(validate_payload, command.payload) else None
        assert reply == expected or (expected is None and is_rejected_input(reply, command)), (command, reply)
    elif isinstance(command, EnqueueMany):
        if not isinstance(command.messages, (tuple, list)):
            assert is_rejected_input(reply, command), (command, reply)
            return
        valid = [m for m in command.messages if accepts(validate_message, m)]
        for _ in range(len(command.messages) - len(valid)):  # one rejection per bad message, then the count
            assert is_rejected_input(reply, command), (command, reply)
            reply = system.listen()
        assert reply == Enqueued(len(valid)), (command, reply)
    else:
        answers = {
            CancelCurrent: Cancelled,
            Clear: Cleared,
            HoldBatch: BatchHeld,
            ConfigureChannel: ChannelConfigured,
            GetStatistics: Statistics,
        }
        assert isinstance(reply, answers[type(command)]) or is_rejected_input(reply, command), (command, reply)


def delivered(events: tuple[object, ...], channel: str) -> list[str]:
    return [
        m.text
        for e in events
        if isinstance(e, BatchReady) and e.channel_id == channel
        for m in payload_messages(e.item.payload)
    ]


def recorded_until_probes(system: System, wanted: int) -> tuple[object, ...]:
    """What the processor recorded once every probe came out (accepted generated messages come out too, so
    the count to wait for grows until they have)."""
    while True:
        reply = system.running.asys.ask(system.processor, WaitFor(messages=wanted), ASK)
        assert isinstance(reply, Recorded), f"fewer than {wanted} messages were delivered: {reply!r}"
        texts = {text for channel in (*POOL, CONTROL) for text in delivered(reply.events, channel)}
        if all(f"probe {channel}" in texts for channel in (*POOL, CONTROL)):
            return reply.events
        wanted = sum(len(payload_messages(e.item.payload)) for e in reply.events if isinstance(e, BatchReady)) + 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(steps=st.lists(st.one_of(commands, st.just("good")), min_size=1, max_size=6))
def test_any_command_is_accepted_or_rejected_and_good_messages_still_flow(
    make_system: Any, steps: list[object]
) -> None:
    system = make_system()
    good: list[str] = []
    for step in steps:
        if step == "good":
            good.append(f"g{len(good)}")
            system.tell(Enqueue(good_message(CONTROL, good[-1])))
        else:
            send(system, step)
    # no channel is stuck: a probe on each pool channel and the control channel comes out
    probes = [Enqueue(good_message(channel, f"probe {channel}"), ack=True) for channel in (*POOL, CONTROL)]
    for probe in probes:
        assert system.ask(probe) == Enqueued(1)
    events = recorded_until_probes(system, len(good) + len(probes))
    assert delivered(events, CONTROL) == [*good, f"probe {CONTROL}"]  # each once, in order
    for channel in POOL:
        assert f"probe {channel}" in delivered(events, channel)
    # and the Supervisor still answers, with nothing stray waiting before its answer
    assert isinstance(system.ask(GetStatistics()), Statistics)


@pytest.mark.parametrize(
    "queued_at",
    ["yesterday", datetime(2024, 5, 1), datetime(2024, 5, 1, tzinfo=FailingZone()), 1_714_557_600.0],
    ids=["string", "naive", "failing-tzinfo", "timestamp"],
)
def test_a_message_with_a_bad_queued_at_is_rejected_naming_the_rule(make_system: Any, queued_at: object) -> None:
    system = make_system()
    bad = QueuedMessage("p", POOL[0], "u", "n", "x", queued_at=queued_at)  # type: ignore[arg-type]
    reply = system.ask(Enqueue(bad, ack=True))
    assert isinstance(reply, Rejected) and reply.error == "InvalidInput", reply
    assert reply.channel_id == POOL[0]
    assert reply.reason.startswith("queued_at must be a timezone-aware datetime"), reply.reason


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_in_extra_are_rejected(make_system: Any, value: float) -> None:
    system = make_system()
    bad = QueuedMessage("p", POOL[0], "u", "n", "x", extra={"score": [1.0, value]})
    reply = system.ask(Enqueue(bad, ack=True))
    assert isinstance(reply, Rejected) and reply.error == "InvalidInput", reply
    assert reply.reason == f"extra floats must be finite, got {value!r} at extra['score'][1]"


def test_enqueue_front_checks_the_times_and_size_of_a_batch(make_system: Any) -> None:
    system = make_system()
    aware = datetime(2024, 5, 1, tzinfo=timezone.utc)
    naive_first = MessageBatch([good_message(POOL[0], "a")], datetime(2024, 5, 1), aware)
    reply = system.ask(EnqueueFront(naive_first, ack=True))
    assert isinstance(reply, Rejected) and reply.reason.startswith("payload batch first_at must be a timezone-aware")
    too_big = MessageBatch([good_message(POOL[0], "a") for _ in range(MAX_BATCH_SIZE + 1)], aware, aware)
    reply = system.ask(EnqueueFront(too_big, ack=True))
    assert isinstance(reply, Rejected)
    assert reply.reason == f"payload batch must hold at most {MAX_BATCH_SIZE} messages, got {MAX_BATCH_SIZE + 1}"
    fine = MessageBatch([good_message(POOL[0], "a"), good_message(POOL[0], "b")], aware, aware)
    assert system.ask(EnqueueFront(fine, ack=True)) == Enqueued(1)


# -- validate_message itself ------------------------------------------------------------------------------


class LyingStr(str):
    """A str subclass that claims to be short ASCII."""

    def isascii(self) -> bool:
        return True

    def __len__(self) -> int:
        return 1


class SubMessage(QueuedMessage):
    pass


def test_a_str_subclass_cannot_hide_its_size_or_its_surrogates() -> None:
    validate_message(QueuedMessage("p", "c", "u", "n", LyingStr("fine")))  # a str subclass is a str
    with pytest.raises(InvalidInput, match=f"text must be at most {MAX_TEXT_BYTES} bytes of UTF-8"):
        validate_message(QueuedMessage("p", "c", "u", "n", LyingStr("t" * (MAX_TEXT_BYTES + 1))))
    with pytest.raises(InvalidInput, match="user_id must be valid UTF-8 text"):
        validate_message(QueuedMessage("p", "c", LyingStr("\ud800"), "n", "t"))


def test_a_subclass_or_a_message_missing_a_field_is_refused() -> None:
    with pytest.raises(InvalidInput, match="message must be a QueuedMessage, not a subclass, got SubMessage"):
        validate_message(SubMessage("p", "c", "u", "n", "t"))
    hollow = QueuedMessage.__new__(QueuedMessage)  # as unpickling a hand-made state can leave it
    with pytest.raises(InvalidInput, match="message must have every field of a QueuedMessage"):
        validate_message(hollow)


def test_an_aware_time_in_any_zone_is_accepted() -> None:
    for zone in (timezone.utc, timezone(timedelta(hours=5, minutes=45)), timezone(timedelta(hours=-12))):
        stamp = datetime(2024, 5, 1, 12, tzinfo=zone)
        assert validate_message(QueuedMessage("p", "c", "u", "n", "t", queued_at=stamp)).queued_at is stamp
