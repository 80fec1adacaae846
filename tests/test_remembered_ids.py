"""The message ids the Supervisor keeps for passivated channels (``actors.remembered.RememberedIds``), and the
check of the ids a ``Passivate`` carries (it may come from another process)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.batching import MAX_REMEMBERED_IDS
from actors.remembered import RememberedIds
from actors.supervisor import _checked_ids
from protocol.errors import InvalidInput

TTL = 10.0


def ttl_of(channel_id: str) -> float:
    return TTL


def test_kept_ids_come_back_once_oldest_first_and_the_entry_goes_with_them() -> None:
    kept = RememberedIds()
    assert kept.keep("c1", (("m1", 1.0), ("m2", 2.0)), 3.0, TTL) == 12.0  # when the newest expires
    assert kept.keep("c2", (("x", 2.5),), 3.0, TTL) == 12.5
    assert (len(kept), kept.ids, "c1" in kept) == (2, 3, True)
    assert kept.peek("c1") == (("m1", 1.0), ("m2", 2.0))
    assert kept.take("c1") == (("m1", 1.0), ("m2", 2.0))
    assert kept.take("c1") == ()
    assert kept.take("c2") == (("x", 2.5),)
    assert (len(kept), kept.ids, "c1" in kept) == (0, 0, False)


def test_expired_ids_are_not_kept_and_a_channel_with_none_left_has_no_entry() -> None:
    kept = RememberedIds()
    assert kept.keep("c1", (("old", 0.0), ("new", 5.0)), 10.0, TTL) == 15.0
    assert kept.peek("c1") == (("new", 5.0),)
    assert kept.keep("c2", (("old", 0.0),), 10.0, TTL) is None  # expired at exactly ttl, as in the channel
    assert kept.keep("c3", (("any", 9.0),), 10.0, 0.0) is None  # dedupe_ttl 0: nothing is remembered
    assert (len(kept), kept.ids) == (1, 1)


def test_a_channel_keeps_at_most_the_bound_newest_first_and_a_new_handover_replaces_the_old() -> None:
    kept = RememberedIds()
    ids = tuple((f"m{n}", float(n)) for n in range(MAX_REMEMBERED_IDS + 5))
    kept.keep("c1", ids, 10.0, 1e9)
    assert kept.peek("c1") == ids[5:] and kept.ids == MAX_REMEMBERED_IDS
    kept.keep("c1", (("z", 9.0),), 10.0, TTL)
    assert kept.peek("c1") == (("z", 9.0),) and kept.ids == 1


def test_prune_drops_expired_ids_and_emptied_channels_and_says_when_the_next_empties() -> None:
    kept = RememberedIds()
    kept.keep("gone", (("a", 1.0),), 2.0, TTL)
    kept.keep("half", (("b", 1.0), ("c", 6.0)), 7.0, TTL)
    kept.keep("stays", (("d", 8.0), ("e", 9.0)), 10.0, TTL)
    assert kept.ids == 5
    assert kept.prune(11.0, ttl_of) == 16.0  # "half" is left with "c", which expires at 16
    assert (len(kept), kept.ids) == (2, 3)
    assert kept.peek("half") == (("c", 6.0),) and kept.peek("stays") == (("d", 8.0), ("e", 9.0))
    assert kept.prune(16.0, ttl_of) == 19.0
    assert kept.prune(19.0, ttl_of) is None
    assert (len(kept), kept.ids) == (0, 0)


def test_prune_reads_each_channels_ttl_when_it_runs() -> None:
    kept = RememberedIds()
    kept.keep("short", (("a", 1.0),), 1.0, TTL)
    kept.keep("long", (("b", 1.0),), 1.0, TTL)
    # "short" was configured with dedupe_ttl 2 while passivated
    assert kept.prune(5.0, {"short": 2.0, "long": TTL}.__getitem__) == 11.0
    assert kept.peek("short") == () and kept.peek("long") == (("b", 1.0),)


@given(
    st.dictionaries(
        st.sampled_from([f"c{n}" for n in range(8)]),
        st.lists(st.floats(0.0, 100.0), min_size=1, max_size=6).map(sorted),
        max_size=8,
    ),
    st.floats(0.0, 150.0),
)
def test_prune_keeps_exactly_the_unexpired_ids(handed: dict[str, list[float]], now: float) -> None:
    kept = RememberedIds()
    for channel, times in handed.items():
        kept.keep(channel, tuple((f"{channel}-{n}", at) for n, at in enumerate(times)), 0.0, 1e9)
    next_empty = kept.prune(now, ttl_of)
    expected = {
        channel: tuple((f"{channel}-{n}", at) for n, at in enumerate(times) if now - at < TTL)
        for channel, times in handed.items()
    }
    expected = {channel: ids for channel, ids in expected.items() if ids}
    assert {channel: kept.peek(channel) for channel in expected} == expected
    assert (len(kept), kept.ids) == (len(expected), sum(len(ids) for ids in expected.values()))
    assert next_empty == (min(ids[-1][1] + TTL for ids in expected.values()) if expected else None)


message_ids = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=64).filter(
    lambda text: len(text.encode("utf-8")) <= 256
)


@given(st.lists(st.tuples(message_ids, st.floats(0.0, 1e6)), min_size=1, max_size=20))
def test_any_valid_ids_and_times_come_back_exactly_as_handed_over(handed: list[tuple[str, float]]) -> None:
    kept = RememberedIds()
    kept.keep("c", tuple(handed), 0.0, 1e9)
    assert kept.peek("c") == tuple(handed) and kept.ids == len(handed)
    assert kept.take("c") == tuple(handed) and kept.ids == 0


def test_ids_at_the_length_limit_and_beyond_ascii_come_back_intact() -> None:
    kept = RememberedIds()
    ids = (("é" * 128, 1.0), ("✓ done", 2.0), ("\x00", 3.0), ("x" * 256, 4.0))
    kept.keep("c", ids, 5.0, TTL)
    assert kept.take("c") == ids


def test_the_ids_of_a_passivation_are_checked_naming_the_rule() -> None:
    assert _checked_ids((("m1", 1.5), ("m2", 2))) == (("m1", 1.5), ("m2", 2))
    cases: list[tuple[object, str]] = [
        (["m1", 1.0], "ids must be a tuple of at most 1000 pairs, got list"),
        ((("m", 1.0),) * 1001, "ids must be a tuple of at most 1000 pairs, got tuple of 1001"),
        (("m1",), "each of ids must be a (message_id, time) pair, got 'm1'"),
        ((("", 1.0),), "message_id must not be empty"),
        ((("x" * 300, 1.0),), "message_id must be at most 256 bytes of UTF-8, got 300 bytes"),
        ((("m1", float("nan")),), "the time of message id 'm1' must be a finite number, got nan"),
        ((("m1", True),), "the time of message id 'm1' must be a finite number, got True"),
    ]
    for ids, reason in cases:
        with pytest.raises(InvalidInput) as raised:
            _checked_ids(ids)
        assert str(raised.value) == reason
