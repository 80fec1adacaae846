"""ChannelRecords: what the Supervisor keeps per channel beyond its actor's life (processor and counters), in one
dict whose common records are shared."""

from __future__ import annotations

import sys

from hypothesis import given
from hypothesis import strategies as st

from actors.records import STOPPED, UNSET, ChannelRecords, Counters, Mark


class Processor:
    """A stand-in for an actor address: compared by identity, unhashable like Thespian's."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def test_a_channel_never_named_has_no_record_and_the_default_applies() -> None:
    records: ChannelRecords[Processor] = ChannelRecords()
    assert records.processor("c") is UNSET and records.counters("c") is None
    assert "c" not in records and len(records) == 0


def test_processor_and_counters_are_kept_apart_and_a_record_goes_when_both_are_gone() -> None:
    records: ChannelRecords[Processor] = ChannelRecords()
    p = Processor("p")
    records.set_processor("c", p)
    records.set_counters("c", 3)
    assert (records.processor("c"), records.counters("c")) == (p, 3)
    assert records.take_counters("c") == 3
    assert (records.processor("c"), records.counters("c")) == (p, None)
    records.set_processor("c", STOPPED)
    assert records.processor("c") is STOPPED and "c" in records  # stopped is kept: the default does not apply
    records.set_processor("c", UNSET)
    assert "c" not in records and len(records) == 0


def test_channels_with_the_same_processor_and_a_small_count_share_one_record() -> None:
    records: ChannelRecords[Processor] = ChannelRecords()
    p = Processor("p")
    for n in range(1000):
        records.set_processor(f"c{n}", p)
        records.set_counters(f"c{n}", 1)
    shared = {id(records._records[f"c{n}"]) for n in range(1000)}
    assert len(shared) == 1
    records.set_counters("big", 10**9)  # a large count or a tuple of counts is a record of its own
    records.set_counters("tuple", (1, 2, 0, 0, 0, 0, 0, 0))
    assert records.counters("big") == 10**9 and records.counters("tuple") == (1, 2, 0, 0, 0, 0, 0, 0)
    assert records.processor("big") is UNSET


def test_shared_records_are_counted_once_in_the_footprint() -> None:
    records: ChannelRecords[Processor] = ChannelRecords()
    p = Processor("p")
    records.set_processor("c0", p)
    records.set_counters("c0", 1)
    one = records.nbytes()
    for n in range(1, 1000):
        records.set_processor(f"c{n}", p)
        records.set_counters(f"c{n}", 1)
    per_channel = (records.nbytes() - one) / 999
    assert per_channel < 120  # a dict slot and a key: no record or count of its own
    shared = records.nbytes()
    counts = (1, 1000, 0, 0, 0, 0, 0, 0)
    records.set_counters("c0", counts)  # a record of its own, its tuple, and 1000 (not a small int)
    own = sys.getsizeof((p, counts)) + sys.getsizeof(counts) + sys.getsizeof(1000)
    assert records.nbytes() - shared == own


def test_two_processors_that_compare_equal_keep_their_own_identity() -> None:
    records: ChannelRecords[Processor] = ChannelRecords()
    a, b = Processor("a"), Processor("b")
    records.set_processor("x", a)
    records.set_processor("y", b)
    assert records.processor("x") is a and records.processor("y") is b


PROCESSORS = [Processor("p0"), Processor("p1")]
processors = st.sampled_from([UNSET, STOPPED, *PROCESSORS])
counters = st.one_of(
    st.none(), st.integers(0, 5000), st.tuples(*[st.integers(0, 3)] * 8)
)
operations = st.lists(
    st.tuples(st.sampled_from(["processor", "counters", "take"]), st.sampled_from(["a", "b", "c"]),
              processors, counters),
    max_size=60,
)


@given(operations)
def test_the_records_behave_as_two_plain_dicts(steps: list[tuple[str, str, object, Counters | None]]) -> None:
    records: ChannelRecords[Processor] = ChannelRecords()
    model_processors: dict[str, object] = {}
    model_counters: dict[str, Counters] = {}
    for op, channel, processor, count in steps:
        if op == "processor":
            assert isinstance(processor, (Processor, Mark))
            records.set_processor(channel, processor)
            if processor is UNSET:
                model_processors.pop(channel, None)
            else:
                model_processors[channel] = processor
        elif op == "counters":
            records.set_counters(channel, count)
            if count is None:
                model_counters.pop(channel, None)
            else:
                model_counters[channel] = count
        else:
            assert records.take_counters(channel) == model_counters.pop(channel, None)
        for name in ("a", "b", "c"):
            assert records.processor(name) is model_processors.get(name, UNSET)
            assert records.counters(name) == model_counters.get(name)
            assert (name in records) == (name in model_processors or name in model_counters)
        assert records.counted() == len(model_counters)
