"""Keys of distributed mode (one Redis Cluster hash slot per channel, injective) and the stream entry format
(``protocol.stream``): property tests with hostile channel ids, and the decoder's rules."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import codec, keys
from protocol.errors import DecodeError, InvalidInput
from protocol.stream import FIELDS, decode_entry
from protocol.values import MessageBatch, QueuedMessage

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HOSTILE = ["{", "}", "{}", "}{", "a}b{c", "x:state", "x}:msgs", ":", "*", "\n", "\x00", "é", "🙂", "{x}:msgs",
           "message_queue:dist:{YQ}:msgs", "a" * 256, "é" * 128]

channel_ids = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(alphabet=st.sampled_from("{}:*?[]\\ \n\x00ab=é🙂-_"), min_size=1, max_size=40),
    st.text(min_size=1, max_size=60).filter(lambda s: 0 < len(s.encode("utf-8", "surrogatepass")) <= 256
                                            and not any(0xD800 <= ord(c) <= 0xDFFF for c in s)),
)


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes: the part between the first ``{`` and the next ``}``, if non-empty."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


@FAST
@given(channel=channel_ids)
def test_every_key_of_a_channel_hashes_to_its_tag(channel: str) -> None:
    tag = keys.channel_tag(channel)
    assert keys.channel_of_tag(tag) == channel
    for role in keys.DIST_ROLES:
        key = keys.dist_key(role, channel)
        assert hash_tag(key) == tag
        assert key == keys.dist_key_of_tag(role, tag)
        before, after = keys.dist_key_affixes(role)  # how the statistics script names keys from the index
        assert before + tag + after == key


@FAST
@given(a=channel_ids, b=channel_ids, role_a=st.sampled_from(keys.DIST_ROLES), role_b=st.sampled_from(keys.DIST_ROLES))
def test_distinct_channels_or_roles_never_share_a_key(a: str, b: str, role_a: str, role_b: str) -> None:
    same = keys.dist_key(role_a, a) == keys.dist_key(role_b, b)
    assert same == (a == b and role_a == role_b)


@FAST
@given(channel=channel_ids, role=st.sampled_from(keys.DIST_ROLES), other=st.sampled_from(keys.ROLES))
def test_distributed_keys_never_meet_the_shared_keys_or_the_persistence_keys(channel: str, role: str,
                                                                             other: str) -> None:
    key = keys.dist_key(role, channel)
    shared = {keys.DIST_DEADLINES, keys.DIST_OUTBOX, keys.DIST_RELAY_LEASE, keys.DIST_DEAD, keys.INBOUND_STREAM,
              keys.DIST_SEQ_FLOOR, keys.DIST_PAUSED, keys.CHANNEL_INDEX, keys.EPOCH, keys.dist_node_key("node-1")}
    assert key not in shared
    assert key != keys.channel_key(other, channel)
    assert keys.channel_key(other, channel) not in shared | {keys.DIST_DEADLINES}


def test_tags_are_checked() -> None:
    for bad in ("", "a=", "a{", "YQ}", "a b", "A"):  # "A" is one base64 digit: no whole byte
        with pytest.raises(ValueError):
            keys.channel_of_tag(bad)
    with pytest.raises(ValueError, match="not a channel tag"):
        keys.dist_key_of_tag(keys.DIST_STATE, "x}y")
    with pytest.raises(ValueError, match="role must be one of msgs, state"):
        keys.dist_key("open", "c")
    with pytest.raises(ValueError, match="role must be one of msgs, state"):
        keys.dist_key_affixes("open")
    with pytest.raises(InvalidInput, match="channel_id must be at most 256 bytes"):
        keys.dist_key(keys.DIST_STATE, "a" * 257)
    with pytest.raises(InvalidInput, match="channel_id must not be empty"):
        keys.channel_tag("")


def test_node_ids_are_checked() -> None:
    assert keys.dist_node_key("host-1.a_b") == "message_queue:dist:node:host-1.a_b"
    for bad in ("", "a:b", "a{b}", "x" * 65, "é"):
        with pytest.raises(ValueError, match="node id must be 1-64 characters"):
            keys.dist_node_key(bad)


# -- stream entries -------------------------------------------------------------------------------------------


def message(channel: str, text: str) -> QueuedMessage:
    return QueuedMessage("test", channel, "u1", "U1", text, queued_at=datetime(2024, 5, 1, tzinfo=timezone.utc))


def entry(channel_id: str = "room", texts: tuple[str, ...] = ("a", "b"), **changes: Any) -> dict[bytes, Any]:
    channel = channel_id
    batch = MessageBatch([message(channel, t) for t in texts], datetime(2024, 5, 1, tzinfo=timezone.utc),
                         datetime(2024, 5, 1, 0, 0, 1, tzinfo=timezone.utc))
    fields: dict[str, Any] = {
        "id": f"{keys.channel_tag(channel)}:3",
        "channel": channel,
        "seq": "3",
        "reason": "window",
        "count": str(len(texts)),
        "deadline": "1700000000500",
        "published": "1700000000502",
        "by": "node-1/timer",
        "batch": codec.encode(batch),
    }
    fields.update(changes)
    return {name.encode(): value.encode() if isinstance(value, str) else value
            for name, value in fields.items() if value is not None}


def test_a_well_formed_entry_decodes() -> None:
    inbound = decode_entry(entry("a}b{c"), b"1700000000502-0")
    assert inbound.batch_id == f"{keys.channel_tag('a}b{c')}:3"
    assert inbound.channel_id == "a}b{c"
    assert (inbound.seq, inbound.reason, inbound.by, inbound.entry_id) == (3, "window", "node-1/timer",
                                                                          "1700000000502-0")
    assert [m.text for m in inbound.batch.messages] == ["a", "b"]
    assert inbound.lateness_ms == 2
    assert decode_entry(entry(deadline="0", reason="full")).lateness_ms is None


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"by": None}, "lacks field\\(s\\) by"),
        ({"extra": "x"}, "unknown field\\(s\\) extra"),
        ({"id": "abc:3"}, "is not <channel tag>:<seq>"),
        ({"seq": "0"}, "field 'seq' must be >= 1"),
        ({"seq": "-1"}, "field 'seq' must be a decimal integer"),
        ({"count": "3"}, "count is 3 but its batch holds 2 messages"),
        ({"reason": "because"}, "reason must be one of"),
        ({"channel": "other"}, "is not <channel tag>:<seq>"),
        ({"batch": b"\x93\x01"}, "not a valid msgpack frame"),
        ({"batch": codec.encode(message("room", "x"))}, "expected MessageBatch, got QueuedMessage"),
        ({"channel": b"\xff"}, "must be UTF-8 text"),
        ({"by": b"x" * 2000}, "field 'by' must be at most 1024 bytes"),
    ],
)
def test_a_malformed_entry_is_a_decode_error_naming_the_rule(changes: dict[str, Any], error: str) -> None:
    with pytest.raises(DecodeError, match=error):
        decode_entry(entry(**changes))


def test_an_entry_whose_messages_belong_elsewhere_is_rejected() -> None:
    fields = entry("room")
    other = MessageBatch([message("room", "a"), message("elsewhere", "b")])
    fields[b"batch"] = codec.encode(other)
    with pytest.raises(DecodeError, match="message 1 belongs to channel 'elsewhere', not 'room'"):
        decode_entry(fields)


def test_text_fields_must_be_bytes() -> None:
    fields: dict[Any, Any] = {name: "x" for name in FIELDS}
    with pytest.raises(DecodeError, match="read with decode_responses=False"):
        decode_entry(fields)
