"""``serve --redis URL --distributed``: a node of distributed mode, with no actor system. JSON lines from stdin
join their channels' batches in Redis, and finished batches go to a Redis stream instead of stdout."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
from collections import Counter
from typing import IO, Iterable

from protocol.errors import InvalidInput, StoreUnavailable, UnsafeRedis
from protocol.values import BatchSettings
from service.lines import MAX_LINE_BYTES, LineSplitter, parse_line
from service.process import EXIT_FAILED, EXIT_OK, signal_handlers_restored, silence_stdout
from service.serve import redacted

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

    from message_queue.distributed import DistributedBatcher, NodeOptions, check_durability

    url = redacted(args.redis)
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    settings = BatchSettings(args.window, args.max_batch_size, args.max_wait)
    options = NodeOptions(stream=args.stream, maxlen=args.stream_maxlen, sweep_interval=args.sweep_interval,
                          grace=args.grace, **({"node_id": args.node_id} if args.node_id else {}))
    client = Redis.from_url(args.redis, socket_timeout=10, socket_connect_timeout=5)
    batcher = DistributedBatcher(client, settings, options)
    chunks: asyncio.Queue[bytes] = asyncio.Queue()
    reader = _ChunkReader(loop, chunks)
    counts = Counter[str]()
    failure: list[BaseException] = []
    broken: list[OSError] = []
    out = sys.stdout.buffer
    reported = 0

    def answered(future: asyncio.Future[None]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None and not failure:
            failure.append(exc)
            stopped.set()

    def report_acks() -> None:
        # Called right after each answered pipeline: operations are answered in the order submitted, so the
        # count of stored messages is the count of leading input messages stored.
        nonlocal reported
        acked = batcher.statistics().appended
        if args.acks and acked != reported and not broken:
            reported = acked
            try:
                out.write(b'{"acked": %d}\n' % reported)
                out.flush()
            except OSError as exc:  # the reader of stdout went away
                broken.append(exc)
                stopped.set()

    async def take(lines: Iterable[tuple[int, bytes | None]]) -> None:
        for count, (number, data) in enumerate(lines, 1):
            if count % 64 == 0:
                await asyncio.sleep(0)  # let due timers fire and answers arrive between slices of a chunk
            try:
                if data is None:
                    raise InvalidInput(f"line longer than {MAX_LINE_BYTES} bytes")
                message = parse_line(data)
            except InvalidInput as exc:
                counts["skipped"] += 1
                print(f"serve: line {number} skipped: {exc}", file=sys.stderr, flush=True)
                continue
            if not batcher.has_room:
                await batcher.wait_for_room()
            counts["accepted"] += 1
            batcher.submit(message).add_done_callback(answered)

    async def feed() -> None:
        splitter = LineSplitter()
        while (chunk := await chunks.get()):
            await take(splitter.feed(chunk))
            reader.handled()
        await take(splitter.end())

    try:
        try:
            await check_durability(client, args.allow_volatile_redis)
            await batcher.start()
        except UnsafeRedis as exc:
            print(f"serve: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except _unreachable() as exc:
            print(f"serve: cannot reach Redis at {url}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except _redis_errors() as exc:
            print(f"serve: cannot use Redis at {url}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        batcher.on_progress = report_acks
        print(f"serve: ready as distributed node {batcher.node_id} on Redis at {url}; reading JSON lines on stdin; "
              f"finished batches go to the stream {options.stream!r}", file=sys.stderr, flush=True)
        threading.Thread(target=reader.run, args=(sys.stdin.buffer,), name="serve-stdin", daemon=True).start()
        ending = loop.create_task(feed())
        stopping = loop.create_task(stopped.wait())
        await asyncio.wait({ending, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if ending.done():
            ending.result()  # raises what ended the feed, if anything
        if not stopped.is_set():
            print(f"serve: end of input; {counts['accepted']} messages accepted, {counts['skipped']} lines skipped; "
                  "waiting for the last batches", file=sys.stderr, flush=True)
            draining = loop.create_task(batcher.drain())
            await asyncio.wait({draining, stopping}, return_when=asyncio.FIRST_COMPLETED)
            draining.cancel()
        ending.cancel()
        stopping.cancel()
        report_acks()
        stats = batcher.statistics()
        if broken:
            silence_stdout()
            print(f"serve: output closed ({broken[0]}); stopping", file=sys.stderr)
            return EXIT_FAILED
        if failure:
            print(f"serve: Redis at {url} failed ({failure[0]}); {stats.appended} of {counts['accepted']} messages "
                  "were stored", file=sys.stderr)
            return EXIT_FAILED
        published = stats.published_on_append + stats.published_by_timer + stats.published_by_sweep
        summary = (f"{stats.appended} messages stored; this node published {published} batches "
                   f"({stats.published_on_append} on append, {stats.published_by_timer} by its timers, "
                   f"{stats.published_by_sweep} overdue ones by its sweeper)")
        if stopped.is_set():
            print(f"serve: stopped by a signal; {summary}; open batches stay in Redis for the other nodes",
                  file=sys.stderr)
        else:
            print(f"serve: done; {summary}", file=sys.stderr)
        return EXIT_OK
    finally:
        reader.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await batcher.close()
        await client.aclose()


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError)


def _unreachable() -> tuple[type[BaseException], ...]:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (StoreUnavailable, RedisConnectionError, RedisTimeoutError, OSError)
