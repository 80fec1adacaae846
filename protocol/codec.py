"""The one msgpack codec of the project: every stored or external protocol value goes through :func:`encode`
and :func:`decode`.

Wire format:
    A value is a msgpack array ``[tag, field1, field2, ...]``: a short stable string tag from :data:`TAGS`,
    then the fields in dataclass order, by position. A field holding another protocol value holds it as a
    nested tagged array, so a union (a queue payload is a message or a batch) is decoded by its tag. Lists
    and tuples of values are arrays of tagged arrays. A datetime is ``[seconds, microseconds, offset]``:
    for an aware datetime, Unix seconds and microseconds of its instant and its UTC offset in microseconds;
    for a naive one, seconds and microseconds of its wall-clock time since 1970-01-01T00:00 and ``nil``.
    ``extra`` is a msgpack map. ``QueuedMessage.raw`` is never encoded: decoded messages have ``raw=None``.
    ``FlushReason`` travels as its string value (``BatchReady.reason`` is a str). ``StartProcessing`` and
    ``Observe`` hold a Thespian ``ActorAddress`` and have no tag: :func:`encode` raises ``TypeError``.

Schema-evolution rules (for anything stored or sent, msgspec style):
    1. New fields go only at the end of a type, and only with a plain default. A decoder fills in the
       default when an older writer left the field out; every field of the first version is required.
    2. A decoder rejects arrays with more fields than it knows (``DecodeError``) instead of dropping them:
       deploy new readers before new writers.
    3. Tags are never renamed, removed or reused; renaming a class does not change its tag.
    4. A change of a field's meaning, type or unit is a new field or a new tag, never an edit in place.
    5. Decoders ignore nothing silently: an unknown tag, a wrong tag for a field, a wrong arity, a field of
       the wrong type (a bool where an int belongs, an int where a str belongs), a duplicate map key, an ext
       type, trailing bytes or a broken limit is a ``DecodeError``.

Limits (checked by both :func:`encode`, as ``InvalidInput``, and :func:`decode`, as ``DecodeError``, so
that anything encodable is decodable):
    * a frame: at most :data:`MAX_FRAME_BYTES` (16 MiB) of msgpack: a full batch (100 messages of maximal
      text and ``extra``) fits;
    * a channel id: 1..256 bytes of UTF-8 (empty only where a field means "every channel", and in
      ``Rejected``, which echoes the offending id as free text);
    * message text, ``Rejected.reason``, ``ProcessingFailed.error``: at most 64 KiB of UTF-8;
    * platform, user id, user name, item id, command and error names, flush reason: at most 256 bytes;
    * ``extra``: see :func:`check_extra` (16 KiB encoded, depth 4, str keys, plain values);
    * a list of values (batch messages, ``EnqueueMany``, ``Statistics``): at most
      :data:`MAX_SEQUENCE_ITEMS` items;
    * counts and ids: ints in 0..2**63-1 (``attempt`` from 1); floats finite;
    * nesting: the schema has no recursive type, so decoding descends at most nine arrays/maps (the deepest
      path is ``BatchReady.item.payload.messages[i].extra`` with ``extra`` four levels deep); anything deeper
      is rejected where the schema expects something else, and ``extra`` is walked iteratively with its own
      depth cap. msgpack's own stack (1,024 levels) rejects deeper frames before that.
    * msgpack's allocation bounds are set so a hostile header cannot make the unpacker preallocate more than
      the limits above allow (``max_str_len``, ``max_bin_len``, ``max_array_len``, ``max_map_len``,
      ``max_ext_len=0``).

Datetimes round-trip exactly: equal wall-clock time and UTC offset (the tzinfo comes back as a fixed-offset
``datetime.timezone``, ``timezone.utc`` for offset 0), naive stays naive. A ``zoneinfo`` datetime inside a
DST fold or gap keeps its instant and offset, but Python compares it unequal to any other zone (PEP 495).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any, Callable, Final, Mapping, Sequence, TypeVar, overload

import msgpack  # msgpack ships no type information (setup.cfg ignores its imports)

from protocol.errors import DecodeError, InvalidInput
from protocol.keys import QUEUE
from protocol.limits import (
    MAX_CHANNEL_ID_BYTES,
    MAX_EXTRA_BYTES,
    MAX_NAME_BYTES,
    MAX_TEXT_BYTES,
    check_extra,
    validate_channel_id,
)
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
    Statistics,
    StopChannel,
    Taken,
    TakeWaiting,
)
from protocol.values import (
    BatchSettings,
    ChannelStatistics,
    DeadLetter,
    MessageBatch,
    OpenEntry,
    QueuedMessage,
    QueueItem,
    SeenId,
)

__all__ = [
    "MAX_FRAME_BYTES",
    "MAX_SEQUENCE_ITEMS",
    "TAGS",
    "Encodable",
    "check_extra",
    "decode",
    "decode_dead_letter",
    "encode",
    "encode_item_of_frames",
    "encode_open_entry",
]

MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
"""Largest encoded frame, in bytes: room for about a hundred messages of maximal text and extra."""

MAX_SEQUENCE_ITEMS: Final = 65_536
"""Most values in one list field (messages of a batch or of ``EnqueueMany``, channels of ``Statistics``)."""

_MAX_INT: Final = 2**63 - 1
_DAY_US: Final = 86_400 * 1_000_000
_EPOCH: Final = datetime(1970, 1, 1)
_EPOCH_UTC: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US: Final = timedelta(microseconds=1)

Encodable = (
    QueuedMessage |
    MessageBatch |
    QueueItem |
    BatchSettings |
    ChannelStatistics |
    OpenEntry |
    DeadLetter |
    Enqueue |
    EnqueueMany |
    EnqueueFront |
    StopChannel |
    CancelCurrent |
    Clear |
    HoldBatch |
    ConfigureChannel |
    GetStatistics |
    Enqueued |
    Rejected |
    ProcessingStarted |
    ChannelStopped |
    Cancelled |
    Cleared |
    BatchHeld |
    ChannelConfigured |
    FlushBatch |
    BatchFlushed |
    ChannelPassivated |
    ChannelSettingsApplied |
    Statistics |
    Observing |
    BatchReady |
    CancelProcessing |
    ProcessingDone |
    ProcessingFailed |
    QueueChanged |
    PauseChannel |
    ResumeChannel |
    ChannelPaused |
    Edit |
    Edited |
    Retract |
    Retracted |
    TakeWaiting |
    Taken |
    SeenId
)
"""Every type :func:`encode` accepts and :func:`decode` returns."""

_T = TypeVar("_T")


class _Bad(Exception):
    """A broken rule, located while the error unwinds: ``path`` collects field names innermost first."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str] = []
        self.root: str | None = None

    def describe(self) -> str:
        where = self.root or ""
        for segment in reversed(self.path):
            where += segment if segment.startswith("[") or not where else "." + segment
        return f"{where}: {self.message}" if where else self.message


def _kind(value: object) -> str:
    return type(value).__name__


# -- fields: one encoder and one decoder per field, each returning the converted value or raising _Bad ----


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    encode: Callable[[Any], object]
    decode: Callable[[Any], object]


def _utf8_size(name: str, value: object) -> int:
    if not isinstance(value, str):
        raise _Bad(f"{name} must be a str, got {_kind(value)}")
    if value.isascii():  # one byte a character, no surrogates: no need to encode
        return len(value)
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise _Bad(f"{name} must be valid UTF-8 text, got {value[:40]!r}") from exc


def _text(name: str, limit: int, *, allow_empty: bool = True) -> _Field:
    """A str of at most ``limit`` UTF-8 bytes."""

    def check(value: Any) -> str:
        size = _utf8_size(name, value)
        if size > limit:
            raise _Bad(f"{name} must be at most {limit} bytes of UTF-8, got {size} bytes")
        if size == 0 and not allow_empty:
            raise _Bad(f"{name} must not be empty")
        # A str subclass (a str enum such as FlushReason) travels as its plain string value.
        return value if type(value) is str else str.__str__(value)

    return _Field(name, check, check)


def _channel(*, allow_empty: bool = False) -> _Field:
    """A channel id under the rules of :func:`protocol.limits.validate_channel_id`."""

    def check(value: Any) -> str:
        if allow_empty and isinstance(value, str) and value == "":
            return ""
        try:
            validate_channel_id(value)
        except InvalidInput as exc:
            raise _Bad(str(exc)) from exc
        return value if type(value) is str else str.__str__(value)

    return _Field("channel_id", check, check)


def _int(name: str, minimum: int = 0) -> _Field:
    """An int (never a bool) in ``minimum..2**63-1``."""

    def check(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Bad(f"{name} must be an int, got {_kind(value)}")
        if not minimum <= value <= _MAX_INT:
            raise _Bad(f"{name} must be in {minimum}..{_MAX_INT}, got {value}")
        return int(value)

    return _Field(name, check, check)


def _bytes(name: str, limit: int) -> _Field:
    """Bytes of at most ``limit`` length."""

    def check(value: Any) -> bytes:
        if not isinstance(value, bytes):
            raise _Bad(f"{name} must be bytes, got {_kind(value)}")
        if len(value) > limit:
            raise _Bad(f"{name} must be at most {limit} bytes, got {len(value)} bytes")
        return bytes(value)

    return _Field(name, check, check)


def _bool(name: str) -> _Field:
    def check(value: Any) -> bool:
        if type(value) is not bool:
            raise _Bad(f"{name} must be a bool, got {_kind(value)}")
        return value

    return _Field(name, check, check)


def _check_number(name: str, value: object) -> float:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Bad(f"{name} must be finite, got {value!r}")
        return value if type(value) is float else float(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if not -_MAX_INT - 1 <= value <= _MAX_INT:
            raise _Bad(f"{name} must fit in 64 bits, got {value}")
        return value if type(value) is int else int(value)
    raise _Bad(f"{name} must be an int or a float, got {_kind(value)}")


def _number(name: str) -> _Field:
    """A finite int or float; the type is kept, so ``5`` stays an int and ``5.0`` a float."""

    def check(value: Any) -> float:
        return _check_number(name, value)

    return _Field(name, check, check)


def _optional_number(name: str) -> _Field:
    def check(value: Any) -> float | None:
        return None if value is None else _check_number(name, value)

    return _Field(name, check, check)


@functools.lru_cache(maxsize=64)
def _epoch_at(offset_us: int) -> datetime:
    """1970-01-01T00:00 wall-clock time at a fixed UTC offset: adding a timedelta to it is wall arithmetic."""
    return datetime(1970, 1, 1, tzinfo=timezone(timedelta(microseconds=offset_us)))


def _datetime(name: str) -> _Field:
    """A datetime as ``[seconds, microseconds, utc offset in microseconds or nil]``."""

    def encode(value: Any) -> list[int | None]:
        if not isinstance(value, datetime):
            raise _Bad(f"{name} must be a datetime, got {_kind(value)}")
        offset = value.utcoffset()
        if offset is None:
            delta = value - _EPOCH
            return [delta.days * 86_400 + delta.seconds, delta.microseconds, None]
        delta = value - _EPOCH_UTC
        return [delta.days * 86_400 + delta.seconds, delta.microseconds, offset // _ONE_US]

    def decode(value: Any) -> datetime:
        if type(value) is not list or len(value) != 3:
            raise _Bad(f"{name} must be an array [seconds, microseconds, offset], got {_kind(value)}")
        seconds, micros, offset = value
        if type(seconds) is not int:
            raise _Bad(f"{name} seconds must be an int, got {_kind(seconds)}")
        if type(micros) is not int or not 0 <= micros < 1_000_000:
            raise _Bad(f"{name} microseconds must be an int in 0..999999, got {micros!r}")
        if offset is not None and (type(offset) is not int or not -_DAY_US < offset < _DAY_US):
            raise _Bad(f"{name} offset must be nil or an int of microseconds within a day, got {offset!r}")
        try:
            # timedelta(days, seconds, microseconds): positional, about twice as fast as by keyword
            if offset is None:
                return _EPOCH + timedelta(0, seconds, micros)
            if offset == 0:  # UTC, the common case (timezone(timedelta(0)) is timezone.utc)
                return _EPOCH_UTC + timedelta(0, seconds, micros)
            return _epoch_at(offset) + timedelta(0, seconds, micros + offset)
        except OverflowError as exc:
            raise _Bad(f"{name} is out of the range of datetime: {value!r}") from exc

    return _Field(name, encode, decode)


def _extra(name: str) -> _Field:
    def check(value: Any) -> dict[str, Any]:
        try:
            check_extra(value)
        except InvalidInput as exc:
            raise _Bad(str(exc)) from exc
        result: dict[str, Any] = value
        return result

    return _Field(name, check, check)


# -- tagged values ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Schema:
    tag: str
    cls: type[Any]
    names: tuple[str, ...]
    encoders: tuple[Callable[[Any], object], ...]
    decoders: tuple[Callable[[Any], object], ...]
    required: int
    get: Callable[[Any], tuple[Any, ...]]
    positional: int  # fields before the first keyword-only one: the rest are passed by name


def _schema(
    tag: str,
    cls: type[Any],
    *fields: _Field,
    required: int | None = None,
    never_encoded: tuple[str, ...] = (),
) -> _Schema:
    """Describe ``cls`` on the wire: every field it declares (save ``never_encoded``), in order.

    ``required`` is the number of fields of the type's first version (default: all of them); a decoder
    fills in the defaults of the later ones when a frame stops before them. Raises TypeError at import time
    if the schema and the dataclass disagree, so a field added to a dataclass cannot be silently dropped.
    """
    names = tuple(f.name for f in fields)
    declared = tuple(f.name for f in dataclasses.fields(cls) if f.name not in never_encoded)
    if names != declared:
        raise TypeError(f"codec schema of {cls.__name__} lists {names}, the dataclass declares {declared}")
    required = len(fields) if required is None else required
    for later in dataclasses.fields(cls)[required : len(fields)]:
        if later.default is dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{later.name} came after the first version: it needs a default")
    get: Callable[[Any], tuple[Any, ...]]
    if not names:
        get = lambda value: ()  # noqa: E731
    elif len(names) == 1:
        single = operator.attrgetter(names[0])
        get = lambda value: (single(value),)  # noqa: E731 - attrgetter of one name returns no tuple
    else:
        get = operator.attrgetter(*names)
    encoders = tuple(f.encode for f in fields)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    positional = next((i for i, name in enumerate(names) if by_name[name].kw_only), len(names))
    return _Schema(tag, cls, names, encoders, tuple(f.decode for f in fields), required, get, positional)


def _encode_fields(schema: _Schema, value: Any) -> list[object]:
    fast = _FAST_ENCODERS.get(schema.tag)
    if fast is not None:
        encoded = fast(value)
        if encoded is not None:
            return encoded
    out: list[object] = [schema.tag]
    try:
        for encode_field, field_value in zip(schema.encoders, schema.get(value)):
            out.append(encode_field(field_value))
    except _Bad as exc:
        exc.path.append(schema.names[len(out) - 1])
        exc.root = schema.cls.__name__
        raise
    return out


def _decode_fields(schema: _Schema, obj: list[Any]) -> object:
    count = len(obj) - 1
    if not schema.required <= count <= len(schema.names):
        known = len(schema.names)
        wanted = f"{known}" if schema.required == known else f"{schema.required} to {known}"
        bad = _Bad(f"expected {wanted} fields after tag {schema.tag!r}, got {count}")
        bad.root = schema.cls.__name__
        raise bad
    args: list[object] = []
    try:
        for decode_field, field_value in zip(schema.decoders, obj[1:]):
            args.append(decode_field(field_value))
    except _Bad as exc:
        exc.path.append(schema.names[len(args)])
        exc.root = schema.cls.__name__
        raise
    try:
        if len(args) > schema.positional:
            keywords = dict(zip(schema.names[schema.positional :], args[schema.positional :]))
            return schema.cls(*args[: schema.positional], **keywords)
        return schema.cls(*args)
    except ValueError as exc:  # a value type's own check, e.g. InvalidSettings from BatchSettings
        bad = _Bad(str(exc))
        bad.root = schema.cls.__name__
        raise bad from exc


def _decode_tagged(obj: object, allowed: Mapping[str, _Schema], what: str) -> object:
    if type(obj) is not list or not obj:
        got = "an empty array" if type(obj) is list else _kind(obj)
        raise _Bad(f"{what} must be a tagged array, got {got}")
    tag = obj[0]
    if type(tag) is not str:
        raise _Bad(f"tag must be a str, got {_kind(tag)}")
    schema = allowed.get(tag)
    if schema is None:
        if tag in _BY_TAG:
            raise _Bad(f"{what} must be a {_names(allowed)}, got tag {tag!r} ({_BY_TAG[tag].cls.__name__})")
        raise _Bad(f"unknown tag {tag[:40]!r}")
    fast = _FAST_DECODERS.get(tag)
    if fast is not None:
        decoded = fast(obj)
        if decoded is not None:
            return decoded
    return _decode_fields(schema, obj)


def _names(schemas: Mapping[str, _Schema]) -> str:
    return " or ".join(s.cls.__name__ for s in schemas.values())


def _nested(name: str, *schemas: _Schema) -> _Field:
    """A field holding one of ``schemas`` as a nested tagged array."""
    by_type = {s.cls: s for s in schemas}
    by_tag = {s.tag: s for s in schemas}

    def encode(value: Any) -> list[object]:
        schema = by_type.get(type(value))
        if schema is None:
            raise _Bad(f"{name} must be a {_names(by_tag)}, got {_kind(value)}")
        return _encode_fields(schema, value)

    def decode(value: Any) -> object:
        return _decode_tagged(value, by_tag, name)

    return _Field(name, encode, decode)


def _optional_nested(name: str, *schemas: _Schema) -> _Field:
    """A field holding nil or one of ``schemas`` as a nested tagged array."""
    inner = _nested(name, *schemas)

    def encode(value: Any) -> object:
        return None if value is None else inner.encode(value)

    def decode(value: Any) -> object:
        return None if value is None else inner.decode(value)

    return _Field(name, encode, decode)


def _sequence(name: str, container: type[list[Any]] | type[tuple[Any, ...]], item: _Field) -> _Field:
    """A list or tuple (exactly ``container``) of nested values, at most MAX_SEQUENCE_ITEMS long."""

    def encode(value: Any) -> list[object]:
        if not isinstance(value, container):
            raise _Bad(f"{name} must be a {container.__name__}, got {_kind(value)}")
        if len(value) > MAX_SEQUENCE_ITEMS:
            raise _Bad(f"{name} must hold at most {MAX_SEQUENCE_ITEMS} items, got {len(value)}")
        out: list[object] = []
        try:
            for element in value:
                out.append(item.encode(element))
        except _Bad as exc:
            exc.path.append(f"[{len(out)}]")
            raise
        return out

    def decode(value: Any) -> object:
        if type(value) is not list:
            raise _Bad(f"{name} must be an array, got {_kind(value)}")
        out: list[object] = []
        try:
            for element in value:
                out.append(item.decode(element))
        except _Bad as exc:
            exc.path.append(f"[{len(out)}]")
            raise
        return out if container is list else tuple(out)

    return _Field(name, encode, decode)


_CHANNEL = _channel()
_CHANNEL_OR_ALL = _channel(allow_empty=True)
_DELIVERY_ID = _int("delivery_id")

_MESSAGE = _schema(
    "msg",
    QueuedMessage,
    _text("platform", MAX_NAME_BYTES),
    _CHANNEL,
    _text("user_id", MAX_NAME_BYTES),
    _text("user_name", MAX_NAME_BYTES),
    _text("text", MAX_TEXT_BYTES),
    _datetime("queued_at"),
    _extra("extra"),
    _text("message_id", MAX_NAME_BYTES),
    required=7,
    never_encoded=("raw",),
)
_BATCH = _schema(
    "batch",
    MessageBatch,
    _sequence("messages", list, _nested("message", _MESSAGE)),
    _datetime("first_at"),
    _datetime("last_at"),
)
_ITEM = _schema(
    "item",
    QueueItem,
    _text("item_id", MAX_NAME_BYTES, allow_empty=False),
    _CHANNEL,
    _nested("payload", _MESSAGE, _BATCH),
    _int("attempt", 1),
    _bool("interrupted"),
    required=4,
)
# -- fast paths ------------------------------------------------------------------------------------------
#
# The common message (every text field a plain ASCII str within its limit, no ``extra``), a batch of them and
# a queue item holding either, encoded and decoded without a check call per field. They produce exactly what the generic
# path produces; anything else (non-ASCII text, extra, a str subclass, any doubt) returns None and takes the
# generic path, which also reports every error. Stored state is mostly such values: this roughly halves the
# cost of writing and restoring it.

_QUEUED_AT_ENCODE = _MESSAGE.encoders[5]
_QUEUED_AT_DECODE: Final[Callable[[Any], Any]] = _MESSAGE.decoders[5]  # the _datetime decoder
_BATCH_AT_ENCODE = _BATCH.encoders[1]
_BATCH_AT_DECODE: Final[Callable[[Any], Any]] = _BATCH.decoders[1]


def _plain_message(platform: object, channel: object, user_id: object, user_name: object, text: object,
                   extra: object, message_id: object = "") -> bool:
    return (
        type(message_id) is str
        and len(message_id) <= MAX_NAME_BYTES
        and message_id.isascii()
        and
        type(platform) is str
        and type(channel) is str
        and type(user_id) is str
        and type(user_name) is str
        and type(text) is str
        and type(extra) is dict
        and not extra
        and 0 < len(channel) <= MAX_CHANNEL_ID_BYTES
        and len(platform) <= MAX_NAME_BYTES
        and len(user_id) <= MAX_NAME_BYTES
        and len(user_name) <= MAX_NAME_BYTES
        and len(text) <= MAX_TEXT_BYTES
        and channel.isascii()
        and platform.isascii()
        and user_id.isascii()
        and user_name.isascii()
        and text.isascii()
    )


def _fast_encode_message(value: Any) -> list[object] | None:
    if type(value) is not QueuedMessage or type(value.queued_at) is not datetime:
        return None
    platform, channel, user_id, user_name, text, extra, message_id = (
        value.platform, value.channel_id, value.user_id, value.user_name, value.text, value.extra, value.message_id
    )
    if not _plain_message(platform, channel, user_id, user_name, text, extra, message_id):
        return None
    return [
        _MESSAGE.tag, platform, channel, user_id, user_name, text, _QUEUED_AT_ENCODE(value.queued_at), extra,
        message_id,
    ]


def _fast_decode_message(obj: list[Any]) -> QueuedMessage | None:
    if len(obj) == 9:
        _, platform, channel, user_id, user_name, text, queued_at, extra, message_id = obj
    elif len(obj) == 8:  # written before message_id
        _, platform, channel, user_id, user_name, text, queued_at, extra = obj
        message_id = ""
    else:
        return None
    if not _plain_message(platform, channel, user_id, user_name, text, extra, message_id):
        return None
    try:
        at = _QUEUED_AT_DECODE(queued_at)
    except _Bad:
        return None  # the generic path reports it, with its field path
    return QueuedMessage(platform, channel, user_id, user_name, text, at, extra, message_id=message_id)


def _fast_encode_batch(value: Any) -> list[object] | None:
    if type(value) is not MessageBatch or type(value.messages) is not list:
        return None
    if type(value.first_at) is not datetime or type(value.last_at) is not datetime:
        return None
    messages = []
    for message in value.messages:
        encoded = _fast_encode_message(message)
        if encoded is None:
            return None
        messages.append(encoded)
    if len(messages) > MAX_SEQUENCE_ITEMS:
        return None
    return [_BATCH.tag, messages, _BATCH_AT_ENCODE(value.first_at), _BATCH_AT_ENCODE(value.last_at)]


def _fast_decode_batch(obj: list[Any]) -> MessageBatch | None:
    if len(obj) != 4 or type(obj[1]) is not list:
        return None
    messages = []
    for element in obj[1]:
        if type(element) is not list or not element or element[0] != _MESSAGE.tag:
            return None
        message = _fast_decode_message(element)
        if message is None:
            return None
        messages.append(message)
    try:
        first_at, last_at = _BATCH_AT_DECODE(obj[2]), _BATCH_AT_DECODE(obj[3])
    except _Bad:
        return None
    return MessageBatch(messages, first_at, last_at)


def _plain_item(item_id: object, channel: object, attempt: object) -> bool:
    return (
        type(item_id) is str
        and type(channel) is str
        and type(attempt) is int
        and 0 < len(item_id) <= MAX_NAME_BYTES
        and 0 < len(channel) <= MAX_CHANNEL_ID_BYTES
        and 1 <= attempt <= _MAX_INT
        and item_id.isascii()
        and channel.isascii()
    )


def _fast_encode_item(value: Any) -> list[object] | None:
    if type(value) is not QueueItem or type(value.interrupted) is not bool:
        return None
    item_id, channel, attempt = value.item_id, value.channel_id, value.attempt
    if not _plain_item(item_id, channel, attempt):
        return None
    payload = value.payload
    encoded = _fast_encode_message(payload) if type(payload) is QueuedMessage else _fast_encode_batch(payload)
    if encoded is None:
        return None
    return [_ITEM.tag, item_id, channel, encoded, attempt, value.interrupted]


def _fast_encode_open_entry(value: Any) -> list[object] | None:
    if type(value) is not OpenEntry or type(value.arrived_at) is not float or not math.isfinite(value.arrived_at):
        return None
    message = _fast_encode_message(value.message)
    if message is None:
        return None
    return [_OPEN_ENTRY_TAG, message, value.arrived_at]


def _fast_decode_item(obj: list[Any]) -> QueueItem | None:
    if len(obj) == 6:
        _, item_id, channel, payload, attempt, interrupted = obj
        if type(interrupted) is not bool:
            return None
    elif len(obj) == 5:  # written before interrupted
        _, item_id, channel, payload, attempt = obj
        interrupted = False
    else:
        return None
    if not (_plain_item(item_id, channel, attempt) and type(payload) is list and payload):
        return None
    decoded: QueuedMessage | MessageBatch | None
    if payload[0] == _MESSAGE.tag:
        decoded = _fast_decode_message(payload)
    elif payload[0] == _BATCH.tag:
        decoded = _fast_decode_batch(payload)
    else:
        return None
    if decoded is None:
        return None
    return QueueItem(item_id, channel, decoded, attempt, interrupted)


_OPEN_ENTRY_TAG: Final = "open_entry"


# -- frames joined from frames ----------------------------------------------------------------------------
#
# msgpack writes an array as a header followed by its elements' bytes, so a frame that holds messages can be
# joined from frames of those messages encoded earlier: the bytes are those ``encode`` writes (the tests
# check it). Persistence encodes each message once, as it joins the open batch, and reuses that frame when
# the closed batch is stored.


def _array_header(length: int) -> bytes:
    if length < 16:
        return bytes((0x90 | length,))
    if length < 0x10000:
        return b"\xdc" + length.to_bytes(2, "big")
    return b"\xdd" + length.to_bytes(4, "big")


def _packed_elements(*values: object) -> bytes:
    """The msgpack of ``values`` as consecutive array elements (an array's bytes without its header)."""
    packed: bytes = msgpack.packb(values, use_bin_type=True)
    return packed[1:]  # fewer than 16 values: a one-byte header


_OPEN_ENTRY_HEAD: Final = b"\x93" + _packed_elements(_OPEN_ENTRY_TAG)
_ITEM_HEAD: Final = b"\x96" + _packed_elements(_ITEM.tag)
_BATCH_HEAD: Final = b"\x94" + _packed_elements(_BATCH.tag)
_FLOAT64: Final = struct.Struct(">Bd")  # msgpack float 64: 0xcb, then the IEEE 754 double, big-endian


def encode_open_entry(entry: OpenEntry) -> tuple[bytes, bytes | None]:
    """``encode(entry)``, and the frame of its message alone, for :func:`encode_item_of_frames`; None when
    the message takes the generic path (extra fields, non-ASCII text: rare), which joining does not cover.

    Raises:
        TypeError, InvalidInput: as :func:`encode`.
    """
    fields = _fast_encode_open_entry(entry)
    if fields is None:
        return encode(entry), None
    message: bytes = msgpack.packb(fields[1], use_bin_type=True)
    frame = b"".join((_OPEN_ENTRY_HEAD, message, _FLOAT64.pack(0xCB, entry.arrived_at)))
    if len(frame) > MAX_FRAME_BYTES:
        return encode(entry), None  # raises, naming the limit
    return frame, message


def encode_item_of_frames(item: QueueItem, message_frames: Sequence[bytes]) -> bytes | None:
    """``encode(item)`` for an item whose payload is a batch, joined from ``message_frames``: one frame per
    message of the batch, in order, as :func:`encode_open_entry` returned them for those very messages (the
    caller guarantees it). None when the item takes the generic path or the frame would be too large: then
    call :func:`encode`."""
    if type(item) is not QueueItem or not _plain_item(item.item_id, item.channel_id, item.attempt):
        return None
    if type(item.interrupted) is not bool:
        return None
    batch = item.payload
    if type(batch) is not MessageBatch or type(batch.messages) is not list:
        return None
    count = len(message_frames)
    if len(batch.messages) != count or count > MAX_SEQUENCE_ITEMS:
        return None
    if type(batch.first_at) is not datetime or type(batch.last_at) is not datetime:
        return None
    frame = b"".join((
        _ITEM_HEAD,
        _packed_elements(item.item_id, item.channel_id),
        _BATCH_HEAD,
        _array_header(count),
        *message_frames,
        _packed_elements(
            _BATCH_AT_ENCODE(batch.first_at), _BATCH_AT_ENCODE(batch.last_at), item.attempt, item.interrupted
        ),
    ))
    return frame if len(frame) <= MAX_FRAME_BYTES else None

_FAST_ENCODERS: Mapping[str, Callable[[Any], list[object] | None]] = MappingProxyType(
    {
        _MESSAGE.tag: _fast_encode_message,
        _BATCH.tag: _fast_encode_batch,
        _ITEM.tag: _fast_encode_item,
        _OPEN_ENTRY_TAG: _fast_encode_open_entry,
    }
)
_FAST_DECODERS: Mapping[str, Callable[[list[Any]], object]] = MappingProxyType(
    {_MESSAGE.tag: _fast_decode_message, _BATCH.tag: _fast_decode_batch, _ITEM.tag: _fast_decode_item}
)

_SETTINGS = _schema(
    "settings",
    BatchSettings,
    _number("window"),
    _int("max_batch_size", 1),
    _optional_number("max_wait"),
    _bool("batching"),
    _text("busy_policy", MAX_NAME_BYTES),
    _bool("split_on_author"),
    _number("dedupe_ttl"),
    _int("max_attempts", 1),
    _number("retry_backoff"),
    _optional_number("processing_timeout"),
    _int("max_queued", 1),
    _text("overflow", MAX_NAME_BYTES),
    _optional_number("max_age"),
    required=4,
)
_CHANNEL_STATISTICS = _schema(
    "chan_stats",
    ChannelStatistics,
    _CHANNEL,
    _int("queued"),
    _int("open_batch_size"),
    _bool("in_flight"),
    _int("processed"),
    _int("cancelled"),
    _int("failed"),
    _bool("has_processor"),
    _int("duplicates"),
    _int("edits"),
    _int("retractions"),
    _int("interruptions"),
    _int("rejections"),
    _int("attempts"),
    _int("retries"),
    _int("timeouts"),
    _int("dead_lettered"),
    _int("dead_letters"),
    _int("dead_letters_dropped"),
    _int("dropped_stale"),
    _int("dropped_overflow"),
    _int("rejected_full"),
    required=8,
)

_DEAD_LETTER = _schema(
    "dead_letter",
    DeadLetter,
    _text("role", MAX_NAME_BYTES),
    _text("reason", MAX_TEXT_BYTES),
    _bytes("data", MAX_FRAME_BYTES // 2),
    _number("at"),
    _optional_nested("item", _ITEM),
    _int("attempts"),
    _number("first_failed_at"),
    _number("last_failed_at"),
    required=4,
)

_SCHEMAS: Final = (
    _MESSAGE,
    _BATCH,
    _ITEM,
    _SETTINGS,
    _CHANNEL_STATISTICS,
    _schema(_OPEN_ENTRY_TAG, OpenEntry, _nested("message", _MESSAGE), _number("arrived_at")),
    _DEAD_LETTER,
    _schema("enqueue", Enqueue, _nested("message", _MESSAGE), _bool("ack")),
    _schema(
        "enqueue_many", EnqueueMany, _sequence("messages", tuple, _nested("message", _MESSAGE)), _bool("ack")
    ),
    _schema("enqueue_front", EnqueueFront, _nested("payload", _MESSAGE, _BATCH), _bool("ack")),
    _schema("stop_channel", StopChannel, _CHANNEL),
    _schema("cancel_current", CancelCurrent, _CHANNEL),
    _schema("clear", Clear, _CHANNEL),
    _schema("hold_batch", HoldBatch, _CHANNEL),
    _schema("configure_channel", ConfigureChannel, _CHANNEL, _nested("settings", _SETTINGS)),
    _schema("get_statistics", GetStatistics, _CHANNEL_OR_ALL),
    _schema("enqueued", Enqueued, _int("count")),
    _schema(
        "rejected",
        Rejected,
        _text("command", MAX_NAME_BYTES),
        # Echoes whatever id the rejected command carried: free text, possibly empty or over the id limit.
        _text("channel_id", MAX_TEXT_BYTES),
        _text("error", MAX_NAME_BYTES),
        _text("reason", MAX_TEXT_BYTES),
    ),
    _schema("processing_started", ProcessingStarted, _CHANNEL_OR_ALL),
    _schema("channel_stopped", ChannelStopped, _CHANNEL, _bool("cancelled")),
    _schema("cancelled", Cancelled, _CHANNEL, _bool("cancelled")),
    _schema("cleared", Cleared, _CHANNEL, _int("removed")),
    _schema("batch_held", BatchHeld, _CHANNEL, _bool("held")),
    _schema("channel_configured", ChannelConfigured, _CHANNEL),
    _schema("statistics", Statistics, _sequence("channels", tuple, _nested("channel", _CHANNEL_STATISTICS))),
    _schema("observing", Observing),
    _schema(
        "batch_ready",
        BatchReady,
        _CHANNEL,
        _nested("item", _ITEM),
        _DELIVERY_ID,
        _text("reason", MAX_NAME_BYTES),
        _number("lateness"),
        _int("queued", minimum=-1),
        _bool("interrupted"),
        required=5,
        never_encoded=("reply_to",),
    ),
    _schema("cancel_processing", CancelProcessing, _CHANNEL, _DELIVERY_ID),
    _schema("processing_done", ProcessingDone, _CHANNEL, _DELIVERY_ID),
    _schema("processing_failed", ProcessingFailed, _CHANNEL, _DELIVERY_ID, _text("error", MAX_TEXT_BYTES)),
    _schema("queue_changed", QueueChanged, _CHANNEL, _int("queued"), _bool("in_flight")),
    _schema("flush_batch", FlushBatch, _CHANNEL),
    _schema("batch_flushed", BatchFlushed, _CHANNEL, _bool("flushed")),
    _schema("channel_passivated", ChannelPassivated, _CHANNEL),
    _schema("pause_channel", PauseChannel, _CHANNEL),
    _schema("resume_channel", ResumeChannel, _CHANNEL),
    _schema("channel_paused", ChannelPaused, _CHANNEL, _bool("paused")),
    _schema("edit", Edit, _nested("message", _MESSAGE)),
    _schema("edited", Edited, _CHANNEL, _text("message_id", MAX_NAME_BYTES), _bool("edited")),
    _schema("retract", Retract, _CHANNEL, _text("message_id", MAX_NAME_BYTES)),
    _schema("retracted", Retracted, _CHANNEL, _text("message_id", MAX_NAME_BYTES), _bool("retracted")),
    _schema("take_waiting", TakeWaiting, _CHANNEL),
    _schema("taken", Taken, _CHANNEL, _sequence("messages", tuple, _nested("message", _MESSAGE))),
    _schema("seen_id", SeenId, _text("message_id", MAX_NAME_BYTES), _number("at")),
    _schema("get_dead_letters", GetDeadLetters, _CHANNEL),
    _schema("dead_letters", DeadLetters, _CHANNEL, _sequence("letters", tuple, _nested("letter", _DEAD_LETTER))),
    _schema("replay_dead_letters", ReplayDeadLetters, _CHANNEL),
    _schema("dead_letters_replayed", DeadLettersReplayed, _CHANNEL, _int("count")),
    _schema("purge_dead_letters", PurgeDeadLetters, _CHANNEL),
    _schema("dead_letters_purged", DeadLettersPurged, _CHANNEL, _int("count")),
    _schema("channel_settings_applied", ChannelSettingsApplied, _CHANNEL, _nested("settings", _SETTINGS)),
)

_BY_TAG: Final[Mapping[str, _Schema]] = MappingProxyType({s.tag: s for s in _SCHEMAS})
_BY_TYPE: Final[Mapping[type[Any], _Schema]] = MappingProxyType({s.cls: s for s in _SCHEMAS})

TAGS: Final[Mapping[str, type[Any]]] = MappingProxyType({s.tag: s.cls for s in _SCHEMAS})
"""The tag table: each wire tag and the type it stands for. Tags are never renamed or reused."""

# Deliberately absent: these hold a Thespian ActorAddress, which has no wire form.
_NOT_ENCODABLE: Final = {
    name: "it holds a Thespian ActorAddress, which has no wire form"
    for name in ("StartProcessing", "Observe")
}


# -- public API ------------------------------------------------------------------------------------------


def encode(value: object) -> bytes:
    """Encode one protocol value (a type of :data:`Encodable`) as a msgpack frame.

    Raises:
        TypeError: if the value's type has no tag (``StartProcessing``, a dict, ...).
        InvalidInput: if a field has the wrong type or breaks a limit (the message names the field path and
            the rule), or the frame would exceed :data:`MAX_FRAME_BYTES`.
    """
    schema = _BY_TYPE.get(type(value))
    if schema is None:
        name = type(value).__name__
        why = _NOT_ENCODABLE.get(name, "it is not a protocol type with a tag")
        raise TypeError(f"cannot encode {name}: {why}")
    try:
        data: bytes = msgpack.packb(_encode_fields(schema, value), use_bin_type=True)
    except _Bad as exc:
        raise InvalidInput(exc.describe()) from exc.__cause__
    if len(data) > MAX_FRAME_BYTES:
        raise InvalidInput(f"an encoded frame must be at most {MAX_FRAME_BYTES} bytes, got {len(data)} bytes")
    return data


def _reject_ext(code: int, data: bytes) -> object:
    raise ValueError(f"msgpack ext type {code} is not allowed")


def _unique_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a msgpack map has a duplicate key")
    return result


@overload
def decode(data: bytes | bytearray | memoryview, expected: type[_T]) -> _T: ...


@overload
def decode(
    data: bytes | bytearray | memoryview, expected: tuple[type[Any], ...] | None = None
) -> Encodable: ...


def decode(
    data: bytes | bytearray | memoryview, expected: type[Any] | tuple[type[Any], ...] | None = None
) -> object:
    """Decode one msgpack frame made by :func:`encode`; if ``expected`` is given, the value must be of it.

    Raises:
        DecodeError: for any malformed input whatsoever (not bytes, not msgpack, trailing bytes, ext types,
            unknown or unexpected tag, wrong arity, a field of the wrong type, a broken limit), raised from
            the underlying error when there is one.
    """
    if isinstance(data, memoryview):
        size = data.nbytes
    elif isinstance(data, (bytes, bytearray)):
        size = len(data)
    else:
        raise DecodeError(f"data must be bytes, got {_kind(data)}")
    if size > MAX_FRAME_BYTES:
        raise DecodeError(f"a frame must be at most {MAX_FRAME_BYTES} bytes, got {size} bytes")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            object_pairs_hook=_unique_keys,
            ext_hook=_reject_ext,
            max_str_len=MAX_TEXT_BYTES,
            max_bin_len=size,
            max_array_len=min(size, MAX_SEQUENCE_ITEMS),
            max_map_len=MAX_EXTRA_BYTES,
            max_ext_len=0,
        )
    except msgpack.ExtraData as exc:  # its message would repr the whole decoded value
        raise DecodeError(f"not a valid msgpack frame: {len(exc.extra)} bytes after the value") from exc
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise DecodeError(f"not a valid msgpack frame: {str(exc)[:200] or type(exc).__name__}") from exc
    try:
        value = _decode_tagged(obj, _BY_TAG, "a frame")
    except _Bad as exc:
        raise DecodeError(exc.describe()) from exc.__cause__
    if expected is not None and not isinstance(value, expected):
        wanted = expected if isinstance(expected, tuple) else (expected,)
        raise DecodeError(
            f"expected {' or '.join(t.__name__ for t in wanted)}, got {type(value).__name__}"
        )
    return value


def decode_dead_letter(data: bytes | bytearray | memoryview) -> DeadLetter:
    """A stored dead letter: a :class:`DeadLetter` frame, or the msgpack map ``{"key", "reason", "data", "at"}``
    that ``RedisQueue`` wrote for an undecodable item before it wrote frames (read as role ``redis``: the queue
    list it was taken from).

    Raises:
        DecodeError: when ``data`` is neither.
    """
    try:
        return decode(data, DeadLetter)
    except DecodeError as exc:
        error = exc
    try:
        legacy = msgpack.unpackb(bytes(data), raw=False, max_str_len=MAX_TEXT_BYTES, max_bin_len=MAX_FRAME_BYTES,
                                 max_array_len=0, max_map_len=4, max_ext_len=0)
    except Exception:  # not msgpack at all: the frame's error says more
        raise error from None
    if (type(legacy) is not dict or set(legacy) != {"key", "reason", "data", "at"}
            or type(legacy["reason"]) is not str or type(legacy["data"]) is not bytes
            or type(legacy["at"]) not in (int, float)):
        raise error
    return DeadLetter(QUEUE, legacy["reason"], legacy["data"], float(legacy["at"]))
