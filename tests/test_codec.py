"""Tests of the msgpack codec: round trips of every type, hostile input, limits and ``check_extra``."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import (
    MAX_INT,
    UTC,
    aware_datetimes,
    batch_settings,
    batches,
    channel_ids,
    channel_statistics,
    counts,
    datetimes,
    extras,
    finite,
    free_text,
    item_ids,
    items,
    messages,
    naive_datetimes,
    names,
    payloads,
    reasons,
    texts,
    utf8_size,
)
from thespian.actors import ActorAddress

import protocol.messages as messages_module
import protocol.values as values_module
from protocol import codec
from protocol.codec import MAX_FRAME_BYTES, MAX_SEQUENCE_ITEMS, TAGS, check_extra, decode, encode
from protocol.errors import DecodeError, InvalidInput, InvalidSettings
from protocol.limits import MAX_CHANNEL_ID_BYTES, MAX_EXTRA_BYTES, MAX_NAME_BYTES, MAX_TEXT_BYTES
from protocol.messages import (
    BatchFlushed,
    BatchHeld,
    BatchReady,
    CancelCurrent,
    Cancelled,
    CancelProcessing,
    ChannelConfigured,
    ChannelPassivated,
    ChannelPaused,
    ChannelSettingsApplied,
    ChannelStopped,
    Clear,
    Cleared,
    ConfigureChannel,
    DeadLetters,
    DeadLettersPurged,
    DeadLettersReplayed,
    Edit,
    Edited,
    Enqueue,
    Enqueued,
    EnqueueFront,
    EnqueueMany,
    FlushBatch,
    GetDeadLetters,
    GetStatistics,
    HoldBatch,
    Observe,
    Observing,
    PauseChannel,
    ProcessingDone,
    ProcessingFailed,
    ProcessingStarted,
    PurgeDeadLetters,
    QueueChanged,
    Rejected,
    ReplayDeadLetters,
    ResumeChannel,
    Retract,
    Retracted,
    StartProcessing,
    Statistics,
    StopChannel,
    Taken,
    TakeWaiting,
)
from protocol.validation import validate_message
from protocol.values import (
    BatchSettings,
    ChannelStatistics,
    DeadLetter,
    FlushReason,
    MessageBatch,
    OpenEntry,
    QueuedMessage,
    QueueItem,
    SeenId,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    QueuedMessage: messages,
    MessageBatch: batches,
    QueueItem: items,
    BatchSettings: batch_settings,
    ChannelStatistics: channel_statistics,
    OpenEntry: st.builds(OpenEntry, message=messages, arrived_at=finite),
    DeadLetter: st.builds(
        DeadLetter, role=st.sampled_from(["redis", "open", "processing"]), reason=st.text(max_size=50),
        data=st.binary(max_size=200), at=finite,
    ) | st.builds(
        DeadLetter, role=st.just("item"), reason=st.text(max_size=50), data=st.just(b""), at=finite,
        item=st.none() | items, attempts=st.integers(0, 9), first_failed_at=finite, last_failed_at=finite,
    ),
    Enqueue: st.builds(Enqueue, message=messages, ack=st.booleans()),
    EnqueueMany: st.builds(
        EnqueueMany, messages=st.lists(messages, max_size=4).map(tuple), ack=st.booleans()
    ),
    EnqueueFront: st.builds(EnqueueFront, payload=payloads, ack=st.booleans()),
    StopChannel: st.builds(StopChannel, channel_id=channel_ids),
    CancelCurrent: st.builds(CancelCurrent, channel_id=channel_ids),
    Clear: st.builds(Clear, channel_id=channel_ids),
    HoldBatch: st.builds(HoldBatch, channel_id=channel_ids),
    ConfigureChannel: st.builds(ConfigureChannel, channel_id=channel_ids, settings=batch_settings),
    GetStatistics: st.builds(GetStatistics, channel_id=st.one_of(st.just(""), channel_ids)),
    Enqueued: st.builds(Enqueued, count=counts),
    Rejected: st.builds(Rejected, command=names, channel_id=free_text, error=names, reason=free_text),
    ProcessingStarted: st.builds(ProcessingStarted, channel_id=st.one_of(st.just(""), channel_ids)),
    ChannelStopped: st.builds(ChannelStopped, channel_id=channel_ids, cancelled=st.booleans()),
    Cancelled: st.builds(Cancelled, channel_id=channel_ids, cancelled=st.booleans()),
    Cleared: st.builds(Cleared, channel_id=channel_ids, removed=counts),
    BatchHeld: st.builds(BatchHeld, channel_id=channel_ids, held=st.booleans()),
    ChannelConfigured: st.builds(ChannelConfigured, channel_id=channel_ids),
    Statistics: st.builds(Statistics, channels=st.lists(channel_statistics, max_size=4).map(tuple)),
    Observing: st.builds(Observing),
    BatchReady: st.builds(
        BatchReady,
        channel_id=channel_ids,
        item=items,
        delivery_id=counts,
        reason=reasons,
        lateness=finite,
        queued=st.integers(-1, 2**63 - 1),
        interrupted=st.booleans(),
    ),
    CancelProcessing: st.builds(CancelProcessing, channel_id=channel_ids, delivery_id=counts),
    ProcessingDone: st.builds(ProcessingDone, channel_id=channel_ids, delivery_id=counts),
    ProcessingFailed: st.builds(
        ProcessingFailed, channel_id=channel_ids, delivery_id=counts, error=free_text
    ),
    QueueChanged: st.builds(QueueChanged, channel_id=channel_ids, queued=counts, in_flight=st.booleans()),
    FlushBatch: st.builds(FlushBatch, channel_id=channel_ids),
    BatchFlushed: st.builds(BatchFlushed, channel_id=channel_ids, flushed=st.booleans()),
    PauseChannel: st.builds(PauseChannel, channel_id=channel_ids),
    ResumeChannel: st.builds(ResumeChannel, channel_id=channel_ids),
    ChannelPaused: st.builds(ChannelPaused, channel_id=channel_ids, paused=st.booleans()),
    ChannelPassivated: st.builds(ChannelPassivated, channel_id=channel_ids),
    ChannelSettingsApplied: st.builds(ChannelSettingsApplied, channel_id=channel_ids, settings=batch_settings),
    Edit: st.builds(Edit, message=messages),
    Edited: st.builds(Edited, channel_id=channel_ids, message_id=names, edited=st.booleans()),
    Retract: st.builds(Retract, channel_id=channel_ids, message_id=names),
    Retracted: st.builds(Retracted, channel_id=channel_ids, message_id=names, retracted=st.booleans()),
    TakeWaiting: st.builds(TakeWaiting, channel_id=channel_ids),
    Taken: st.builds(Taken, channel_id=channel_ids, messages=st.lists(messages, max_size=4).map(tuple)),
    SeenId: st.builds(SeenId, message_id=names, at=finite),
    GetDeadLetters: st.builds(GetDeadLetters, channel_id=channel_ids),
    DeadLetters: st.builds(
        DeadLetters, channel_id=channel_ids,
        letters=st.lists(st.builds(DeadLetter, role=st.just("item"), reason=names, data=st.just(b""), at=finite,
                                   item=items, attempts=st.integers(1, 9)), max_size=3).map(tuple),
    ),
    ReplayDeadLetters: st.builds(ReplayDeadLetters, channel_id=channel_ids),
    DeadLettersReplayed: st.builds(DeadLettersReplayed, channel_id=channel_ids, count=st.integers(0, 2**40)),
    PurgeDeadLetters: st.builds(PurgeDeadLetters, channel_id=channel_ids),
    DeadLettersPurged: st.builds(DeadLettersPurged, channel_id=channel_ids, count=st.integers(0, 2**40)),
}
any_value = st.one_of(*STRATEGIES.values())

# Arbitrary msgpack-able structures, including ones shaped like frames.
random_plain = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.text(max_size=10),
        st.binary(max_size=10),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=20,
)
tagged_junk = st.tuples(st.sampled_from(sorted(TAGS)), st.lists(random_plain, max_size=9)).map(
    lambda pair: [pair[0], *pair[1]]
)


# -- helpers ----------------------------------------------------------------------------------------------


def wire(value: object) -> Any:
    """The plain msgpack structure of an encoded value, for tests that tamper with it."""
    return msgpack.unpackb(encode(value))


def pack(structure: object) -> bytes:
    result: bytes = msgpack.packb(structure, use_bin_type=True)
    return result


def decode_or_decode_error(data: bytes) -> None:
    """Decode ``data``: only ``DecodeError`` may escape, and whatever decodes must encode back to itself."""
    try:
        value = decode(data)
    except DecodeError:
        return
    again = encode(value)
    assert encode(decode(again)) == again


def message(**changes: Any) -> QueuedMessage:
    fields: dict[str, Any] = dict(
        platform="discord",
        channel_id="chan",
        user_id="u1",
        user_name="Ann",
        text="hello",
        queued_at=datetime(2024, 1, 2, 3, 4, 5, 678, tzinfo=UTC),
        extra={},
    )
    fields.update(changes)
    return QueuedMessage(**fields)


def item(payload: QueuedMessage | MessageBatch | None = None) -> QueueItem:
    return QueueItem("item-1", "chan", payload if payload is not None else message())


def decode_error(data: bytes) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode(data)
    return info.value


def protocol_dataclasses() -> list[type[Any]]:
    found = []
    for module in (values_module, messages_module):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and dataclasses.is_dataclass(cls):
                found.append(cls)
    return found


# -- round trips ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(STRATEGIES), ids=lambda cls: cls.__name__)
@FAST
@given(data=st.data())
def test_every_type_round_trips(cls: type[Any], data: st.DataObject) -> None:
    value = data.draw(STRATEGIES[cls])
    decoded = decode(encode(value), cls)
    assert decoded == value
    assert type(decoded) is cls


def test_the_strategies_cover_every_tagged_type() -> None:
    assert set(STRATEGIES) == set(TAGS.values())


def test_every_protocol_dataclass_but_those_holding_actor_addresses_has_a_tag() -> None:
    assert set(protocol_dataclasses()) - set(TAGS.values()) == {StartProcessing, Observe}


def test_tags_are_pinned() -> None:
    # Tags are stored: renaming or reusing one breaks every stored record. Only additions may change this.
    assert {tag: cls.__name__ for tag, cls in TAGS.items()} == {
        "msg": "QueuedMessage",
        "batch": "MessageBatch",
        "item": "QueueItem",
        "settings": "BatchSettings",
        "chan_stats": "ChannelStatistics",
        "open_entry": "OpenEntry",
        "dead_letter": "DeadLetter",
        "enqueue": "Enqueue",
        "enqueue_many": "EnqueueMany",
        "enqueue_front": "EnqueueFront",
        "stop_channel": "StopChannel",
        "cancel_current": "CancelCurrent",
        "clear": "Clear",
        "hold_batch": "HoldBatch",
        "configure_channel": "ConfigureChannel",
        "get_statistics": "GetStatistics",
        "enqueued": "Enqueued",
        "rejected": "Rejected",
        "processing_started": "ProcessingStarted",
        "channel_stopped": "ChannelStopped",
        "cancelled": "Cancelled",
        "cleared": "Cleared",
        "batch_held": "BatchHeld",
        "channel_configured": "ChannelConfigured",
        "statistics": "Statistics",
        "observing": "Observing",
        "batch_ready": "BatchReady",
        "cancel_processing": "CancelProcessing",
        "processing_done": "ProcessingDone",
        "processing_failed": "ProcessingFailed",
        "queue_changed": "QueueChanged",
        "flush_batch": "FlushBatch",
        "batch_flushed": "BatchFlushed",
        "channel_passivated": "ChannelPassivated",
        "pause_channel": "PauseChannel",
        "resume_channel": "ResumeChannel",
        "channel_paused": "ChannelPaused",
        "edit": "Edit",
        "edited": "Edited",
        "retract": "Retract",
        "retracted": "Retracted",
        "take_waiting": "TakeWaiting",
        "taken": "Taken",
        "seen_id": "SeenId",
        "get_dead_letters": "GetDeadLetters",
        "dead_letters": "DeadLetters",
        "replay_dead_letters": "ReplayDeadLetters",
        "dead_letters_replayed": "DeadLettersReplayed",
        "purge_dead_letters": "PurgeDeadLetters",
        "dead_letters_purged": "DeadLettersPurged",
        "channel_settings_applied": "ChannelSettingsApplied",
    }


@FAST
@given(value=aware_datetimes)
def test_aware_datetimes_keep_their_wall_clock_and_offset(value: datetime) -> None:
    decoded = decode(encode(message(queued_at=value)), QueuedMessage).queued_at
    assert decoded == value
    assert decoded.replace(tzinfo=None) == value.replace(tzinfo=None)
    assert decoded.utcoffset() == value.utcoffset()


@FAST
@given(value=naive_datetimes)
def test_naive_datetimes_stay_naive(value: datetime) -> None:
    decoded = decode(encode(message(queued_at=value)), QueuedMessage).queued_at
    assert decoded == value
    assert decoded.tzinfo is None


@FAST
@given(value=st.datetimes(timezones=st.timezones()))
def test_zoneinfo_datetimes_keep_instant_wall_clock_and_offset(value: datetime) -> None:
    # Equality across zones is False for times in a DST fold or gap (PEP 495), so compare the parts.
    decoded = decode(encode(message(queued_at=value)), QueuedMessage).queued_at
    assert decoded.replace(tzinfo=None) == value.replace(tzinfo=None)
    assert decoded.utcoffset() == value.utcoffset()


def test_a_utc_datetime_decodes_with_timezone_utc() -> None:
    decoded = decode(encode(message()), QueuedMessage)
    assert decoded.queued_at.tzinfo is timezone.utc


def test_the_datetime_wire_form_is_unix_seconds_microseconds_and_offset() -> None:
    stamp = datetime(2024, 1, 2, 3, 4, 5, 678, tzinfo=timezone(timedelta(hours=2)))
    assert wire(message(queued_at=stamp))[6] == [int(stamp.timestamp()), 678, 2 * 3600 * 1_000_000]
    naive = datetime(1970, 1, 2, 0, 0, 1, 5)
    assert wire(message(queued_at=naive))[6] == [86_401, 5, None]


def test_the_wire_format_is_a_tagged_positional_array() -> None:
    assert encode(Enqueued(3)) == pack(["enqueued", 3])
    assert wire(Enqueue(message(), ack=True))[0:1] == ["enqueue"]
    assert wire(Enqueue(message(), ack=True))[1][0] == "msg"
    assert wire(Enqueue(message(), ack=True))[2] is True


def test_raw_is_never_encoded_and_decodes_as_none() -> None:
    original = message(raw={"platform": object()})
    data = encode(original)
    assert len(wire(original)) == 1 + 8  # seven fields, then message_id: raw is not among them
    decoded = decode(data, QueuedMessage)
    assert decoded.raw is None
    assert decoded == original


def test_a_flush_reason_travels_as_its_string_value() -> None:
    ready = BatchReady("chan", item(), 1, FlushReason.MAX_WAIT, 0.25)
    assert wire(ready)[4] == "max_wait"
    decoded = decode(encode(ready), BatchReady)
    assert type(decoded.reason) is str
    assert decoded.reason == FlushReason.MAX_WAIT


def test_a_batch_ready_carries_its_count_but_never_its_reply_address() -> None:
    ready = BatchReady("chan", item(), 1, "window", 0.0, 3, reply_to=ActorAddress("/A~a~b"))
    assert len(wire(ready)) == 1 + 7  # tag, then the seven encoded fields (interrupted last)
    decoded = decode(encode(ready), BatchReady)
    assert decoded.queued == 3
    assert decoded.reply_to is None
    assert decoded == ready  # the address takes no part in equality


def test_a_batch_ready_of_the_first_version_decodes_with_no_count() -> None:
    frame = wire(BatchReady("chan", item(), 1, "window", 0.0, 3))[:-2]  # without queued and interrupted
    decoded = decode(pack(frame), BatchReady)
    assert decoded.queued == -1 and decoded.interrupted is False


def test_tuples_in_extra_decode_as_lists() -> None:
    decoded = decode(encode(message(extra={"t": (1, (2, 3))})), QueuedMessage)
    assert decoded.extra == {"t": [1, [2, 3]]}


def test_int_and_float_settings_keep_their_types() -> None:
    decoded = decode(encode(BatchSettings(window=5, max_wait=2.5)), BatchSettings)
    assert type(decoded.window) is int
    assert type(decoded.max_wait) is float


def test_a_payload_union_is_decoded_by_its_tag() -> None:
    batch = MessageBatch([message(), message(text="two")], message().queued_at, message().queued_at)
    assert type(decode(encode(item(batch)), QueueItem).payload) is MessageBatch
    assert type(decode(encode(item(message())), QueueItem).payload) is QueuedMessage


# -- decode: expected type --------------------------------------------------------------------------------


def test_decode_checks_the_expected_type() -> None:
    data = encode(Enqueued(1))
    assert decode(data, Enqueued) == Enqueued(1)
    assert decode(data, (QueueItem, Enqueued)) == Enqueued(1)
    assert str(decode_error_expecting(data, QueueItem)) == "expected QueueItem, got Enqueued"
    error = decode_error_expecting(data, (QueueItem, Cleared))
    assert str(error) == "expected QueueItem or Cleared, got Enqueued"


def decode_error_expecting(data: bytes, expected: type[Any] | tuple[type[Any], ...]) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode(data, expected)
    return info.value


# -- decode: hostile input --------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=300))
def test_decode_of_arbitrary_bytes_raises_only_decode_error(data: bytes) -> None:
    decode_or_decode_error(data)


@FAST
@given(value=any_value, data=st.data())
def test_decode_of_a_truncated_frame_raises_decode_error(value: object, data: st.DataObject) -> None:
    frame = encode(value)
    cut = data.draw(st.integers(0, len(frame) - 1))
    decode_error(frame[:cut])


@FUZZ
@given(value=any_value, data=st.data())
def test_decode_of_a_frame_with_one_byte_changed_raises_only_decode_error(
    value: object, data: st.DataObject
) -> None:
    frame = bytearray(encode(value))
    index = data.draw(st.integers(0, len(frame) - 1))
    frame[index] = data.draw(st.integers(0, 255).filter(lambda b: b != frame[index]))
    decode_or_decode_error(bytes(frame))


@FUZZ
@given(structure=st.one_of(random_plain, tagged_junk))
def test_decode_of_random_msgpack_structures_raises_only_decode_error(structure: object) -> None:
    decode_or_decode_error(pack(structure))


def nodes(structure: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every node below the root of a decoded msgpack structure (lists and map values)."""
    children: Any = ()
    if isinstance(structure, dict):
        children = structure.items()
    elif isinstance(structure, list):
        children = enumerate(structure)
    found = []
    for key, child in children:
        found.append(path + (key,))
        found.extend(nodes(child, path + (key,)))
    return found


def replace(structure: Any, path: tuple[Any, ...], new: object) -> None:
    for key in path[:-1]:
        structure = structure[key]
    structure[path[-1]] = new


@FUZZ
@given(value=any_value, data=st.data())
def test_decode_of_a_frame_with_one_field_replaced_raises_only_decode_error(
    value: object, data: st.DataObject
) -> None:
    structure = wire(value)
    path = data.draw(st.sampled_from(nodes(structure)))
    replace(structure, path, data.draw(random_plain))
    decode_or_decode_error(pack(structure))


@pytest.mark.parametrize(
    "ext",
    [pack(msgpack.ExtType(5, b"abc")), b"\xd6\xff\x00\x00\x00\x01", pack(msgpack.Timestamp(1, 0))],
    ids=["ext", "timestamp-bytes", "timestamp"],
)
def test_decode_rejects_ext_types(ext: bytes) -> None:
    assert isinstance(decode_error(ext).__cause__, ValueError)
    decode_error(b"\x92\xa8enqueued" + ext)
    prefix = pack(wire(message())[:-1])[:-1]  # a frame of before message_id, without its empty extra map
    decode_error(prefix + b"\x81\xa4when" + ext)


def test_decode_rejects_a_zero_length_ext_type() -> None:
    decode_error(b"\xc7\x00\x05")  # ext 8 with no data: caught by ext_hook, not by max_ext_len


@pytest.mark.parametrize("depth", [1_000, 5_000])
def test_decode_rejects_frames_nested_a_thousand_deep(depth: int) -> None:
    decode_error(b"\x91" * depth + b"\xc0")
    decode_error(pack(["enqueued"]).replace(b"\x91", b"\x92", 1) + b"\x91" * depth + b"\xc0")


def test_decode_rejects_extra_nested_a_thousand_deep() -> None:
    prefix = pack(wire(message())[:-1])[:-1]  # a frame of before message_id, without its empty extra map
    error = decode_error(prefix + b"\x81\xa1a" + b"\x91" * 1_000 + b"\xc0")
    assert "extra nesting depth must be at most 4, got 5" in str(error)


def test_decode_rejects_input_over_the_frame_limit_before_parsing() -> None:
    error = decode_error(b"\xc0" * (MAX_FRAME_BYTES + 1))
    assert str(error) == f"a frame must be at most {MAX_FRAME_BYTES} bytes, got {MAX_FRAME_BYTES + 1} bytes"


def test_decode_rejects_a_header_claiming_a_huge_array() -> None:
    decode_error(b"\xdd\xff\xff\xff\xff" + b"\xc0" * 10)
    decode_error(b"\xdb\xff\xff\xff\xff")  # a 4 GiB str header


def test_decode_rejects_trailing_bytes() -> None:
    error = decode_error(encode(Enqueued(1)) + b"\xc0\xc0")
    assert str(error) == "not a valid msgpack frame: 2 bytes after the value"


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x92\xa8enqueued"], ids=["empty", "reserved-byte", "short"])
def test_decode_rejects_input_that_is_not_msgpack(data: bytes) -> None:
    assert str(decode_error(data)).startswith("not a valid msgpack frame")


def test_decode_rejects_something_that_is_not_bytes() -> None:
    with pytest.raises(DecodeError, match="data must be bytes, got str"):
        decode("enqueued")  # type: ignore[call-overload]


def test_decode_accepts_bytearray_and_memoryview() -> None:
    data = encode(Enqueued(2))
    assert decode(bytearray(data)) == decode(memoryview(data)) == Enqueued(2)


@pytest.mark.parametrize(
    ("structure", "error"),
    [
        (3, "a frame must be a tagged array, got int"),
        ([], "a frame must be a tagged array, got an empty array"),
        ({"enqueued": 1}, "a frame must be a tagged array, got dict"),
        ([3, 1], "tag must be a str, got int"),
        ([b"enqueued", 1], "tag must be a str, got bytes"),
        (["nope", 1], "unknown tag 'nope'"),
        (["Enqueued", 1], "unknown tag 'Enqueued'"),
    ],
)
def test_decode_rejects_frames_without_a_known_tag(structure: object, error: str) -> None:
    assert str(decode_error(pack(structure))) == error


def test_decode_rejects_a_known_tag_where_the_schema_wants_another() -> None:
    error = decode_error(pack(["enqueue", ["batch", [], [0, 0, None], [0, 0, None]], False]))
    assert str(error) == "Enqueue.message: message must be a QueuedMessage, got tag 'batch' (MessageBatch)"


def test_decode_rejects_fewer_fields_than_the_first_version_has() -> None:
    error = decode_error(pack(["enqueue", wire(message())]))
    assert str(error) == "Enqueue: expected 2 fields after tag 'enqueue', got 1"


def test_decode_rejects_more_fields_than_it_knows() -> None:
    error = decode_error(pack(["enqueued", 1, "from the future"]))
    assert str(error) == "Enqueued: expected 1 fields after tag 'enqueued', got 2"


@pytest.mark.parametrize(
    ("structure", "error"),
    [
        (["enqueued", True], "Enqueued.count: count must be an int, got bool"),
        (["enqueued", 1.0], "Enqueued.count: count must be an int, got float"),
        (["enqueued", "1"], "Enqueued.count: count must be an int, got str"),
        (["enqueued", None], "Enqueued.count: count must be an int, got NoneType"),
        (["enqueued", -1], f"Enqueued.count: count must be in 0..{MAX_INT}, got -1"),
        (["enqueued", 2**63], f"Enqueued.count: count must be in 0..{MAX_INT}, got {2**63}"),
        (["cancelled", "chan", 1], "Cancelled.cancelled: cancelled must be a bool, got int"),
        (["clear", b"chan"], "Clear.channel_id: channel_id must be a str, got bytes"),
        (["clear", ""], "Clear.channel_id: channel_id must not be empty"),
        (["enqueue_many", {"a": 1}, False], "EnqueueMany.messages: messages must be an array, got dict"),
        (
            ["statistics", [["enqueued", 1]]],
            "Statistics.channels[0]: channel must be a ChannelStatistics, got tag 'enqueued' (Enqueued)",
        ),
        (
            ["batch_ready", "c", wire(item()), 1, "window", float("nan")],
            "BatchReady.lateness: lateness must be finite, got nan",
        ),
        (
            ["batch_ready", "c", wire(item()), 1, "window", True],
            "BatchReady.lateness: lateness must be an int or a float, got bool",
        ),
        (["settings", -1.0, 10, None, True], "BatchSettings: window must be >= 0 and finite, got -1.0"),
        (
            ["settings", 5.0, 0, None, True],
            f"BatchSettings.max_batch_size: max_batch_size must be in 1..{MAX_INT}, got 0",
        ),
        (["settings", 5.0, 10, None, 1], "BatchSettings.batching: batching must be a bool, got int"),
    ],
)
def test_decode_checks_every_field_type_strictly(structure: object, error: str) -> None:
    assert str(decode_error(pack(structure))).startswith(error)


def test_decode_reports_the_path_of_a_deep_error() -> None:
    structure = wire(BatchReady("chan", item(MessageBatch([message(), message()])), 1))
    structure[2][3][1][1][2] = "c" * 257
    error = decode_error(pack(structure))
    assert str(error) == (
        "BatchReady.item.payload.messages[1].channel_id: "
        "channel_id must be at most 256 bytes of UTF-8, got 257 bytes"
    )
    assert isinstance(error.__cause__, InvalidInput)


def test_decode_raises_from_the_settings_error() -> None:
    error = decode_error(pack(["settings", -1.0, 10, None, True]))
    assert isinstance(error.__cause__, InvalidSettings)


@pytest.mark.parametrize(
    ("stamp", "error"),
    [
        ([0, 0], "queued_at must be an array [seconds, microseconds, offset], got list"),
        ("2024-01-01", "queued_at must be an array [seconds, microseconds, offset], got str"),
        ([0.5, 0, None], "queued_at seconds must be an int, got float"),
        ([0, 1_000_000, None], "queued_at microseconds must be an int in 0..999999, got 1000000"),
        ([0, -1, None], "queued_at microseconds must be an int in 0..999999, got -1"),
        ([0, 0, 86_400_000_000], "queued_at offset must be nil or an int of microseconds within a day"),
        ([0, 0, True], "queued_at offset must be nil or an int of microseconds within a day"),
        ([2**62, 0, None], "queued_at is out of the range of datetime"),
        ([-62_135_596_801, 0, None], "queued_at is out of the range of datetime"),
        ([253_402_300_799, 0, 1_000_000], "queued_at is out of the range of datetime"),
    ],
)
def test_decode_rejects_malformed_datetimes(stamp: object, error: str) -> None:
    structure = wire(message())
    structure[6] = stamp
    assert str(decode_error(pack(structure))).startswith(f"QueuedMessage.queued_at: {error}")


def test_decode_rejects_a_duplicate_key_in_extra() -> None:
    prefix = pack(wire(message()))[:-1]
    error = decode_error(prefix + b"\x82\xa1a\x01\xa1a\x02")
    assert "duplicate key" in str(error)


def test_decode_rejects_bytes_keys_in_extra() -> None:
    structure = wire(message())
    structure[7] = {b"k": 1}
    assert "extra keys must be str, got bytes" in str(decode_error(pack(structure)))


def test_decode_rejects_invalid_utf8_strings() -> None:
    error = decode_error(b"\x92\xa8enqueued\xa1\xff")
    assert isinstance(error.__cause__, UnicodeDecodeError)


# -- limits: the same rule and message on encode (InvalidInput) and decode (DecodeError) -------------------


LIMIT_CASES: list[tuple[str, Callable[[], QueuedMessage], str]] = [
    (
        "channel-too-long",
        lambda: message(channel_id="c" * (MAX_CHANNEL_ID_BYTES + 1)),
        "QueuedMessage.channel_id: channel_id must be at most 256 bytes of UTF-8, got 257 bytes",
    ),
    (
        "channel-too-long-in-utf8",
        lambda: message(channel_id="🎉" * 64 + "x"),
        "QueuedMessage.channel_id: channel_id must be at most 256 bytes of UTF-8, got 257 bytes",
    ),
    (
        "channel-empty",
        lambda: message(channel_id=""),
        "QueuedMessage.channel_id: channel_id must not be empty",
    ),
    (
        "text-too-long",
        lambda: message(text="é" * (MAX_TEXT_BYTES // 2) + "x"),
        "QueuedMessage.text: text must be at most 65536 bytes of UTF-8, got 65537 bytes",
    ),
    (
        "user-name-too-long",
        lambda: message(user_name="n" * (MAX_NAME_BYTES + 1)),
        "QueuedMessage.user_name: user_name must be at most 256 bytes of UTF-8, got 257 bytes",
    ),
    (
        "extra-too-large",
        lambda: message(extra={"k": "x" * MAX_EXTRA_BYTES}),
        "QueuedMessage.extra: extra must be at most 16384 bytes once encoded, got 16390 bytes",
    ),
    (
        "extra-too-deep",
        lambda: message(extra={"a": {"b": {"c": {"d": {}}}}}),
        "QueuedMessage.extra: extra nesting depth must be at most 4, got 5 at extra['a']['b']['c']['d']",
    ),
]

LIMIT_IDS = [case[0] for case in LIMIT_CASES]


@pytest.mark.parametrize(("build", "error"), [case[1:] for case in LIMIT_CASES], ids=LIMIT_IDS)
def test_encode_rejects_a_message_over_a_limit(build: Callable[[], QueuedMessage], error: str) -> None:
    with pytest.raises(InvalidInput) as info:
        encode(build())
    assert str(info.value) == error


@pytest.mark.parametrize(("build", "error"), [case[1:] for case in LIMIT_CASES], ids=LIMIT_IDS)
def test_decode_rejects_a_message_over_a_limit(build: Callable[[], QueuedMessage], error: str) -> None:
    bad = build()
    structure = wire(message())
    for index, name in enumerate(("platform", "channel_id", "user_id", "user_name", "text"), start=1):
        structure[index] = getattr(bad, name)
    structure[7] = bad.extra
    expected = error
    if utf8_size(bad.text) > MAX_TEXT_BYTES:  # msgpack's string bound (the same limit) fires first
        expected = f"not a valid msgpack frame: {utf8_size(bad.text)} exceeds max_str_len({MAX_TEXT_BYTES})"
    assert str(decode_error(pack(structure))) == expected


def test_channel_ids_of_exactly_256_bytes_are_accepted() -> None:
    for channel in ("c" * 256, "🎉" * 64, "é" * 128):
        assert decode(encode(message(channel_id=channel)), QueuedMessage).channel_id == channel


def test_encode_rejects_lone_surrogates() -> None:
    with pytest.raises(InvalidInput, match="text must be valid UTF-8 text"):
        encode(message(text="bad \udc80"))
    with pytest.raises(InvalidInput, match="channel_id must be valid UTF-8 text"):
        encode(message(channel_id="\ud800"))


def test_encode_rejects_a_frame_over_the_frame_limit() -> None:
    big = message(text="t" * MAX_TEXT_BYTES)
    batch = MessageBatch([big] * (MAX_FRAME_BYTES // MAX_TEXT_BYTES + 1), big.queued_at, big.queued_at)
    with pytest.raises(InvalidInput, match=f"an encoded frame must be at most {MAX_FRAME_BYTES} bytes"):
        encode(batch)


def test_encode_rejects_more_items_than_a_sequence_may_hold() -> None:
    channels = (ChannelStatistics("c", 0, 0, False, 0, 0, 0, False),) * (MAX_SEQUENCE_ITEMS + 1)
    with pytest.raises(InvalidInput, match=f"channels must hold at most {MAX_SEQUENCE_ITEMS} items"):
        encode(Statistics(channels))


def test_decode_rejects_more_items_than_a_sequence_may_hold() -> None:
    statistics = ["chan_stats", "c", 0, 0, False, 0, 0, 0, False]
    decode_error(pack(["statistics", [statistics] * (MAX_SEQUENCE_ITEMS + 1)]))
    assert len(decode(pack(["statistics", [statistics] * MAX_SEQUENCE_ITEMS]), Statistics).channels) == (
        MAX_SEQUENCE_ITEMS
    )


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (Enqueued(True), "Enqueued.count: count must be an int, got bool"),
        (Enqueued(-1), f"Enqueued.count: count must be in 0..{MAX_INT}, got -1"),
        (Enqueued(2**64), f"Enqueued.count: count must be in 0..{MAX_INT}, got {2**64}"),
        (QueueItem("i", "c", message(), 0), f"QueueItem.attempt: attempt must be in 1..{MAX_INT}, got 0"),
        (QueueItem("", "c", message()), "QueueItem.item_id: item_id must not be empty"),
        (
            QueueItem("i", "c", "text"),  # type: ignore[arg-type]
            "QueueItem.payload: payload must be a QueuedMessage or MessageBatch, got str",
        ),
        (
            EnqueueMany([message()]),  # type: ignore[arg-type]
            "EnqueueMany.messages: messages must be a tuple, got list",
        ),
        (
            MessageBatch((message(),)),  # type: ignore[arg-type]
            "MessageBatch.messages: messages must be a list, got tuple",
        ),
        (
            Cancelled("c", 1),  # type: ignore[arg-type]
            "Cancelled.cancelled: cancelled must be a bool, got int",
        ),
        (
            BatchReady("c", item(), 1, lateness=float("inf")),
            "BatchReady.lateness: lateness must be finite, got inf",
        ),
        (message(queued_at="now"), "QueuedMessage.queued_at: queued_at must be a datetime, got str"),
        (message(extra=[]), "QueuedMessage.extra: extra must be a dict, got list"),
        (
            Statistics((ChannelStatistics("c", 0, 0, False, 0, 0, -1, False),)),
            f"Statistics.channels[0].failed: failed must be in 0..{MAX_INT}, got -1",
        ),
    ],
)
def test_encode_checks_every_field(value: object, error: str) -> None:
    with pytest.raises(InvalidInput) as info:
        encode(value)
    assert str(info.value) == error


@FAST
@given(
    msg=st.builds(
        QueuedMessage,
        platform=st.one_of(names, st.just("p" * (MAX_NAME_BYTES + 1))),
        channel_id=st.one_of(
            channel_ids, st.sampled_from(["", "c" * (MAX_CHANNEL_ID_BYTES + 1), "\ud800"])
        ),
        user_id=names,
        user_name=names,
        text=st.one_of(texts, st.just("t" * (MAX_TEXT_BYTES + 1))),
        queued_at=datetimes,
        extra=st.one_of(extras, st.just({"k": "x" * MAX_EXTRA_BYTES}), st.just({1: 2})),
    )
)
def test_validate_message_accepts_only_messages_that_encode(msg: QueuedMessage) -> None:
    """Validation is the codec's rules and more (aware times, finite floats in extra): whatever it accepts
    round-trips, and whatever the codec refuses it refuses too."""
    try:
        validate_message(msg)
    except InvalidInput:
        if msg.queued_at.utcoffset() is not None:  # a naive time encodes, but is refused as input
            with pytest.raises(InvalidInput):
                encode(msg)
    else:
        assert decode(encode(msg)) == msg


@pytest.mark.parametrize("value", [StartProcessing(), StartProcessing("chan"), Observe()], ids=repr)
def test_encode_refuses_messages_holding_an_actor_address_naming_the_type(value: object) -> None:
    name = type(value).__name__
    with pytest.raises(TypeError, match=f"cannot encode {name}: it holds a Thespian ActorAddress"):
        encode(value)


@pytest.mark.parametrize(
    "value", [None, 1, "enqueued", {"tag": "enqueued"}, FlushReason.FULL, datetime(2024, 1, 1, tzinfo=UTC)]
)
def test_encode_raises_type_error_for_types_without_a_tag(value: object) -> None:
    with pytest.raises(TypeError, match=f"cannot encode {type(value).__name__}: it is not a protocol type"):
        encode(value)


# -- check_extra ------------------------------------------------------------------------------------------


def test_check_extra_accepts_depth_four() -> None:
    check_extra({"a": {"b": {"c": {"d": 1}}}})
    check_extra({"a": [[[1, 2, None]]]})
    check_extra({"a": [{}, []], "b": {"c": [{"d": b"x"}]}})


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"a": {"b": {"c": {"d": {}}}}}, "extra['a']['b']['c']['d']"),
        ({"a": [[[[]]]]}, "extra['a'][0][0][0]"),
        ({"ok": 1, "a": [{"b": [{"c": 1}]}]}, "extra['a'][0]['b'][0]"),
    ],
)
def test_check_extra_rejects_depth_five(extra: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidInput) as info:
        check_extra(extra)
    assert str(info.value) == f"extra nesting depth must be at most 4, got 5 at {where}"


def test_check_extra_rejects_a_cycle_by_depth() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(InvalidInput, match="extra nesting depth must be at most 4"):
        check_extra({"loop": cycle})


def test_check_extra_accepts_exactly_16_kib_encoded() -> None:
    # fixmap header (1) + fixstr "k" (2) + str16 header (3) + the string = 16384 bytes.
    fits = {"k": "x" * (MAX_EXTRA_BYTES - 6)}
    assert len(pack(fits)) == MAX_EXTRA_BYTES
    check_extra(fits)
    with pytest.raises(InvalidInput) as info:
        check_extra({"k": "x" * (MAX_EXTRA_BYTES - 5)})
    assert str(info.value) == "extra must be at most 16384 bytes once encoded, got 16385 bytes"


@pytest.mark.parametrize(
    "extra",
    [{1: "a"}, {b"k": 1}, {None: 1}, {("a",): 1}, {"a": {2: "b"}}, {"a": [{"b": {3.5: 1}}]}],
    ids=["int", "bytes", "none", "tuple", "nested-int", "nested-float"],
)
def test_check_extra_rejects_keys_that_are_not_str(extra: dict[Any, Any]) -> None:
    with pytest.raises(InvalidInput, match="extra keys must be str, got"):
        check_extra(extra)


@pytest.mark.parametrize(
    "value",
    [
        {1, 2},
        frozenset(),
        datetime(2024, 1, 1),
        object(),
        FlushReason.FULL,
        bytearray(b"x"),
        msgpack.ExtType(1, b""),
        1j,
    ],
    ids=["set", "frozenset", "datetime", "object", "str-enum", "bytearray", "ext", "complex"],
)
def test_check_extra_rejects_values_that_are_not_plain(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        check_extra({"a": [value]})
    assert str(info.value) == (
        "extra values must be None, bool, int, float, str, bytes, list, tuple or dict, "
        f"got {type(value).__name__} at extra['a'][0]"
    )


@pytest.mark.parametrize("extra", [None, [], "x", (("a", 1),)], ids=["none", "list", "str", "pairs"])
def test_check_extra_rejects_anything_but_a_dict(extra: object) -> None:
    with pytest.raises(InvalidInput, match=f"extra must be a dict, got {type(extra).__name__}"):
        check_extra(extra)


def test_check_extra_accepts_64_bit_ints_only() -> None:
    check_extra({"min": -(2**63), "max": 2**64 - 1})
    for value in (-(2**63) - 1, 2**64):
        with pytest.raises(InvalidInput) as info:
            check_extra({"n": value})
        assert str(info.value) == f"extra ints must fit in 64 bits, got {value} at extra['n']"


def test_check_extra_rejects_lone_surrogates() -> None:
    with pytest.raises(InvalidInput, match="extra strings must be valid UTF-8 text"):
        check_extra({"a": "\udc80"})
    with pytest.raises(InvalidInput, match="extra strings must be valid UTF-8 text"):
        check_extra({"\udc80": 1})


def test_validate_message_applies_check_extra() -> None:
    with pytest.raises(InvalidInput, match="extra keys must be str"):
        validate_message(message(extra={1: 1}))


@FAST
@given(extra=extras)
def test_check_extra_accepts_what_the_strategy_builds(extra: dict[str, Any]) -> None:
    check_extra(extra)


# -- the fast paths for plain messages, batches and items ---------------------------------------------------

plain_chars = st.characters(min_codepoint=0, max_codepoint=127)
plain_names = st.text(plain_chars, max_size=40)
plain_messages = st.builds(
    QueuedMessage,
    platform=plain_names,
    channel_id=st.text(plain_chars, min_size=1, max_size=40),
    user_id=plain_names,
    user_name=plain_names,
    text=st.text(plain_chars, max_size=200),
    queued_at=datetimes,
    extra=st.one_of(st.just({}), extras),
)
plain_batches = st.builds(
    MessageBatch, messages=st.lists(plain_messages, max_size=5), first_at=datetimes, last_at=datetimes
)
plain_items = st.builds(
    QueueItem,
    item_id=st.text(plain_chars, min_size=1, max_size=40),
    channel_id=st.text(plain_chars, min_size=1, max_size=40),
    payload=st.one_of(plain_messages, plain_batches),
    attempt=st.integers(1, MAX_INT),
)


@contextlib.contextmanager
def generic_codec() -> Iterator[None]:
    """The codec with its fast paths switched off."""
    import protocol.codec as codec_module

    saved = codec_module._FAST_ENCODERS, codec_module._FAST_DECODERS
    codec_module._FAST_ENCODERS, codec_module._FAST_DECODERS = {}, {}
    try:
        yield
    finally:
        codec_module._FAST_ENCODERS, codec_module._FAST_DECODERS = saved


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        plain_items,
        plain_batches,
        plain_messages,
        items,
        st.builds(OpenEntry, message=plain_messages, arrived_at=finite),
        st.builds(OpenEntry, message=messages, arrived_at=finite),
    )
)
def test_the_fast_paths_encode_and_decode_exactly_as_the_generic_path(value: Any) -> None:
    fast = encode(value)
    with generic_codec():
        generic = encode(value)
    assert fast == generic
    decoded = decode(fast, type(value))
    with generic_codec():
        expected = decode(generic, type(value))
    assert decoded == expected
    assert repr(decoded) == repr(expected)  # the same tzinfo on every datetime, the same field types


def test_values_the_fast_paths_leave_alone_still_get_the_generic_checks() -> None:
    too_long = message(text="x" * (MAX_TEXT_BYTES + 1))
    with pytest.raises(InvalidInput) as fast:
        encode(QueueItem("i", too_long.channel_id, MessageBatch([message(), too_long])))
    with generic_codec(), pytest.raises(InvalidInput) as generic:
        encode(QueueItem("i", too_long.channel_id, MessageBatch([message(), too_long])))
    assert str(fast.value) == str(generic.value)
    assert "payload.messages[1].text" in str(fast.value)
    # a plain message whose time is broken on the wire: the generic path names the field
    frame = wire(QueueItem("i", "chan", message()))
    frame[3][6] = [0, 1_000_000, None]
    with pytest.raises(DecodeError) as broken:
        decode(pack(frame), QueueItem)
    with generic_codec(), pytest.raises(DecodeError) as generic_broken:
        decode(pack(frame), QueueItem)
    assert str(broken.value) == str(generic_broken.value)
    assert "queued_at" in str(broken.value)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    item=st.builds(
        QueueItem,
        item_id=st.one_of(st.text(plain_chars, min_size=1, max_size=40), item_ids),
        channel_id=st.one_of(st.text(plain_chars, min_size=1, max_size=40), channel_ids),
        payload=st.one_of(plain_batches, batches),
        attempt=st.integers(1, MAX_INT),
    ),
    arrived_at=st.floats(0, 2e9),
)
def test_frames_joined_from_message_frames_are_the_frames_encode_writes(item: QueueItem, arrived_at: float) -> None:
    assert isinstance(item.payload, MessageBatch)
    frames = []
    for message_ in item.payload.messages:
        entry = OpenEntry(message_, arrived_at)
        frame, message_frame = codec.encode_open_entry(entry)
        assert frame == encode(entry)
        if message_frame is not None:
            assert message_frame == encode(message_)
        frames.append(message_frame)
    joined = codec.encode_item_of_frames(item, [f for f in frames if f is not None])
    if None in frames:  # fewer frames than messages: the caller must encode the item itself
        assert joined is None
    elif joined is not None:
        assert joined == encode(item)
    else:  # only an item whose own fields take the generic path is refused
        assert not (item.item_id.isascii() and item.channel_id.isascii())


def test_a_joined_frame_is_refused_for_frames_of_the_wrong_count_or_a_payload_that_is_no_batch() -> None:
    batch = MessageBatch([message(text="a"), message(text="b")])
    frames = [encode(m) for m in batch.messages]
    item_ = QueueItem("i", batch.channel_id, batch)
    assert codec.encode_item_of_frames(item_, frames) == encode(item_)
    assert codec.encode_item_of_frames(item_, frames[:1]) is None
    assert codec.encode_item_of_frames(QueueItem("i", batch.channel_id, batch.messages[0]), frames[:1]) is None
