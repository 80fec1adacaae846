"""The conversation rules of the batching core, one example each, and the wire form of the new fields."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from actors.batching import MAX_REMEMBERED_IDS, ChannelCore, Deliver, MessageRejected
from protocol.codec import decode, encode
from protocol.errors import InvalidInput, InvalidSettings
from protocol.validation import validate_message
from protocol.values import BatchSettings, ChannelStatistics, MessageBatch, QueuedMessage, QueueItem

AT = datetime(2026, 1, 1, tzinfo=timezone.utc)


def msg(text: str, mid: str = "", user: str = "ann", channel: str = "c") -> QueuedMessage:
    return QueuedMessage("p", channel, user, user.title(), text, AT, message_id=mid)


def texts(payload: object) -> list[str]:
    assert isinstance(payload, MessageBatch)
    return [m.text for m in payload.messages]


# -- wire form --------------------------------------------------------------------------------------------

# Frames written before message_id and interrupted existed (QueuedMessage("p", "c", "u", "U", "hi", AT) and a
# QueueItem "i1" holding it): they still decode, with the defaults.
OLD_MESSAGE = bytes.fromhex("98a36d7367a170a163a175a155a2686993ce6955b900000080")
OLD_ITEM = bytes.fromhex("95a46974656da26931a16398a36d7367a170a163a175a155a2686993ce6955b90000008001")


def test_a_message_written_before_message_id_decodes_with_an_empty_id() -> None:
    decoded = decode(OLD_MESSAGE, QueuedMessage)
    assert decoded == QueuedMessage("p", "c", "u", "U", "hi", AT)
    assert decoded.message_id == ""


def test_an_item_written_before_interrupted_decodes_as_not_interrupted() -> None:
    decoded = decode(OLD_ITEM, QueueItem)
    assert decoded == QueueItem("i1", "c", QueuedMessage("p", "c", "u", "U", "hi", AT))
    assert decoded.interrupted is False


def test_message_id_and_interrupted_round_trip() -> None:
    message = msg("hi", "plat-42")
    assert decode(encode(message), QueuedMessage).message_id == "plat-42"
    unicode = msg("hi", "id-é")  # the generic path
    assert decode(encode(unicode), QueuedMessage) == unicode
    item = QueueItem("i", "c", MessageBatch([message]), 2, interrupted=True)
    assert decode(encode(item), QueueItem) == item


def test_statistics_and_settings_round_trip_with_the_new_fields() -> None:
    stats = ChannelStatistics("c", 1, 2, True, 3, 4, 5, True, 6, 7, 8, 9, 10)
    assert decode(encode(stats)) == stats
    settings = BatchSettings(busy_policy="interrupt", split_on_author=True, dedupe_ttl=0.0)
    assert decode(encode(settings)) == settings


def test_a_message_id_over_256_bytes_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidInput, match="message_id must be at most 256 bytes of UTF-8, got 257 bytes"):
        validate_message(msg("hi", "x" * 257))
    with pytest.raises(InvalidInput, match="message_id must be a str, got int"):
        validate_message(msg("hi", 5))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="message_id"):
        encode(msg("hi", "é" * 129))


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("busy_policy", "drop", "busy_policy must be one of queue, collect, interrupt, reject, got 'drop'"),
        ("split_on_author", 1, "split_on_author must be a bool, got 1"),
        ("dedupe_ttl", -1.0, "dedupe_ttl must be >= 0 and finite, got -1.0"),
        ("dedupe_ttl", "10", "dedupe_ttl must be a number of seconds, got '10'"),
    ],
)
def test_invalid_conversation_settings_name_the_field(field: str, value: object, error: str) -> None:
    with pytest.raises(InvalidSettings) as caught:
        BatchSettings(**{field: value})  # type: ignore[arg-type]
    assert str(caught.value) == error


# -- rules ------------------------------------------------------------------------------------------------


def test_a_channel_remembers_at_most_a_bounded_number_of_ids_oldest_forgotten_first() -> None:
    core = ChannelCore("c", BatchSettings(window=1.0, max_batch_size=100))
    for i in range(MAX_REMEMBERED_IDS + 1):
        core.enqueue(msg(f"t{i}", f"id{i}"), 0.0)
    remembered = core.remembered_ids(0.0)
    assert len(remembered) == MAX_REMEMBERED_IDS
    assert remembered[0][0] == "id1"
    assert core.enqueue(msg("again", "id0"), 0.0) != []  # forgotten: accepted again
    assert core.enqueue(msg("again", "id5"), 0.0) == []  # remembered: dropped
    assert core.statistics().duplicates == 1


def test_an_id_is_forgotten_after_dedupe_ttl() -> None:
    core = ChannelCore("c", BatchSettings(window=100.0, dedupe_ttl=10.0))
    core.enqueue(msg("a", "x"), 0.0)
    assert core.enqueue(msg("a again", "x"), 9.75) == []
    assert core.enqueue(msg("a later", "x"), 10.0) != []
    assert core.statistics().duplicates == 1


def test_interrupt_gives_the_cancelled_messages_back_in_front_and_flags_the_item() -> None:
    core = ChannelCore("c", BatchSettings(window=1.0, busy_policy="interrupt"))
    core.attach()
    core.enqueue(msg("a"), 0.0)
    core.enqueue(msg("b"), 0.5)
    [deliver] = [e for e in core.tick(1.5) if isinstance(e, Deliver)]
    assert texts(deliver.item.payload) == ["a", "b"]
    core.enqueue(msg("c"), 2.0)
    assert core.in_flight is None and core.deadline == 3.0
    [again] = [e for e in core.tick(3.0) if isinstance(e, Deliver)]
    assert texts(again.item.payload) == ["a", "b", "c"] and again.item.interrupted
    stats = core.statistics()
    assert (stats.interruptions, stats.cancelled) == (1, 1)


def test_reject_refuses_while_busy_and_accepts_again_once_answered() -> None:
    core = ChannelCore("c", BatchSettings(window=0.0, busy_policy="reject"))
    core.attach()
    core.enqueue(msg("a", "1"), 0.0)
    core.tick(0.0)
    assert core.enqueue(msg("b", "2"), 0.0) == [MessageRejected(msg("b", "2"))]
    flight = core.in_flight
    assert flight is not None
    core.finish(flight[0])
    assert core.enqueue(msg("b", "2"), 1.0) != []  # a refused id was not remembered
    assert core.statistics().rejections == 1


def test_edit_and_retract_need_a_message_id_of_the_channel() -> None:
    core = ChannelCore("c")
    with pytest.raises(InvalidInput, match="edit needs a non-empty message_id"):
        core.edit(msg("a"))
    with pytest.raises(InvalidInput, match="retract for channel 'd' sent to channel 'c'"):
        core.retract("d", "x")


def test_the_dedupe_memory_benchmark_reports_the_bound() -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "bench_dedupe_memory.py"
    result = subprocess.run(
        [sys.executable, str(script), "--ids", "50", "--passivated", "1000"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ids_remembered"] == 50 and report["max_remembered_ids"] == MAX_REMEMBERED_IDS
    assert report["bytes_per_id"] > 0
    passivated = report["passivated"]
    assert passivated["channels_with_one_id"] == 1000 and passivated["ids_each"] == 50
    assert passivated["bytes_per_channel_with_one_id"] > 0 and passivated["bytes_per_id_with_many_ids"] > 0
