"""What the Supervisor keeps of a passivated channel's counters comes back whole to its next actor, and the
common case (every delivery answered once) stays one int."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from actors.batching import FAILURE_COUNTS
from actors.supervisor import _pack_counters, _unpack_counters

counts = st.integers(0, 10**6)


def as_dict(failures: tuple[int, ...]) -> dict[str, int]:
    return {name: (failures[i] if i < len(failures) else 0) for i, name in enumerate(FAILURE_COUNTS)}


@given(counts, counts, counts, st.tuples(counts, counts, counts, counts, counts),
       st.lists(counts, min_size=len(FAILURE_COUNTS), max_size=len(FAILURE_COUNTS)).map(tuple))
def test_counters_come_back_as_they_were_kept(
    processed: int, cancelled: int, failed: int, conversation: tuple[int, int, int, int, int],
    failures: tuple[int, ...],
) -> None:
    packed = _pack_counters(processed, cancelled, failed, conversation, failures)
    p, c, f, conv, back = _unpack_counters(packed)
    assert (p, c, f, conv) == (processed, cancelled, failed, conversation)
    if packed is None:  # nothing counted at all
        assert not any(failures[1:]) and failures[0] == processed + cancelled + failed == 0
    else:
        assert as_dict(back) == as_dict(failures)


def test_a_channel_whose_deliveries_were_each_answered_once_keeps_one_int() -> None:
    attempts_only = (7,) + (0,) * (len(FAILURE_COUNTS) - 1)
    packed = _pack_counters(7, 0, 0, failures=attempts_only)
    assert packed == 7
    assert as_dict(_unpack_counters(packed)[4]) == as_dict(attempts_only)
