"""Unit tests of the pure batching core, driven with explicit ``now`` values (a fake clock, no sleeps)."""

from __future__ import annotations

import itertools
import math
import os
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest

from actors.batching import (
    ChannelCore,
    ChannelState,
    Deliver,
    DeliveryCancelled,
    DeliveryFinished,
    Effect,
    ItemQueued,
    MessageAdded,
    QueueCleared,
    _new_item_id,
)
from protocol.errors import InvalidInput, InvalidSettings, ProtocolViolation
from protocol.limits import MAX_BATCH_SIZE
from protocol.values import (
    BatchSettings,
    ChannelStatistics,
    FlushReason,
    MessageBatch,
    QueuedMessage,
    QueueItem,
    payload_messages,
)

CHANNEL = "chan-1"


# -- helpers ----------------------------------------------------------------------------------------------


def msg(text: str, *, channel: str = CHANNEL, user: str = "u1") -> QueuedMessage:
    return QueuedMessage(platform="test", channel_id=channel, user_id=user, user_name=user.upper(), text=text)


def counting_ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"item-{next(counter)}"


def make_core(
    *,
    window: float = 1.0,
    max_batch_size: int = 10,
    max_wait: float | None = None,
    batching: bool = True,
    attached: bool = False,
) -> ChannelCore:
    core = ChannelCore(
        CHANNEL,
        BatchSettings(window=window, max_batch_size=max_batch_size, max_wait=max_wait, batching=batching),
        new_id=counting_ids(),
    )
    if attached:
        core.attach()
    return core


def texts(item: QueueItem) -> list[str]:
    return [m.text for m in payload_messages(item.payload)]


def of_type(effects: list[Effect], kind: type[Any]) -> list[Any]:
    return [e for e in effects if isinstance(e, kind)]


def only(effects: list[Effect], kind: type[Any]) -> Any:
    found = of_type(effects, kind)
    assert len(found) == 1, f"expected exactly one {kind.__name__} in {effects!r}"
    return found[0]


def queued_texts(core: ChannelCore) -> list[list[str]]:
    return [texts(item) for item in core.waiting()]


# -- sliding window ---------------------------------------------------------------------------------------


def test_a_message_opens_a_batch_whose_deadline_is_one_window_later() -> None:
    core = make_core(window=2.0)
    first = msg("a")
    assert core.enqueue(first, now=10.0) == [MessageAdded(first, 1, 10.0)]
    assert core.deadline == 12.0
    assert core.open_batch is not None and [m.text for m in core.open_batch.messages] == ["a"]


def test_each_message_moves_the_deadline_to_one_window_after_it() -> None:
    core = make_core(window=2.0)
    core.enqueue(msg("a"), now=0.0)
    core.enqueue(msg("b"), now=1.5)
    assert core.deadline == 3.5
    core.enqueue(msg("c"), now=3.0)
    assert core.deadline == 5.0
    assert core.tick(4.9) == []
    assert core.open_batch is not None and core.open_batch.size == 3


def test_message_added_reports_the_growing_batch_size() -> None:
    core = make_core()
    sizes = [only(core.enqueue(msg(t), now=0.0), MessageAdded).batch_size for t in "abc"]
    assert sizes == [1, 2, 3]


def test_tick_before_the_deadline_does_nothing() -> None:
    core = make_core(window=1.0)
    core.enqueue(msg("a"), now=0.0)
    assert core.tick(0.999) == []
    assert core.deadline == 1.0


def test_tick_without_an_open_batch_does_nothing() -> None:
    core = make_core(attached=True)
    assert core.tick(100.0) == []
    assert core.deadline is None


def test_the_batch_closes_with_reason_window_when_the_window_elapses() -> None:
    core = make_core(window=1.0)
    core.enqueue(msg("a"), now=0.0)
    core.enqueue(msg("b"), now=0.5)
    effects = core.tick(1.5)
    queued = only(effects, ItemQueued)
    assert queued.reason is FlushReason.WINDOW
    assert queued.lateness == 0.0
    assert texts(queued.item) == ["a", "b"]
    assert core.deadline is None and core.open_batch is None


def test_lateness_is_how_long_after_the_deadline_the_batch_closed() -> None:
    core = make_core(window=1.0, attached=True)
    core.enqueue(msg("a"), now=0.0)
    effects = core.tick(1.25)
    assert only(effects, ItemQueued).lateness == 0.25
    deliver = only(effects, Deliver)
    assert (deliver.reason, deliver.lateness) == (FlushReason.WINDOW, 0.25)


def test_a_window_of_zero_makes_the_next_message_close_the_batch() -> None:
    core = make_core(window=0.0)
    core.enqueue(msg("a"), now=5.0)
    assert core.deadline == 5.0
    effects = core.enqueue(msg("b"), now=5.0)
    assert only(effects, ItemQueued).reason is FlushReason.WINDOW
    assert queued_texts(core) == [["a"]]
    assert core.open_batch is not None and [m.text for m in core.open_batch.messages] == ["b"]


# -- size cap ---------------------------------------------------------------------------------------------


def test_reaching_max_batch_size_closes_the_batch_at_once_with_reason_full() -> None:
    core = make_core(window=10.0, max_batch_size=3)
    core.enqueue(msg("a"), now=0.0)
    core.enqueue(msg("b"), now=0.1)
    effects = core.enqueue(msg("c"), now=0.2)
    assert [type(e) for e in effects] == [MessageAdded, ItemQueued]
    queued = effects[1]
    assert isinstance(queued, ItemQueued)
    assert (queued.reason, queued.lateness) == (FlushReason.FULL, 0.0)
    assert texts(queued.item) == ["a", "b", "c"]
    assert core.open_batch is None and core.deadline is None


def test_a_max_batch_size_of_one_makes_every_message_a_full_batch() -> None:
    core = make_core(max_batch_size=1)
    for t in "ab":
        assert only(core.enqueue(msg(t), now=0.0), ItemQueued).reason is FlushReason.FULL
    assert queued_texts(core) == [["a"], ["b"]]


def test_the_message_after_a_full_batch_opens_a_new_batch() -> None:
    core = make_core(max_batch_size=2)
    for t in "abc":
        core.enqueue(msg(t), now=0.0)
    assert queued_texts(core) == [["a", "b"]]
    assert core.open_batch is not None and [m.text for m in core.open_batch.messages] == ["c"]


# -- max_wait ---------------------------------------------------------------------------------------------


def test_max_wait_caps_the_deadline_at_the_first_message_plus_max_wait() -> None:
    core = make_core(window=2.0, max_wait=3.0)
    core.enqueue(msg("a"), now=0.0)
    assert core.deadline == 2.0
    core.enqueue(msg("b"), now=1.5)
    assert core.deadline == 3.0  # not 3.5: the cap wins


def test_max_wait_closes_the_batch_even_while_messages_keep_arriving() -> None:
    core = make_core(window=1.0, max_wait=2.5)
    for now in (0.0, 0.5, 1.0, 1.5, 2.0):
        assert of_type(core.enqueue(msg(f"m{now}"), now=now), ItemQueued) == []
    effects = core.tick(2.5)
    queued = only(effects, ItemQueued)
    assert queued.reason is FlushReason.MAX_WAIT
    assert queued.lateness == 0.0
    assert len(texts(queued.item)) == 5


def test_a_message_at_max_wait_goes_to_a_new_batch_after_the_capped_one_closes() -> None:
    core = make_core(window=1.0, max_wait=2.0)
    core.enqueue(msg("a"), now=0.0)
    core.enqueue(msg("b"), now=0.75)
    core.enqueue(msg("c"), now=1.5)
    effects = core.enqueue(msg("d"), now=2.0)
    assert [type(e) for e in effects] == [ItemQueued, MessageAdded]
    assert only(effects, ItemQueued).reason is FlushReason.MAX_WAIT
    assert queued_texts(core) == [["a", "b", "c"]]
    assert core.deadline == 3.0


def test_the_reason_is_window_when_the_window_ends_before_max_wait() -> None:
    core = make_core(window=1.0, max_wait=5.0)
    core.enqueue(msg("a"), now=0.0)
    assert only(core.tick(1.0), ItemQueued).reason is FlushReason.WINDOW


def test_the_reason_is_max_wait_when_window_and_max_wait_end_together() -> None:
    core = make_core(window=2.0, max_wait=3.0)
    core.enqueue(msg("a"), now=0.0)
    core.enqueue(msg("b"), now=1.0)  # the window ends at 3.0, as does max_wait
    assert core.deadline == 3.0
    assert only(core.tick(3.0), ItemQueued).reason is FlushReason.MAX_WAIT


def test_max_wait_lateness_is_measured_from_the_capped_deadline() -> None:
    core = make_core(window=4.0, max_wait=1.0)
    core.enqueue(msg("a"), now=0.0)
    queued = only(core.tick(1.75), ItemQueued)
    assert (queued.reason, queued.lateness) == (FlushReason.MAX_WAIT, 0.75)


# -- batching disabled ------------------------------------------------------------------------------------


def test_with_batching_off_each_message_is_its_own_item_with_the_message_as_payload() -> None:
    core = make_core(batching=False)
    first, second = msg("a"), msg("b")
    effects = core.enqueue(first, now=0.0)
    queued = only(effects, ItemQueued)
    assert queued.reason is FlushReason.UNBATCHED and queued.lateness == 0.0
    assert queued.item.payload is first
    assert of_type(effects, MessageAdded) == []
    core.enqueue(second, now=0.0)
    assert [item.payload for item in core.waiting()] == [first, second]
    assert core.open_batch is None and core.deadline is None


def test_turning_batching_off_closes_the_open_batch_with_reason_settings_first() -> None:
    core = make_core(window=5.0)
    core.enqueue(msg("a"), now=0.0)
    core.enqueue(msg("b"), now=1.0)
    core.configure(BatchSettings(batching=False))
    effects = core.enqueue(msg("c"), now=2.0)
    reasons = [(e.reason, e.lateness) for e in of_type(effects, ItemQueued)]
    assert reasons == [(FlushReason.SETTINGS, 0.0), (FlushReason.UNBATCHED, 0.0)]
    assert [item.size for item in core.waiting()] == [2, 1]
    assert isinstance(core.waiting()[1].payload, QueuedMessage)


def test_turning_batching_off_does_not_close_the_open_batch_before_the_next_message() -> None:
    core = make_core(window=5.0)
    core.enqueue(msg("a"), now=0.0)
    core.configure(BatchSettings(batching=False))
    assert core.open_batch is not None and core.deadline == 5.0
    assert only(core.tick(5.0), ItemQueued).reason is FlushReason.WINDOW


def test_an_overdue_batch_closes_for_its_own_reason_when_batching_was_turned_off() -> None:
    core = make_core(window=1.0)
    core.enqueue(msg("a"), now=0.0)
    core.configure(BatchSettings(batching=False))
    effects = core.enqueue(msg("b"), now=3.0)
    reasons = [(e.reason, e.lateness) for e in of_type(effects, ItemQueued)]
    assert reasons == [(FlushReason.WINDOW, 2.0), (FlushReason.UNBATCHED, 0.0)]


def test_an_unbatched_message_is_delivered_at_once_to_an_idle_processor() -> None:
    core = make_core(batching=False, attached=True)
    m = msg("a")
    deliver = only(core.enqueue(m, now=0.0), Deliver)
    assert deliver.item.payload is m
    assert (deliver.reason, deliver.delivery_id) == (FlushReason.UNBATCHED, 1)


# -- settings ---------------------------------------------------------------------------------------------


def test_configure_changes_the_settings_reported_for_the_next_batch() -> None:
    core = make_core()
    new = BatchSettings(window=3.0, max_batch_size=2)
    core.configure(new)
    assert core.settings is new


def test_the_open_batch_keeps_the_size_cap_it_opened_with() -> None:
    core = make_core(window=10.0, max_batch_size=3)
    core.enqueue(msg("a"), now=0.0)
    core.configure(BatchSettings(window=10.0, max_batch_size=1))
    core.enqueue(msg("b"), now=0.0)
    assert core.waiting() == ()  # still collecting under the old cap of 3
    assert only(core.enqueue(msg("c"), now=0.0), ItemQueued).reason is FlushReason.FULL
    assert only(core.enqueue(msg("d"), now=0.0), ItemQueued).reason is FlushReason.FULL  # new cap: 1
    assert queued_texts(core) == [["a", "b", "c"], ["d"]]


def test_the_open_batch_keeps_the_window_it_opened_with() -> None:
    core = make_core(window=1.0)
    core.enqueue(msg("a"), now=0.0)
    core.configure(BatchSettings(window=10.0))
    core.enqueue(msg("b"), now=0.5)
    assert core.deadline == 1.5
    core.tick(1.5)
    core.enqueue(msg("c"), now=2.0)
    assert core.deadline == 12.0


def test_a_new_max_wait_applies_only_to_the_next_batch() -> None:
    core = make_core(window=2.0)
    core.enqueue(msg("a"), now=0.0)
    core.configure(BatchSettings(window=2.0, max_wait=1.0))
    core.enqueue(msg("b"), now=1.5)
    assert core.deadline == 3.5
    core.tick(3.5)
    core.enqueue(msg("c"), now=4.0)
    assert core.deadline == 5.0


# -- late messages ----------------------------------------------------------------------------------------


def test_an_overdue_batch_is_closed_before_a_late_message_opens_a_new_one() -> None:
    core = make_core(window=1.0)
    core.enqueue(msg("a"), now=0.0)
    effects = core.enqueue(msg("b"), now=1.5)  # nobody ticked at 1.0
    assert [type(e) for e in effects] == [ItemQueued, MessageAdded]
    queued = effects[0]
    assert isinstance(queued, ItemQueued)
    assert (queued.reason, queued.lateness) == (FlushReason.WINDOW, 0.5)
    assert queued_texts(core) == [["a"]]
    assert core.open_batch is not None and [m.text for m in core.open_batch.messages] == ["b"]
    assert core.deadline == 2.5


def test_a_message_exactly_at_the_deadline_starts_a_new_batch() -> None:
    core = make_core(window=1.0)
    core.enqueue(msg("a"), now=0.0)
    core.enqueue(msg("b"), now=1.0)
    assert queued_texts(core) == [["a"]]


# -- FIFO and delivery ------------------------------------------------------------------------------------


def test_items_are_delivered_in_the_order_their_batches_closed() -> None:
    core = make_core(window=1.0, max_batch_size=2)
    for i, now in enumerate((0.0, 0.0, 0.5, 2.0, 4.0)):
        core.enqueue(msg(f"m{i}"), now=now)
    core.tick(5.0)
    assert queued_texts(core) == [["m0", "m1"], ["m2"], ["m3"], ["m4"]]
    delivered = []
    effects = core.attach()
    while effects:
        deliver = only(effects, Deliver)
        delivered.append(texts(deliver.item))
        effects = [e for e in core.finish(deliver.delivery_id) if isinstance(e, Deliver)]
    assert delivered == [["m0", "m1"], ["m2"], ["m3"], ["m4"]]


def test_nothing_is_delivered_before_a_processor_attaches() -> None:
    core = make_core(max_batch_size=1)
    effects = core.enqueue(msg("a"), now=0.0) + core.enqueue(msg("b"), now=0.0)
    assert of_type(effects, Deliver) == []
    assert core.state is ChannelState.DETACHED and core.in_flight is None
    assert len(core.waiting()) == 2


def test_attach_delivers_the_head_item_and_moves_to_busy() -> None:
    core = make_core(max_batch_size=1)
    core.enqueue(msg("a"), now=0.0)
    core.enqueue(msg("b"), now=0.0)
    deliver = only(core.attach(), Deliver)
    assert (texts(deliver.item), deliver.delivery_id, deliver.reason) == (["a"], 1, FlushReason.FULL)
    assert core.state is ChannelState.BUSY
    assert core.in_flight == (1, deliver.item)
    assert queued_texts(core) == [["b"]]


def test_attach_with_nothing_waiting_moves_to_idle() -> None:
    core = make_core()
    assert core.attach() == []
    assert core.state is ChannelState.IDLE


def test_attach_twice_does_not_deliver_a_second_item() -> None:
    core = make_core(max_batch_size=1)
    core.enqueue(msg("a"), now=0.0)
    core.enqueue(msg("b"), now=0.0)
    core.attach()
    assert core.attach() == []
    assert core.in_flight is not None and core.in_flight[0] == 1


def test_exactly_one_item_is_in_flight_until_the_processor_answers() -> None:
    core = make_core(max_batch_size=1, attached=True)
    first = core.enqueue(msg("a"), now=0.0)
    assert len(of_type(first, Deliver)) == 1
    later = core.enqueue(msg("b"), now=0.0) + core.enqueue(msg("c"), now=0.0)
    assert of_type(later, Deliver) == []
    assert core.statistics().in_flight and core.statistics().queued == 2


def test_finish_reports_the_item_and_delivers_the_next_with_a_new_delivery_id() -> None:
    core = make_core(max_batch_size=1, attached=True)
    core.enqueue(msg("a"), now=0.0)
    core.enqueue(msg("b"), now=0.0)
    assert core.in_flight is not None
    first_item = core.in_flight[1]
    effects = core.finish(1)
    assert [type(e) for e in effects] == [DeliveryFinished, Deliver]
    assert effects[0] == DeliveryFinished(first_item, 1, None)
    deliver = effects[1]
    assert isinstance(deliver, Deliver)
    assert deliver.delivery_id == 2 and texts(deliver.item) == ["b"]


def test_finish_with_an_error_counts_the_item_as_processed_and_failed() -> None:
    core = make_core(max_batch_size=1, attached=True)
    core.enqueue(msg("a"), now=0.0)
    finished = only(core.finish(1, error="boom"), DeliveryFinished)
    assert finished.error == "boom"
    stats = core.statistics()
    assert (stats.processed, stats.failed, stats.cancelled) == (1, 1, 0)
    assert core.state is ChannelState.IDLE


def test_an_idle_processor_gets_a_batch_as_soon_as_it_closes() -> None:
    core = make_core(window=1.0, attached=True)
    core.enqueue(msg("a"), now=0.0)
    effects = core.tick(1.0)
    assert [type(e) for e in effects] == [ItemQueued, Deliver]


# -- enqueue_front ----------------------------------------------------------------------------------------


def test_enqueue_front_puts_the_item_at_the_head_of_the_waiting_items() -> None:
    core = make_core(max_batch_size=1)
    core.enqueue(msg("a"), now=0.0)
    core.enqueue(msg("b"), now=0.0)
    effects = core.enqueue_front(msg("urgent"), now=0.0)
    queued = only(effects, ItemQueued)
    assert (queued.reason, queued.lateness) == (FlushReason.FRONT, 0.0)
    assert queued_texts(core) == [["urgent"], ["a"], ["b"]]


def test_enqueue_front_goes_behind_the_item_in_flight() -> None:
    core = make_core(max_batch_size=1, attached=True)
    core.enqueue(msg("a"), now=0.0)
    core.enqueue(msg("b"), now=0.0)
    effects = core.enqueue_front(msg("urgent"), now=0.0)
    assert of_type(effects, Deliver) == []
    assert core.in_flight is not None and texts(core.in_flight[1]) == ["a"]
    deliver = only(core.finish(1), Deliver)
    assert texts(deliver.item) == ["urgent"] and deliver.reason is FlushReason.FRONT


def test_enqueue_front_to_an_idle_processor_is_delivered_at_once() -> None:
    core = make_core(attached=True)
    deliver = only(core.enqueue_front(msg("urgent"), now=0.0), Deliver)
    assert deliver.reason is FlushReason.FRONT


def test_enqueue_front_leaves_the_open_batch_alone() -> None:
    core = make_core(window=1.0)
    core.enqueue(msg("a"), now=0.0)
    core.enqueue_front(msg("urgent"), now=0.5)
    assert core.deadline == 1.0
    assert core.open_batch is not None and core.open_batch.size == 1


def test_enqueue_front_accepts_a_batch_payload() -> None:
    core = make_core()
    batch = MessageBatch()
    batch.add(msg("x"))
    batch.add(msg("y"))
    item = only(core.enqueue_front(batch, now=0.0), ItemQueued).item
    assert item.payload == batch and item.size == 2 and item.channel_id == CHANNEL


def test_the_latest_front_insertion_is_delivered_first() -> None:
    core = make_core()
    core.enqueue_front(msg("f1"), now=0.0)
    core.enqueue_front(msg("f2"), now=0.0)
    assert queued_texts(core) == [["f2"], ["f1"]]


def test_enqueue_front_of_an_empty_batch_raises_invalid_input() -> None:
    core = make_core()
    with pytest.raises(InvalidInput, match="enqueue_front needs a non-empty batch"):
        core.enqueue_front(MessageBatch(), now=0.0)
    assert core.waiting() == ()


def test_enqueue_front_of_another_channels_message_raises_invalid_input() -> None:
    core = make_core()
    with pytest.raises(InvalidInput, match=r"item for channel 'other' sent to channel 'chan-1'"):
        core.enqueue_front(msg("x", channel="other"), now=0.0)
    assert core.waiting() == ()


def test_enqueue_front_of_a_batch_holding_another_channels_message_raises_invalid_input() -> None:
    # Every message of every item belongs to the channel; checking only the first message is not enough.
    core = make_core()
    batch = MessageBatch()
    batch.add(msg("mine"))
    batch.add(msg("theirs", channel="other"))
    with pytest.raises(InvalidInput, match="other"):
        core.enqueue_front(batch, now=0.0)
    assert core.waiting() == ()


# -- cancel -----------------------------------------------------------------------------------------------


def test_cancel_current_abandons_the_in_flight_item_and_delivers_the_next() -> None:
    core = make_core(max_batch_size=1, attached=True)
    core.enqueue(msg("a"), now=0.0)
    core.enqueue(msg("b"), now=0.0)
    assert core.in_flight is not None
    first = core.in_flight[1]
    cancelled, effects = core.cancel_current()
    assert cancelled is True
    assert [type(e) for e in effects] == [DeliveryCancelled, Deliver]
    assert effects[0] == DeliveryCancelled(first, 1)
    deliver = effects[1]
    assert isinstance(deliver, Deliver) and deliver.delivery_id == 2 and texts(deliver.item) == ["b"]
    assert core.statistics().cancelled == 1 and core.statistics().processed == 0


def test_cancel_current_with_nothing_in_flight_returns_false_and_no_effects() -> None:
    core = make_core(attached=True)
    assert core.cancel_current() == (False, [])
    assert core.statistics().cancelled == 0


def test_cancel_current_while_detached_delivers_nothing() -> None:
    core = make_core(max_batch_size=1)
    core.enqueue(msg("a"), now=0.0)
    assert core.cancel_current() == (False, [])
    assert len(core.waiting()) == 1


def test_a_late_reply_for_a_cancelled_delivery_is_ignored() -> None:
    core = make_core(max_batch_size=1, attached=True)
    core.enqueue(msg("a"), now=0.0)
    core.enqueue(msg("b"), now=0.0)
    core.cancel_current()
    before = core.statistics()
    assert core.finish(1) == []
    assert core.finish(1, error="late") == []
    assert core.statistics() == before
    assert core.in_flight is not None and core.in_flight[0] == 2


def test_a_second_reply_for_a_finished_delivery_is_ignored() -> None:
    core = make_core(max_batch_size=1, attached=True)
    core.enqueue(msg("a"), now=0.0)
    core.finish(1)
    assert core.finish(1) == []
    assert core.statistics().processed == 1


@pytest.mark.parametrize("delivery_id", [0, -1, 2, 99])
def test_a_reply_for_a_never_issued_delivery_raises_protocol_violation(delivery_id: int) -> None:
    core = make_core(max_batch_size=1, attached=True)
    core.enqueue(msg("a"), now=0.0)
    with pytest.raises(ProtocolViolation) as caught:
        core.finish(delivery_id)
    text = str(caught.value)
    assert f"delivery {delivery_id}" in text
    assert "state busy" in text
    assert core.in_flight is not None and core.in_flight[0] == 1


def test_a_reply_before_any_delivery_names_the_detached_state() -> None:
    core = make_core()
    with pytest.raises(ProtocolViolation, match=r"reply for delivery 1 in state detached"):
        core.finish(1)


# -- clear ------------------------------------------------------------------------------------------------


def test_clear_discards_the_waiting_items_and_returns_how_many() -> None:
    core = make_core(max_batch_size=1)
    core.enqueue(msg("a"), now=0.0)
    core.enqueue(msg("b"), now=0.0)
    waiting = core.waiting()
    count, effects = core.clear()
    assert count == 2
    assert effects == [QueueCleared(waiting)]
    assert core.waiting() == ()


def test_clear_with_nothing_waiting_returns_zero_and_no_effects() -> None:
    assert make_core().clear() == (0, [])


def test_clear_keeps_the_open_batch_and_the_item_in_flight() -> None:
    core = make_core(window=1.0, max_batch_size=2, attached=True)
    for t in "abcd":
        core.enqueue(msg(t), now=0.0)  # [a b] in flight, [c d] waiting
    core.enqueue(msg("e"), now=0.0)  # open batch
    count, _ = core.clear()
    assert count == 1
    assert core.in_flight is not None and texts(core.in_flight[1]) == ["a", "b"]
    assert core.open_batch is not None and [m.text for m in core.open_batch.messages] == ["e"]
    assert core.deadline == 1.0


# -- stop -------------------------------------------------------------------------------------------------


def test_stop_cancels_the_in_flight_item_and_detaches() -> None:
    core = make_core(max_batch_size=1, attached=True)
    core.enqueue(msg("a"), now=0.0)
    core.enqueue(msg("b"), now=0.0)
    assert core.in_flight is not None
    first = core.in_flight[1]
    cancelled, effects = core.stop()
    assert cancelled is True
    assert effects == [DeliveryCancelled(first, 1)]
    assert core.state is ChannelState.DETACHED
    stats = core.statistics()
    assert (stats.has_processor, stats.in_flight, stats.cancelled, stats.queued) == (False, False, 1, 1)


def test_stop_with_nothing_in_flight_returns_false_and_detaches() -> None:
    core = make_core(attached=True)
    assert core.stop() == (False, [])
    assert core.state is ChannelState.DETACHED


def test_after_stop_items_wait_and_are_delivered_when_a_processor_attaches_again() -> None:
    core = make_core(window=1.0, max_batch_size=1, attached=True)
    core.enqueue(msg("a"), now=0.0)
    core.stop()
    core.enqueue(msg("b"), now=0.0)
    assert of_type(core.enqueue(msg("c"), now=0.0), Deliver) == []
    deliver = only(core.attach(), Deliver)
    assert texts(deliver.item) == ["b"] and deliver.delivery_id == 2
    assert queued_texts(core) == [["c"]]


def test_stop_keeps_the_open_batch() -> None:
    core = make_core(window=1.0, attached=True)
    core.enqueue(msg("a"), now=0.0)
    core.stop()
    assert core.open_batch is not None and core.deadline == 1.0
    assert of_type(core.tick(1.0), Deliver) == []


# -- hold -------------------------------------------------------------------------------------------------


def test_hold_without_an_open_batch_returns_false() -> None:
    assert make_core().hold() is False


def test_hold_suspends_the_deadline_so_tick_never_closes_the_batch() -> None:
    core = make_core(window=1.0, max_wait=2.0)
    core.enqueue(msg("a"), now=0.0)
    assert core.hold() is True
    assert core.deadline is None
    assert core.tick(100.0) == []
    assert core.open_batch is not None and core.open_batch.size == 1


def test_the_next_message_restarts_the_window_of_a_held_batch() -> None:
    core = make_core(window=1.0)
    core.enqueue(msg("a"), now=0.0)
    core.hold()
    late = msg("b")
    assert core.enqueue(late, now=10.0) == [MessageAdded(late, 2, 10.0)]  # long after the suspended deadline
    assert core.deadline == 11.0
    queued = only(core.tick(11.0), ItemQueued)
    assert (queued.reason, queued.lateness, texts(queued.item)) == (FlushReason.WINDOW, 0.0, ["a", "b"])


def test_max_wait_of_a_held_batch_counts_from_the_message_that_resumes_it() -> None:
    core = make_core(window=2.0, max_wait=3.0)
    core.enqueue(msg("a"), now=0.0)
    core.hold()
    core.enqueue(msg("b"), now=10.0)
    core.enqueue(msg("c"), now=11.5)
    assert core.deadline == 13.0
    assert only(core.tick(13.0), ItemQueued).reason is FlushReason.MAX_WAIT


def test_a_held_batch_still_closes_when_full() -> None:
    core = make_core(window=1.0, max_batch_size=2)
    core.enqueue(msg("a"), now=0.0)
    core.hold()
    assert only(core.enqueue(msg("b"), now=5.0), ItemQueued).reason is FlushReason.FULL


def test_hold_leaves_the_next_batch_alone() -> None:
    core = make_core(window=1.0, max_batch_size=2)
    core.enqueue(msg("a"), now=0.0)
    core.hold()
    core.enqueue(msg("b"), now=5.0)  # full: closes
    core.enqueue(msg("c"), now=5.0)
    assert core.deadline == 6.0


def test_turning_batching_off_closes_a_held_batch_with_no_lateness() -> None:
    # A held batch has no deadline, so it cannot be late; lateness is measured against a suspended deadline.
    core = make_core(window=1.0)
    core.enqueue(msg("a"), now=0.0)
    core.hold()
    core.configure(BatchSettings(batching=False))
    effects = core.enqueue(msg("b"), now=10.0)
    reasons = [(e.reason, e.lateness) for e in of_type(effects, ItemQueued)]
    assert reasons == [(FlushReason.SETTINGS, 0.0), (FlushReason.UNBATCHED, 0.0)]


# -- restore ----------------------------------------------------------------------------------------------


def stored_item(item_id: str, *names: str, channel: str = CHANNEL) -> QueueItem:
    batch = MessageBatch()
    for name in names:
        batch.add(msg(name, channel=channel))
    return QueueItem(item_id, channel, batch, attempt=2)


def test_restore_puts_the_stored_items_in_the_fifo_head_first_with_reason_restored() -> None:
    core = make_core()
    first, second = stored_item("s1", "a"), stored_item("s2", "b", "c")
    core.restore([first, second], [], now=0.0)
    assert core.waiting() == (first, second)
    deliver = only(core.attach(), Deliver)
    assert (deliver.item, deliver.reason, deliver.lateness, deliver.delivery_id) == (
        first,
        FlushReason.RESTORED,
        0.0,
        1,
    )


def test_restore_reopens_the_batch_with_its_original_deadline() -> None:
    core = make_core(window=2.0, max_wait=3.0)
    core.restore([], [(msg("a"), 100.0), (msg("b"), 101.0)], now=101.5)
    assert core.open_batch is not None and [m.text for m in core.open_batch.messages] == ["a", "b"]
    assert core.deadline == 103.0
    core.enqueue(msg("c"), now=102.5)
    assert core.deadline == 103.0  # max_wait still counts from the restored first message
    queued = only(core.tick(103.0), ItemQueued)
    assert (queued.reason, texts(queued.item)) == (FlushReason.MAX_WAIT, ["a", "b", "c"])


def test_restore_into_a_core_holding_work_raises_protocol_violation() -> None:
    core = make_core()
    core.enqueue(msg("a"), now=0.0)
    with pytest.raises(ProtocolViolation, match=r"restore of channel 'chan-1' in state detached"):
        core.restore([stored_item("s1", "x")], [], now=0.0)


def test_restore_after_a_delivery_raises_protocol_violation() -> None:
    core = make_core(max_batch_size=1, attached=True)
    core.enqueue(msg("a"), now=0.0)
    core.finish(1)
    assert core.is_quiescent
    with pytest.raises(ProtocolViolation, match="in state idle"):
        core.restore([stored_item("s1", "x")], [], now=0.0)


def test_restore_never_leaves_an_attached_processor_idle_beside_waiting_items() -> None:
    # restore() returns no effects, so on an attached core it can neither deliver nor stay silent.
    core = make_core(attached=True)
    try:
        core.restore([stored_item("s1", "a")], [], now=0.0)
    except ProtocolViolation:
        return
    assert not (core.state is ChannelState.IDLE and core.waiting()), "items wait while the processor idles"


def test_restore_never_yields_a_batch_over_the_size_cap() -> None:
    core = make_core(window=1.0, max_batch_size=2)
    core.restore([], [(msg("a"), 0.0), (msg("b"), 0.0), (msg("c"), 0.0)], now=0.0)
    effects = core.enqueue(msg("d"), now=0.5) + core.tick(10.0)
    sizes = [item.size for item in core.waiting()] + [
        e.item.size for e in of_type(effects, ItemQueued)
    ]
    assert sizes and max(sizes) <= 2


def test_restore_of_another_channels_item_raises_invalid_input() -> None:
    core = make_core()
    with pytest.raises(InvalidInput, match="other"):
        core.restore([stored_item("s1", "x", channel="other")], [], now=0.0)


# -- statistics and state ---------------------------------------------------------------------------------


def test_statistics_of_a_fresh_channel_are_all_zero() -> None:
    assert make_core().statistics() == ChannelStatistics(
        channel_id=CHANNEL,
        queued=0,
        open_batch_size=0,
        in_flight=False,
        processed=0,
        cancelled=0,
        failed=0,
        has_processor=False,
    )


def test_statistics_are_a_snapshot_of_every_count() -> None:
    core = make_core(window=1.0, max_batch_size=1, attached=True)
    for t in "abcd":
        core.enqueue(msg(t), now=0.0)  # a in flight; b c d waiting
    core.finish(1)  # b in flight
    core.finish(2, error="bad")  # c in flight
    core.cancel_current()  # d in flight
    core.configure(BatchSettings(window=1.0, max_batch_size=5))
    core.enqueue(msg("e"), now=0.0)
    core.enqueue(msg("f"), now=0.0)
    core.enqueue_front(msg("front"), now=0.0)
    snapshot = core.statistics()
    assert snapshot == ChannelStatistics(
        channel_id=CHANNEL,
        queued=1,
        open_batch_size=2,
        in_flight=True,
        processed=2,
        cancelled=1,
        failed=1,
        has_processor=True,
        attempts=4,
    )
    core.finish(4)
    assert snapshot.processed == 2  # the snapshot does not change afterwards
    with pytest.raises(AttributeError):
        snapshot.processed = 9  # type: ignore[misc]


def test_counts_given_to_the_constructor_are_carried_on() -> None:
    core = ChannelCore(CHANNEL, processed=5, cancelled=2, failed=1)
    stats = core.statistics()
    assert (stats.processed, stats.cancelled, stats.failed) == (5, 2, 1)


def test_a_core_without_settings_uses_the_defaults() -> None:
    assert ChannelCore(CHANNEL).settings == BatchSettings()


def test_is_quiescent_only_when_nothing_is_open_waiting_or_in_flight() -> None:
    core = make_core(window=1.0, attached=True)
    assert core.is_quiescent
    core.enqueue(msg("a"), now=0.0)
    assert not core.is_quiescent  # open
    core.tick(1.0)
    assert not core.is_quiescent  # in flight
    core.finish(1)
    assert core.is_quiescent


def test_a_message_for_another_channel_raises_invalid_input_and_changes_nothing() -> None:
    core = make_core()
    with pytest.raises(InvalidInput, match=r"message for channel 'other' sent to channel 'chan-1'"):
        core.enqueue(msg("x", channel="other"), now=0.0)
    assert core.open_batch is None and core.waiting() == ()


# -- item ids ---------------------------------------------------------------------------------------------


def test_item_ids_come_from_the_injected_new_id() -> None:
    core = make_core(max_batch_size=1)
    core.enqueue(msg("a"), now=0.0)
    core.enqueue_front(msg("b"), now=0.0)
    assert [item.item_id for item in core.waiting()] == ["item-2", "item-1"]


def test_default_item_ids_are_unique() -> None:
    core = ChannelCore(CHANNEL, BatchSettings(max_batch_size=1))
    for i in range(50):
        core.enqueue(msg(f"m{i}"), now=0.0)
    ids = [item.item_id for item in core.waiting()]
    assert len(set(ids)) == 50
    assert all(isinstance(i, str) and i for i in ids)


def test_items_carry_the_channel_and_start_at_attempt_one() -> None:
    core = make_core(max_batch_size=1)
    core.enqueue(msg("a"), now=0.0)
    (item,) = core.waiting()
    assert (item.channel_id, item.attempt, item.size) == (CHANNEL, 1, 1)


# -- BatchSettings validation -----------------------------------------------------------------------------


def test_batch_settings_defaults() -> None:
    assert BatchSettings() == BatchSettings(window=5.0, max_batch_size=10, max_wait=None, batching=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, f"max_batch_size must be in 1..{MAX_BATCH_SIZE}, got 0"),
        ({"max_batch_size": -3}, f"max_batch_size must be in 1..{MAX_BATCH_SIZE}, got -3"),
        ({"max_batch_size": MAX_BATCH_SIZE + 1}, f"max_batch_size must be in 1..100, got {MAX_BATCH_SIZE + 1}"),
        ({"max_batch_size": True}, "max_batch_size must be an int, got True"),
        ({"max_batch_size": 2.0}, "max_batch_size must be an int, got 2.0"),
        ({"window": -0.5}, "window must be >= 0 and finite, got -0.5"),
        ({"window": math.nan}, "window must be >= 0 and finite, got nan"),
        ({"window": math.inf}, "window must be >= 0 and finite, got inf"),
        ({"window": True}, "window must be a number of seconds, got True"),
        ({"window": "5"}, "window must be a number of seconds, got '5'"),
        ({"max_wait": 0}, "max_wait must be > 0 and finite, got 0"),
        ({"max_wait": -1.0}, "max_wait must be > 0 and finite, got -1.0"),
        ({"max_wait": math.inf}, "max_wait must be > 0 and finite, got inf"),
        ({"max_wait": math.nan}, "max_wait must be > 0 and finite, got nan"),
        ({"max_wait": False}, "max_wait must be a number of seconds or None, got False"),
        ({"batching": 1}, "batching must be a bool, got 1"),
    ],
)
def test_batch_settings_reject_out_of_range_values_naming_rule_and_value(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidSettings) as caught:
        BatchSettings(**kwargs)
    assert str(caught.value) == message


def test_batch_settings_accept_boundary_values() -> None:
    settings = BatchSettings(window=0, max_batch_size=1, max_wait=0.001, batching=False)
    assert (settings.window, settings.max_batch_size, settings.max_wait) == (0, 1, 0.001)
    assert BatchSettings(max_batch_size=MAX_BATCH_SIZE).max_batch_size == MAX_BATCH_SIZE


def test_invalid_settings_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        BatchSettings(max_batch_size=0)


def test_batch_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        BatchSettings().window = 1.0  # type: ignore[misc]


# -- seed API: MessageBatch and QueuedMessage -------------------------------------------------------------


def test_message_batch_add_appends_and_slides_last_at() -> None:
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    batch = MessageBatch()
    batch.add(msg("a"), t0)
    batch.add(msg("b"), t0 + timedelta(seconds=3))
    assert [m.text for m in batch.messages] == ["a", "b"]
    assert batch.size == 2
    assert batch.first_at == t0
    assert batch.last_at == t0 + timedelta(seconds=3)


def test_message_batch_add_without_a_time_stamps_now_in_utc() -> None:
    batch = MessageBatch()
    before = datetime.now(timezone.utc)
    batch.add(msg("a"))
    after = datetime.now(timezone.utc)
    assert before <= batch.first_at == batch.last_at <= after


def test_message_batch_channel_id_is_the_channel_of_its_messages() -> None:
    batch = MessageBatch()
    batch.add(msg("a"))
    assert batch.channel_id == CHANNEL


def test_an_empty_message_batch_has_no_channel_id() -> None:
    with pytest.raises(ValueError, match="an empty MessageBatch has no channel_id"):
        _ = MessageBatch().channel_id


def test_an_empty_message_batch_has_size_zero() -> None:
    assert MessageBatch().size == 0


def test_unique_authors_lists_each_author_once_in_order_of_first_appearance() -> None:
    batch = MessageBatch()
    for user in ("bob", "ann", "bob", "cid", "ann"):
        batch.add(msg("x", user=user))
    assert batch.unique_authors() == ["bob", "ann", "cid"]


def test_queued_message_is_stamped_with_an_aware_utc_time() -> None:
    before = datetime.now(timezone.utc)
    stamped = msg("a").queued_at
    assert stamped.tzinfo is not None and stamped.utcoffset() == timedelta(0)
    assert before <= stamped <= datetime.now(timezone.utc)


def test_queued_messages_do_not_share_their_extra_dict() -> None:
    first, second = msg("a"), msg("b")
    first.extra["k"] = 1
    assert first.extra == {"k": 1}
    assert second.extra == {}


def test_raw_takes_no_part_in_queued_message_equality() -> None:
    stamp = datetime(2024, 1, 1, tzinfo=timezone.utc)
    kwargs: dict[str, Any] = dict(
        platform="p", channel_id=CHANNEL, user_id="u", user_name="U", text="t", queued_at=stamp
    )
    assert QueuedMessage(**kwargs, raw=object()) == QueuedMessage(**kwargs, raw="other")
    assert QueuedMessage(**kwargs) != QueuedMessage(**{**kwargs, "text": "different"})


def test_item_ids_are_unique_and_a_forked_child_draws_its_own() -> None:
    ids = {_new_item_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report one id and leave at once
        os.write(write, _new_item_id().encode())
        os._exit(0)
    os.close(write)
    try:
        child = os.read(read, 64).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    mine = _new_item_id()
    assert len(child) == 32
    assert child[:16] != mine[:16]  # a new random prefix, so the two counters cannot produce the same id


def test_without_added_effects_a_core_batches_the_same_and_reports_only_the_rest() -> None:
    settings = BatchSettings(window=1.0, max_batch_size=3)
    full = ChannelCore(CHANNEL, settings, new_id=counting_ids())
    quiet = ChannelCore(CHANNEL, settings, new_id=counting_ids(), added_effects=False)
    for core in (full, quiet):
        core.attach()
    for i in range(4):
        message = msg(f"m{i}")
        reported = full.enqueue(message, float(i) * 0.1)
        effects = quiet.enqueue(message, float(i) * 0.1)
        assert of_type(reported, MessageAdded)
        assert not of_type(effects, MessageAdded)
        assert effects == [e for e in reported if not isinstance(e, MessageAdded)]
    assert full.statistics() == quiet.statistics()
    assert quiet.in_flight is not None and texts(quiet.in_flight[1]) == ["m0", "m1", "m2"]
