"""The pause rule of the batching core: a paused channel keeps accepting and batching, delivers nothing until
resumed, then delivers its waiting items head first; and through the real actors (PauseChannel /
ResumeChannel, remembered by the Supervisor across passivation)."""

from __future__ import annotations

from typing import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.batching import ChannelCore, Deliver, ItemQueued
from protocol.values import BatchSettings, QueuedMessage, payload_messages

WINDOW = 1.0


def msg(text: str, channel: str = "c") -> QueuedMessage:
    return QueuedMessage("t", channel, "u", "U", text)


def delivered_texts(effects: Sequence[object]) -> list[list[str]]:
    return [[m.text for m in payload_messages(e.item.payload)] for e in effects if isinstance(e, Deliver)]


def test_a_paused_channel_batches_but_delivers_nothing_until_resumed() -> None:
    core = ChannelCore("c", BatchSettings(window=WINDOW, max_batch_size=2))
    core.attach()
    assert core.pause() is True
    assert core.pause() is False  # already paused
    effects = core.enqueue(msg("1"), 0.0) + core.enqueue(msg("2"), 0.1) + core.enqueue(msg("3"), 0.2)
    effects += core.tick(5.0)
    assert not delivered_texts(effects)
    assert [e.reason.value for e in effects if isinstance(e, ItemQueued)] == ["full", "window"]
    assert core.queued == 2 and core.in_flight is None

    resumed, effects = core.resume()
    assert resumed is True
    assert delivered_texts(effects) == [["1", "2"]]
    assert core.resume() == (False, [])
    delivery_id = core.in_flight[0] if core.in_flight else 0
    assert delivered_texts(core.finish(delivery_id)) == [["3"]]


def test_the_item_in_flight_may_finish_while_paused_but_the_next_waits() -> None:
    core = ChannelCore("c", BatchSettings(batching=False))
    core.attach()
    first = core.enqueue(msg("1"), 0.0)
    assert delivered_texts(first) == [["1"]]
    core.enqueue(msg("2"), 0.1)
    core.pause()
    assert core.in_flight is not None
    assert not delivered_texts(core.finish(core.in_flight[0]))
    assert core.in_flight is None and core.queued == 1
    assert delivered_texts(core.resume()[1]) == [["2"]]


ops = st.lists(
    st.one_of(
        st.tuples(st.just("enqueue"), st.floats(0.0, 0.5)),
        st.tuples(st.just("tick"), st.floats(0.0, 2.0)),
        st.tuples(st.just("finish"), st.just(0.0)),
        st.tuples(st.just("pause"), st.just(0.0)),
        st.tuples(st.just("resume"), st.just(0.0)),
        st.tuples(st.just("flush"), st.just(0.0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops)
def test_pausing_never_delivers_and_loses_or_reorders_nothing(ops: list[tuple[str, float]]) -> None:
    core = ChannelCore("c", BatchSettings(window=WINDOW, max_batch_size=3))
    core.attach()
    now = 0.0
    sent: list[str] = []
    got: list[str] = []
    for op, step in ops:
        now += step
        paused = core.paused
        if op == "enqueue":
            sent.append(str(len(sent)))
            effects = core.enqueue(msg(sent[-1]), now)
        elif op == "tick":
            effects = core.tick(now)
        elif op == "finish":
            effects = core.finish(core.in_flight[0]) if core.in_flight else []
        elif op == "pause":
            core.pause()
            effects = []
        elif op == "flush":
            effects = core.flush(now)[1]
        else:
            effects = core.resume()[1]
            paused = False
        delivered = delivered_texts(effects)
        if paused:
            assert not delivered, f"{op} delivered while paused"
        got += [t for batch in delivered for t in batch]
    # drain: resume, close what is open, finish everything
    got += [t for b in delivered_texts(core.resume()[1] + core.flush(now + 10)[1]) for t in b]
    while core.in_flight is not None:
        got += [t for b in delivered_texts(core.finish(core.in_flight[0])) for t in b]
    assert got == sent
