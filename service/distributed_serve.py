"""``serve --redis URL --distributed``: a node of distributed mode, with no actor system. JSON lines from stdin
join their channels' batches in Redis, and finished batches go to a Redis stream instead of stdout."""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import signal
import sys
import threading
from collections import Counter
from typing import IO, TYPE_CHECKING, Iterable

from protocol.errors import InvalidInput, QueueFull, StoreUnavailable, UnsafeRedis
from protocol.values import BatchSettings
from service.lines import MAX_LINE_BYTES, LineSplitter, channel_of, parse_line
from service.logs import report
from service.process import EXIT_FAILED, EXIT_OK, signal_handlers_restored, silence_stdout
from service.serve import redacted

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from message_queue.distributed import DistributedBatcher

class _ChunkReader:
    """Reads stdin in chunks on a thread of its own (blocked in ``read``, so it barely competes for the GIL)
    and hands them to the event loop, at most a few chunks ahead of what the loop has handled."""

    def __init__(self, loop: asyncio.AbstractEventLoop, chunks: asyncio.Queue[bytes], ahead: int = 4) -> None:
        self._loop = loop
        self._chunks = chunks
        self._room = threading.Semaphore(ahead)
        self._stopping = False

    def handled(self) -> None:
        self._room.release()

    def stop(self) -> None:
        self._stopping = True
        self._room.release()

    def run(self, stream: IO[bytes]) -> None:  # on the reader thread
        fd = stream.fileno()
        while True:
            self._room.acquire()
            if self._stopping:
                return
            try:
                data = os.read(fd, 1 << 16)
            except OSError:
                data = b""
            try:
                self._loop.call_soon_threadsafe(self._chunks.put_nowait, data)
            except RuntimeError:  # the loop is closed: serve is ending
                return
            if not data:
                return


def run_serve_distributed(args: argparse.Namespace) -> int:
    """serve --distributed: append each input line's message to its channel's batch in Redis; finished
    batches go to the stream, not to stdout."""
    with signal_handlers_restored():
        return asyncio.run(_serve_distributed(args))


async def _serve_distributed(args: argparse.Namespace) -> int:
    from redis.asyncio import Redis

    from message_queue.distributed import DistributedBatcher, NodeOptions

    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    settings = BatchSettings(args.window, args.max_batch_size, args.max_wait, dedupe_ttl=args.dedupe_ttl,
                             max_queued=args.max_queued, overflow=args.overflow)
    options = NodeOptions(stream=args.stream, maxlen=args.stream_maxlen, sweep_interval=args.sweep_interval,
                          grace=args.grace, **({"node_id": args.node_id} if args.node_id else {}))
    client = Redis.from_url(args.redis, socket_timeout=10, socket_connect_timeout=5)
    node = _Node(args, client, DistributedBatcher(client, settings, options), stopped)
    try:
        failed = await node.start()
        if failed is not None:
            return failed
        await node.run()
        return node.finish()
    finally:
        node.reader.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await node.batcher.close()
        await client.aclose()


class _Node:
    """One run of ``serve --distributed``: input lines in, messages submitted to the batcher, acks and the
    summary out. ``stopped`` is set by a signal, a failed write to Redis, or a broken stdout."""

    def __init__(self, args: argparse.Namespace, client: Redis, batcher: DistributedBatcher,
                 stopped: asyncio.Event) -> None:
        self.args = args
        self.url = redacted(args.redis)
        self.client = client
        self.batcher = batcher
        self.stopped = stopped
        self.loop = asyncio.get_running_loop()
        self.chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self.reader = _ChunkReader(self.loop, self.chunks)
        self.counts = Counter[str]()
        self.failure: list[BaseException] = []
        self.broken: list[OSError] = []
        self.out = sys.stdout.buffer
        self.reported = 0

    async def start(self) -> int | None:
        """Check the server and start the batcher; the exit code when that failed, else None."""
        from message_queue.distributed import check_durability

        try:
            await check_durability(self.client, self.args.allow_volatile_redis)
            await self.batcher.start()
        except UnsafeRedis as exc:
            print(f"serve: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except _unreachable() as exc:
            print(f"serve: cannot reach Redis at {self.url}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except _redis_errors() as exc:
            print(f"serve: cannot use Redis at {self.url}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        self.batcher.on_progress = self.report_acks
        print(f"serve: ready as distributed node {self.batcher.node_id} on Redis at {self.url}; reading JSON lines "
              f"on stdin; finished batches go to the stream {self.batcher.options.stream!r}", file=sys.stderr,
              flush=True)
        return None

    async def run(self) -> None:
        """Read stdin until its end (then wait for this node's last batches) or until stopped."""
        threading.Thread(target=self.reader.run, args=(sys.stdin.buffer,), name="serve-stdin", daemon=True).start()
        ending = self.loop.create_task(self.feed())
        stopping = self.loop.create_task(self.stopped.wait())
        await asyncio.wait({ending, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if ending.done():
            ending.result()  # raises what ended the feed, if anything
        if not self.stopped.is_set():
            print(f"serve: end of input; {self.counts['accepted']} messages accepted, {self.counts['skipped']} lines "
                  "skipped; waiting for the last batches", file=sys.stderr, flush=True)
            draining = self.loop.create_task(self.batcher.drain())
            await asyncio.wait({draining, stopping}, return_when=asyncio.FIRST_COMPLETED)
            draining.cancel()
        ending.cancel()
        stopping.cancel()

    def finish(self) -> int:
        """Report the last acks and the summary; the exit code."""
        self.report_acks()
        stats = self.batcher.statistics()
        if self.broken:
            silence_stdout()
            print(f"serve: output closed ({self.broken[0]}); stopping", file=sys.stderr)
            return EXIT_FAILED
        if self.failure:
            print(f"serve: Redis at {self.url} failed ({self.failure[0]}); {stats.appended} of "
                  f"{self.counts['accepted']} messages were stored", file=sys.stderr)
            return EXIT_FAILED
        published = stats.published_on_append + stats.published_by_timer + stats.published_by_sweep
        summary = (f"{stats.appended} messages stored; this node published {published} batches "
                   f"({stats.published_on_append} on append, {stats.published_by_timer} by its timers, "
                   f"{stats.published_by_sweep} overdue ones by its sweeper)")
        if self.counts["refused"] or stats.dropped_overflow:
            summary += (f"; {self.counts['refused']} refused and {stats.dropped_overflow} dropped by max_queued "
                        f"(--overflow {self.args.overflow})")
        if self.stopped.is_set():
            print(f"serve: stopped by a signal; {summary}; open batches stay in Redis for the other nodes",
                  file=sys.stderr)
        else:
            print(f"serve: done; {summary}", file=sys.stderr)
        return EXIT_OK

    def answered(self, number: int, channel: str, future: asyncio.Future[None]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if isinstance(exc, QueueFull):  # the channel's open batch held max_queued messages: refused, counted
            self.counts["refused"] += 1
            report(f"serve: line {number} refused: {exc}", line=number, channel=channel)
            return
        if exc is not None and not self.failure:
            self.failure.append(exc)
            self.stopped.set()

    def report_acks(self) -> None:
        # Called right after each answered pipeline: operations are answered in the order submitted, so the
        # count of stored messages is the count of leading input messages stored.
        acked = self.batcher.statistics().appended
        if self.args.acks and acked != self.reported and not self.broken:
            self.reported = acked
            try:
                self.out.write(b'{"acked": %d}\n' % self.reported)
                self.out.flush()
            except OSError as exc:  # the reader of stdout went away
                self.broken.append(exc)
                self.stopped.set()

    async def take(self, lines: Iterable[tuple[int, bytes | None]]) -> None:
        batcher = self.batcher
        for count, (number, data) in enumerate(lines, 1):
            if count % 64 == 0:
                await asyncio.sleep(0)  # let due timers fire and answers arrive between slices of a chunk
            try:
                if data is None:
                    raise InvalidInput(f"line longer than {MAX_LINE_BYTES} bytes")
                message = parse_line(data)
            except InvalidInput as exc:
                self.counts["skipped"] += 1
                report(f"serve: line {number} skipped: {exc}", line=number, channel=channel_of(data))
                continue
            if not batcher.has_room:
                await batcher.wait_for_room()
            self.counts["accepted"] += 1
            batcher.submit(message).add_done_callback(functools.partial(self.answered, number, message.channel_id))

    async def feed(self) -> None:
        splitter = LineSplitter()
        while (chunk := await self.chunks.get()):
            await self.take(splitter.feed(chunk))
            self.reader.handled()
        await self.take(splitter.end())


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError)


def _unreachable() -> tuple[type[BaseException], ...]:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (StoreUnavailable, RedisConnectionError, RedisTimeoutError, OSError)
