"""A message-queue node for the crash tests: one process, killed with SIGKILL by the tests.

Run as ``python tests/crash_node.py --redis URL [--window W --max-batch-size N]``. It starts an
:class:`~actors.driver.InProcessDriver` persisting to ``URL`` (``simpleSystemBase``: every actor runs in this one
process) and registers the driver itself as the processor of every channel.

Standard input, one command per line:
    ``E <channel> <msgid>``: enqueue a message whose text is ``msgid``. Lines available together are sent as one
    ``EnqueueMany(ack=True)``.
    ``L <channel>``: list the channel's dead letters (after the enqueues read before it).

Standard output, line-buffered and flushed after every line:
    ``R <pid>``: the driver started (every stored channel is restored) and the processor is registered;
    ``A <msgid> ...``: these messages are acknowledged, i.e. stored in Redis;
    ``D <channel> <item_id> <attempt> <msgid>,<msgid>,...``: an item was delivered to the processor. The line is
    flushed before ``ProcessingDone`` is sent, so a delivery the node finished is always on stdout. On a channel
    whose id starts with ``--fail-prefix`` the processor answers ``ProcessingFailed`` instead;
    ``L <channel> <count> <item_id>:<attempts>:<first_failed_at>:<last_failed_at> ...``: the answer to ``L``.

Acknowledgements: ``InProcessDriver.call`` matches a reply to its command only by when it arrives. While Redis
is unreachable RedisPersistence holds every reply, so ``call`` resolves with None, and the held reply of that
command later resolves the future of whatever command runs when Redis is back. A reply is therefore trusted
only while no earlier reply is outstanding. After a call without its ``Enqueued``, the node sends no more
enqueues and probes with ``GetStatistics(channel)`` of a live channel, whose answer is held behind every
earlier write: the first ``Statistics`` that comes back proves that every enqueue sent before it is in Redis,
and those messages are acknowledged then.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import queue
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from actors.driver import InProcessDriver, Output  # noqa: E402
from protocol.messages import (  # noqa: E402
    BatchReady,
    DeadLetters,
    Enqueued,
    EnqueueMany,
    GetDeadLetters,
    GetStatistics,
    ProcessingDone,
    ProcessingFailed,
    StartProcessing,
    Statistics,
)
from protocol.values import BatchSettings, QueuedMessage, payload_messages  # noqa: E402

log = logging.getLogger("crash_node")

_MAX_LINES = 2000  # most stdin lines sent in one EnqueueMany
_PROBE_PAUSE = 0.05  # seconds between probes while acknowledgements are held (Redis unreachable)


class Out:
    """Whole lines to stdout from several threads, each flushed at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        with self._lock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()


def _read_stdin(lines: queue.SimpleQueue[bytes | None]) -> None:
    for raw in sys.stdin.buffer:
        lines.put(raw)
    lines.put(None)


def _message(raw: bytes) -> QueuedMessage | None:
    parts = raw.decode("utf-8").split()
    if len(parts) != 3 or parts[0] != "E":
        log.error("bad command line %r", raw)
        return None
    return QueuedMessage("crash", parts[1], "u", "u", parts[2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", required=True, help="redis:// URL to persist to")
    parser.add_argument("--window", type=float, default=0.05, help="quiet window in seconds")
    parser.add_argument("--max-batch-size", type=int, default=5)
    parser.add_argument("--start-timeout", type=float, default=120.0)
    parser.add_argument("--max-attempts", type=int, default=1)
    parser.add_argument("--retry-backoff", type=float, default=BatchSettings().retry_backoff)
    parser.add_argument("--fail-prefix", default="", help="deliveries on channels named so fail")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")

    out = Out()
    driver: InProcessDriver

    def on_output(output: Output) -> None:
        if isinstance(output, BatchReady):
            texts = ",".join(m.text for m in payload_messages(output.item.payload))
            out.line(f"D {output.channel_id} {output.item.item_id} {output.item.attempt} {texts}")
            if args.fail_prefix and output.channel_id.startswith(args.fail_prefix):
                driver.tell(ProcessingFailed(output.channel_id, output.delivery_id, "failed on purpose"))
            else:
                driver.tell(ProcessingDone(output.channel_id, output.delivery_id))

    settings = BatchSettings(window=args.window, max_batch_size=args.max_batch_size,
                             max_attempts=args.max_attempts, retry_backoff=args.retry_backoff)
    # Channels never passivate during a test: a probe's GetStatistics must reach a live channel.
    driver = InProcessDriver(on_output, settings, idle_timeout=3600.0, redis_url=args.redis)
    driver.start(timeout=args.start_timeout)
    driver.call(StartProcessing()).result()
    out.line(f"R {os.getpid()}")

    lines: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    threading.Thread(target=_read_stdin, args=(lines,), name="stdin", daemon=True).start()
    unconfirmed: list[QueuedMessage] = []  # sent, reply held: acknowledged by the next Statistics
    eof = False
    while not eof:
        if unconfirmed:
            time.sleep(_PROBE_PAUSE)
            reply = driver.call(GetStatistics(unconfirmed[-1].channel_id)).result()
            if isinstance(reply, Statistics):
                log.warning("a probe was answered: the %d messages are in Redis", len(unconfirmed))
                out.line("A " + " ".join(m.text for m in unconfirmed))
                unconfirmed = []
            elif reply is not None:
                log.warning("a probe got the held reply of an earlier command: %r", reply)
            continue
        raw = lines.get()
        batch: list[QueuedMessage] = []
        listing: str | None = None
        while raw is not None:
            if raw.startswith(b"L "):
                listing = raw.decode("utf-8").split()[1]
                break
            message = _message(raw)
            if message is not None:
                batch.append(message)
            if len(batch) >= _MAX_LINES:
                break
            try:
                raw = lines.get_nowait()
            except queue.Empty:
                break
        else:
            eof = True
        if batch:
            reply = driver.call(EnqueueMany(tuple(batch), ack=True)).result()
            if isinstance(reply, Enqueued) and reply.count == len(batch):
                out.line("A " + " ".join(m.text for m in batch))
            else:
                log.warning("no acknowledgement for %d messages (reply %r): probing until Redis has them",
                            len(batch), reply)
                unconfirmed = batch
        if listing is not None:
            letters = driver.call(GetDeadLetters(listing)).result()
            assert isinstance(letters, DeadLetters), letters
            described = [f"{x.item.item_id if x.item else '-'}:{x.attempts}:{x.first_failed_at!r}:"
                         f"{x.last_failed_at!r}" for x in letters.letters]
            out.line(f"L {listing} {len(described)} " + " ".join(described))
    driver.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
