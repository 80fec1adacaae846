"""Settings that reach the Supervisor are checked field by field, whatever built them (a pickled
``BatchSettings`` from another process is rebuilt without its constructor's checks)."""

from __future__ import annotations

from harness import message, start_harness, texts

from actors.system import SIMPLE_BASE
from protocol.messages import ChannelConfigured, ConfigureChannel, Rejected
from protocol.values import BatchSettings


def unchecked(**fields: object) -> BatchSettings:
    settings = BatchSettings(window=0.05)
    for name, value in fields.items():
        object.__setattr__(settings, name, value)
    return settings


def test_settings_with_a_bad_field_are_rejected_naming_it_and_the_channel_keeps_delivering() -> None:
    mq = start_harness(SIMPLE_BASE, BatchSettings(window=0.05))
    try:
        processor = mq.processor()
        mq.attach(processor, "c")
        for bad, named in ((unchecked(window="soon"), "window"), (unchecked(max_batch_size=0), "max_batch_size"),
                           ("fast", "BatchSettings")):
            reply = mq.ask(ConfigureChannel("c", bad), Rejected)  # type: ignore[arg-type]
            assert reply.error == "InvalidSettings" and named in reply.reason, reply
        assert mq.ask(ConfigureChannel("c", BatchSettings(window=0.01)), ChannelConfigured).channel_id == "c"
        mq.enqueue(message("c", "still delivered"))
        (ready,) = mq.wait_for(processor, count=1)
        assert texts(ready) == ["still delivered"]
    finally:
        mq.shutdown_and_verify()
