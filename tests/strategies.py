"""Hypothesis strategies shared by the tests.

Well-formed values: every field of every protocol value within its limits, with hostile characters (the
separators of Redis keys, NUL, line breaks, bidi and byte-order marks) and sizes right at the limits.
Arbitrary values: what a careless or hostile caller might pass instead (wrong types, naive or broken datetimes,
strings with surrogates or NUL, oversized strings, NaN, deep or cyclic dicts, custom objects).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

from hypothesis import strategies as st

from protocol.limits import MAX_BATCH_SIZE, MAX_CHANNEL_ID_BYTES, MAX_EXTRA_DEPTH, MAX_TEXT_BYTES
from protocol.values import BatchSettings, ChannelStatistics, FlushReason, MessageBatch, QueuedMessage, QueueItem

MAX_INT = 2**63 - 1
UTC = timezone.utc

# -- well-formed values -------------------------------------------------------------------------------------

HOSTILE = ["*", ":", "{", "}", "[", "]", "?", "%", "\n", "\r", "\x00", "\\", " ", "🎉", "é", "\u202e", "\ufeff"]
any_char = st.one_of(st.sampled_from(HOSTILE), st.characters(codec="utf-8"))


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8"))


channel_ids = st.one_of(
    st.text(any_char, min_size=1, max_size=64),  # at most 4 bytes a character: always within 256 bytes
    st.integers(1, MAX_CHANNEL_ID_BYTES).map(lambda n: "c" * n),
    st.integers(1, MAX_CHANNEL_ID_BYTES // 4).map(lambda n: "🎉" * n),
    st.sampled_from(["*", "a:b", "{x}", "line\nbreak", "nul\x00", "message_queue:redis:{x}"]),
)
names = st.text(any_char, max_size=64)
item_ids = st.text(any_char, min_size=1, max_size=64)
texts = st.one_of(
    st.text(any_char, max_size=300), st.just("t" * MAX_TEXT_BYTES), st.just("é" * (MAX_TEXT_BYTES // 2))
)
counts = st.integers(0, MAX_INT)

offsets = st.timedeltas(
    min_value=timedelta(hours=-24) + timedelta(microseconds=1),
    max_value=timedelta(hours=24) - timedelta(microseconds=1),
)
fixed_zones = st.one_of(st.just(UTC), offsets.map(timezone))
aware_datetimes = st.datetimes(timezones=fixed_zones)
naive_datetimes = st.datetimes()
datetimes = st.one_of(aware_datetimes, naive_datetimes)

extra_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(any_char, max_size=20),
    st.binary(max_size=20),
)
extra_keys = st.text(any_char, max_size=10)


def extra_values(depth: int) -> st.SearchStrategy[Any]:
    """A plain value whose containers, if any, sit at nesting ``depth`` (the extra dict itself is depth 1)."""
    if depth > MAX_EXTRA_DEPTH:
        return extra_scalars
    inner = st.deferred(lambda: extra_values(depth + 1))
    return st.one_of(
        extra_scalars,
        st.lists(inner, max_size=3),
        st.dictionaries(extra_keys, inner, max_size=3),
    )


extras = st.dictionaries(extra_keys, extra_values(2), max_size=4)

messages = st.builds(
    QueuedMessage,
    platform=names,
    channel_id=channel_ids,
    user_id=names,
    user_name=names,
    text=texts,
    queued_at=datetimes,
    extra=extras,
    raw=st.one_of(st.none(), st.just(object())),
    message_id=names,
)
batches = st.builds(
    MessageBatch, messages=st.lists(messages, max_size=4), first_at=datetimes, last_at=datetimes
)
payloads = st.one_of(messages, batches)
items = st.builds(
    QueueItem, item_id=item_ids, channel_id=channel_ids, payload=payloads, attempt=st.integers(1, MAX_INT),
    interrupted=st.booleans(),
)
seconds = st.one_of(st.floats(0, 1e9), st.integers(0, 10**9))
batch_settings = st.builds(
    BatchSettings,
    window=seconds,
    max_batch_size=st.integers(1, MAX_BATCH_SIZE),
    max_wait=st.one_of(st.none(), st.floats(0, 1e9, exclude_min=True), st.integers(1, 10**9)),
    batching=st.booleans(),
    busy_policy=st.sampled_from(["queue", "collect", "interrupt", "reject"]),
    split_on_author=st.booleans(),
    dedupe_ttl=seconds,
)
channel_statistics = st.builds(
    ChannelStatistics,
    channel_id=channel_ids,
    queued=counts,
    open_batch_size=counts,
    in_flight=st.booleans(),
    processed=counts,
    cancelled=counts,
    failed=counts,
    has_processor=st.booleans(),
    duplicates=counts,
    edits=counts,
    retractions=counts,
    interruptions=counts,
    rejections=counts,
)
free_text = st.one_of(st.text(any_char, max_size=200), st.just("r" * MAX_TEXT_BYTES))
reasons = st.one_of(
    st.sampled_from(list(FlushReason)), st.sampled_from([r.value for r in FlushReason]), names
)
finite = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**63), MAX_INT))


# -- arbitrary values ---------------------------------------------------------------------------------------


class Opaque:
    """A custom object: no field accepts it."""

    def __repr__(self) -> str:
        return "Opaque()"


class FailingZone(tzinfo):
    """A tzinfo whose every answer raises: a datetime carrying it is unusable."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        raise RuntimeError("no offset today")

    def dst(self, dt: datetime | None) -> timedelta:
        raise RuntimeError("no dst today")

    def tzname(self, dt: datetime | None) -> str:
        raise RuntimeError("no name today")


def cyclic() -> dict[str, Any]:
    loop: dict[str, Any] = {"k": 1}
    loop["self"] = loop
    return loop


wrong_types = st.one_of(
    st.none(),
    st.integers(),
    st.floats(),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.sets(st.integers(), max_size=2),
    st.builds(Opaque),
)
any_text = st.text(st.characters(blacklist_categories=()), max_size=12)  # surrogates and NUL included
arbitrary_strings = st.one_of(
    st.from_type(str),
    any_text,
    st.sampled_from(["", "\x00", "\ud800", "a\x00b", "x" * 300, "t" * (MAX_TEXT_BYTES + 1)]),
)
arbitrary_datetimes = st.one_of(
    st.from_type(datetime),  # naive
    st.datetimes(timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=-5, minutes=-30))])),
    st.builds(lambda: datetime(2024, 5, 1, tzinfo=FailingZone())),
    st.sampled_from(["yesterday", 1_714_557_600.0, None]),
    wrong_types,
)
arbitrary_extra_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and infinities included
    any_text,
    st.binary(max_size=8),
    st.sets(st.integers(), max_size=2),
    st.builds(Opaque),
    st.from_type(datetime),
)
arbitrary_extra_values = st.recursive(
    arbitrary_extra_leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=10,
)
arbitrary_extras = st.one_of(
    st.dictionaries(any_text, arbitrary_extra_values, max_size=4),
    st.dictionaries(st.one_of(st.integers(), st.binary(max_size=4)), arbitrary_extra_values, min_size=1, max_size=2),
    st.builds(cyclic),
    st.builds(lambda: {"big": "x" * (17 * 1024)}),
    st.builds(lambda: {"d": {"d": {"d": {"d": {"d": 1}}}}}),
    wrong_types,
)
