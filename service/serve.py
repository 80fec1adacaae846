"""``serve`` on an actor system: JSON lines from stdin enqueued into a node, each finished batch written to
stdout as one JSON line and acknowledged once written, until end of input or a signal."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import math
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

from actors.driver import DriverStopped, Output
from actors.system import SIMPLE_BASE, TCP_BASE
from protocol.errors import InvalidInput, MessageQueueError, RedisDataLost, StoreUnavailable, UnsafeRedis
from protocol.messages import (
    SUPERVISOR_NAME,
    BatchFlushed,
    BatchReady,
    CancelProcessing,
    Edit,
    Edited,
    FlushBatch,
    GetStatistics,
    ProcessingDone,
    Rejected,
    Retracted,
    Statistics,
)
from protocol.values import BatchSettings, QueuedMessage, payload_messages
from service.lines import MAX_LINE_BYTES, channel_of, parse_command, read_lines
from service.logs import report
from service.nodes import InProcessNode, Node, TcpNode, expect
from service.process import (
    EXIT_FAILED,
    EXIT_OK,
    Stopped,
    catch_stop_signals,
    ignore_stop_signals,
    signal_handlers_restored,
    silence_stdout,
)

if TYPE_CHECKING:
    from message_queue.metrics import QueueMetrics
    from service.control import ControlServer
    from service.ops_http import OpsServer

def batch_record(ready: BatchReady) -> dict[str, Any]:
    """The JSON object written for one finished batch. ``attempt`` is 1 for a first delivery and more for a
    redelivery after a crash (``--redis``), which keeps the ``item_id``: deduplicate by ``item_id``.

    Every value in it is plain JSON: any value that could not be written as strict JSON (possible only for
    messages that never passed the checks, such as ones stored by an older version) is converted by
    :func:`_plain`, so a record is always written. ``interrupted`` is true when the batch begins with the
    messages of a batch whose processing a newer message interrupted (busy policy ``interrupt``)."""
    return {
        "channel_id": _plain(ready.channel_id),
        "item_id": _plain(ready.item.item_id),
        "attempt": ready.item.attempt,
        "delivery_id": ready.delivery_id,
        "reason": _plain(ready.reason),
        "lateness_ms": _plain(round(ready.lateness * 1000, 3)),
        "interrupted": ready.item.interrupted is True,
        "messages": [
            {
                "platform": _plain(m.platform),
                "channel_id": _plain(m.channel_id),
                "user_id": _plain(m.user_id),
                "user_name": _plain(m.user_name),
                "text": _plain(m.text),
                "queued_at": _plain(m.queued_at),
                "extra": _plain(m.extra),
                "message_id": _plain(m.message_id),
            }
            for m in payload_messages(ready.item.payload)
        ],
    }


_MAX_PLAIN_DEPTH = 16  # deeper than any checked extra (4): only a cycle or unchecked data goes further


def _plain(value: object, depth: int = 0) -> Any:
    """``value`` as strict JSON can hold it, whatever it is: str, bool, None and ints as they are; finite
    floats as they are, NaN and ±Infinity as null; dicts (keys as strings), lists and tuples converted item by
    item; bytes in base64; datetimes in ISO 8601; anything else as its ``str()``. Never raises."""
    kind = type(value)
    if kind is str or kind is bool or kind is int or value is None:
        return value
    if kind is float:
        return value if math.isfinite(value) else None  # type: ignore[arg-type]
    if depth >= _MAX_PLAIN_DEPTH:
        return None
    try:
        if kind is dict:
            return {_key(k): _plain(v, depth + 1) for k, v in value.items()}  # type: ignore[attr-defined]
        if kind is list or kind is tuple:
            return [_plain(v, depth + 1) for v in value]  # type: ignore[attr-defined]
        if isinstance(value, (bytes, bytearray)):
            return base64.b64encode(value).decode("ascii")
        if isinstance(value, datetime):
            return datetime.isoformat(value)
        if isinstance(value, str):  # a str subclass (a str enum): its plain string
            return str.__str__(value)
        return str(value)
    except Exception:  # a value's own code (str, a tzinfo, a container's iteration) failed: say what it was
        return f"<{kind.__name__}>"


def _key(key: object) -> str:
    plain = _plain(key, _MAX_PLAIN_DEPTH - 1)
    return plain if isinstance(plain, str) else json.dumps(plain)


def record_line(ready: BatchReady) -> bytes:
    """One line of strict JSON (no NaN or Infinity; valid UTF-8) for ``ready``, newline included."""
    line = json.dumps(batch_record(ready), ensure_ascii=False, allow_nan=False) + "\n"
    try:
        return line.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, possible only in unchecked text: each becomes U+FFFD
        return line.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


class BatchWriter:
    """Writes each finished batch as one JSON line, flushes, then acknowledges it to its channel."""

    def __init__(self, out: IO[bytes]) -> None:
        self.node: Node | None = None
        self._out = out
        self._writing = threading.Lock()  # batches and command results come from two threads
        self._changed = threading.Condition()
        self.batches = 0
        self.messages = 0
        self.broken: OSError | None = None  # the output was closed: nothing more can be written
        self.metrics: QueueMetrics | None = None
        self.accepted = 0  # input messages enqueued
        self.lateness: deque[float] = deque(maxlen=1000)  # of the last batches written (seconds)

    def on_redis_writes(self, seconds: tuple[float, ...]) -> None:
        """The persistence actor reported how long its writes took on Redis."""
        metrics = self.metrics
        if metrics is not None:
            for value in seconds:
                metrics.redis_written(value)

    def on_output(self, output: Output) -> None:
        metrics = self.metrics
        if not isinstance(output, BatchReady):
            if metrics is not None and isinstance(output, CancelProcessing):
                metrics.cancelled()
            return  # a cancel always comes after the batch was written and acknowledged
        if self.broken is not None:
            return
        if metrics is not None:
            metrics.delivered(output.item, output.reason, output.lateness)
            started = time.perf_counter()
        line = record_line(output)
        try:
            with self._writing:
                self._out.write(line)
                self._out.flush()
        except OSError as exc:
            report(f"serve: could not write the batch of channel {output.channel_id!r} (delivery "
                   f"{output.delivery_id}, attempt {output.item.attempt}): {exc}", logging.ERROR,
                   channel=output.channel_id, item_id=output.item.item_id, delivery_id=output.delivery_id,
                   attempt=output.item.attempt)
            with self._changed:
                self.broken = exc
                self._changed.notify_all()
            return
        assert self.node is not None
        self.node.tell(ProcessingDone(output.channel_id, output.delivery_id), output.reply_to)
        if metrics is not None:
            metrics.processed(time.perf_counter() - started)
        self.lateness.append(output.lateness)
        with self._changed:
            self.batches += 1
            self.messages += len(payload_messages(output.item.payload))
            self._changed.notify_all()

    def counters(self) -> dict[str, Any]:
        """Messages enqueued and delivered so far, and the p99 lateness of the last 1,000 batches (ms)."""
        recent = sorted(self.lateness)
        p99 = recent[min(len(recent) - 1, int(len(recent) * 0.99))] * 1000 if recent else None
        return {"enqueued": self.accepted, "delivered": self.messages, "lateness_p99_ms": p99}
    def write_result(self, record: dict[str, Any]) -> None:
        """Write the outcome of a command line (edit, retract) as one JSON line; it has an ``op`` field, which
        batch records have not."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            with self._writing:
                self._out.write(line)
                self._out.flush()
        except OSError as exc:
            with self._changed:
                self.broken = exc
                self._changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until ``predicate()`` holds after a batch was written, the output broke, or ``timeout`` passed."""
        with self._changed:
            self._changed.wait_for(lambda: predicate() or self.broken is not None, timeout)


class ServeError(Exception):
    """serve cannot go on; the message says why."""


class OutputClosed(ServeError):
    """The reader of stdout went away: nothing more can be written."""


def _check(node: Node, writer: BatchWriter) -> None:
    if writer.broken is not None:
        raise OutputClosed(f"output closed ({writer.broken})")
    if not node.running:
        raise ServeError("the actor system stopped unexpectedly")


def _feed(node: Node, writer: BatchWriter, lines: Iterator[tuple[int, bytes | None]]) -> tuple[int, int]:
    """Enqueue every good line; report each bad one on stderr. Returns (accepted, skipped)."""
    accepted = skipped = 0
    metrics = writer.metrics
    for number, data in lines:
        _check(node, writer)
        channel: str | None = None
        try:
            if data is None:
                raise InvalidInput(f"line longer than {MAX_LINE_BYTES} bytes")
            command = parse_command(data)
            channel = command.channel_id
            if isinstance(command, QueuedMessage):
                node.enqueue(command)
                accepted += 1
                writer.accepted = accepted
                if metrics is not None:
                    metrics.accepted(1)
                continue
            reply = _await(node.call(command), node, writer)
            if isinstance(reply, Rejected):
                raise InvalidInput(reply.reason)
            if isinstance(command, Edit):
                edited = expect(reply, Edited, "Edit")
                writer.write_result({"op": "edit", "channel_id": edited.channel_id,
                                     "message_id": edited.message_id, "edited": edited.edited})
            else:
                retracted = expect(reply, Retracted, "Retract")
                writer.write_result({"op": "retract", "channel_id": retracted.channel_id,
                                     "message_id": retracted.message_id, "retracted": retracted.retracted})
        except InvalidInput as exc:
            skipped += 1
            if metrics is not None:
                metrics.rejected()
            report(f"serve: line {number} skipped: {exc}", line=number, channel=channel or channel_of(data))
    return accepted, skipped


def _wait_drained(
    node: Node, writer: BatchWriter, accepted: int, window: float, controlled: bool = False
) -> None:
    """Return once no channel that can deliver holds an open, waiting or in-flight batch.

    Waits first until at least ``accepted`` messages were written, or none was for a second (on the TCP base
    a flooded Supervisor can take long to answer anything; duplicates, retracted messages and those of a
    stopped channel never come out), then asks the channels, which also covers messages from other senders.
    A ``controlled`` node (``--control``) skips the first wait: an admin may have cleared messages, which are
    then never written. A paused channel holds its batches until it is resumed. Two things another process
    can do would hold the end forever, so they are dealt with: a channel whose processor was stopped
    (``StopChannel``) is not waited for, and what it holds is reported on stderr; an open batch whose
    deadline was suspended (``HoldBatch``) is flushed once nothing was written for a window and a second.
    """
    while writer.messages < accepted and not controlled:
        written = writer.messages
        writer.wait_for(lambda: writer.messages >= accepted, 1.0)
        _check(node, writer)
        if writer.messages == written:
            break  # nothing written for a second: ask the channels
    quiet_since = time.monotonic()
    flushed: set[str] = set()
    while True:
        seen = writer.batches
        reply = expect(_await(node.call(GetStatistics()), node, writer), Statistics, "GetStatistics")
        busy = [s for s in reply.channels if s.open_batch_size or s.queued or s.in_flight]
        if all(not s.has_processor for s in busy):
            if busy:
                waiting, opened = sum(s.queued for s in busy), sum(s.open_batch_size for s in busy)
                print(f"serve: {waiting} waiting items and {opened} messages of open batches on {len(busy)} "
                      "channels were not written: their processor was stopped "
                      f"({', '.join(repr(s.channel_id) for s in busy[:10])})", file=sys.stderr)
            return
        if time.monotonic() - quiet_since > window + 1.0:
            for s in busy:
                if s.has_processor and s.open_batch_size and s.channel_id not in flushed:
                    flushed.add(s.channel_id)
                    expect(_await(node.call(FlushBatch(s.channel_id)), node, writer), BatchFlushed, "FlushBatch")
        writer.wait_for(lambda: writer.batches > seen, 1.0)  # the next batch written may be the last
        if writer.batches > seen:
            quiet_since = time.monotonic()
        _check(node, writer)


def _await(future: Future[object], node: Node, writer: BatchWriter) -> object:
    """The result of a command sent to a busy node: it may queue behind many others, so there is no
    deadline here (the node bounds the wait for the reply itself), only checks that the node still runs."""
    while True:
        try:
            return future.result(1.0)
        except TimeoutError:
            _check(node, writer)


def _make_node(args: argparse.Namespace, writer: BatchWriter) -> Node:
    settings = channel_settings(args)
    redis_url: str = args.redis or ""
    allow_volatile: bool = args.allow_volatile_redis
    node: Node
    if args.base == TCP_BASE:
        node = TcpNode(writer.on_output, settings, idle_timeout=args.idle_timeout, admin_port=args.admin_port,
                       redis_url=redis_url, allow_volatile_redis=allow_volatile,
                       on_redis_writes=writer.on_redis_writes if args.metrics_port is not None else None,
                       config_ttl=args.config_ttl)
    else:
        node = InProcessNode(writer.on_output, settings, idle_timeout=args.idle_timeout, redis_url=redis_url,
                             allow_volatile_redis=allow_volatile, config_ttl=args.config_ttl)
        if args.metrics_port is not None:
            node.on_redis_write = lambda seconds: writer.on_redis_writes((seconds,))
    writer.node = node
    return node


def redacted(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        return "<an invalid URL>"


def _announce(node: Node, args: argparse.Namespace) -> None:
    if args.redis:
        if args.allow_volatile_redis:
            _warn_if_volatile(args.redis)
        stored = f"persisting to Redis at {redacted(args.redis)}"
        if node.restored:
            plural = "s" if node.restored != 1 else ""
            print(f"serve: restored {node.restored} channel{plural} from Redis; their stored batches are "
                  "delivered in order, ahead of new messages for the same channels", file=sys.stderr)
    else:
        stored = "in memory only"
    if not isinstance(node, TcpNode):
        print(f"serve: ready on {SIMPLE_BASE}, {stored}; reading JSON lines on stdin", file=sys.stderr,
              flush=True)
        return
    port = node.admin_port
    print(f"serve: ready on {TCP_BASE}, {stored}; reading JSON lines on stdin; the Supervisor is reachable by "
          f"global name {SUPERVISOR_NAME!r} on admin port {port}", file=sys.stderr)
    print(f"serve: WARNING: {TCP_BASE} binds every network interface and unpickles whatever reaches port "
          f"{port}: anyone who can connect to it can run code as this user. Keep the port unreachable from "
          "untrusted hosts (firewall, private network).", file=sys.stderr, flush=True)


def _warn_if_volatile(url: str) -> None:
    """Warn on stderr that the Redis at ``url`` may lose acknowledged data (``--allow-volatile-redis``)."""
    from actors.store import RedisStore  # the redis extra: only with --redis

    store = RedisStore.from_url(url)
    try:
        problems = store.durability_problems()
    except Exception as exc:  # the node runs already: a failed check only loses the warning's detail
        problems = [f"could not check its persistence settings ({exc})"]
    finally:
        store.close()
    if problems:
        print(f"serve: WARNING: Redis at {redacted(url)} may lose acknowledged messages (accepted with "
              f"--allow-volatile-redis): {'; '.join(problems)}", file=sys.stderr, flush=True)


def run_serve(args: argparse.Namespace) -> int:
    """Batch JSON-line messages from stdin into JSON-line batches on stdout until end of input or a signal."""
    writer = BatchWriter(sys.stdout.buffer)
    node = _make_node(args, writer)
    with signal_handlers_restored():
        return _serve(node, writer, args)


HEALTH_TIMEOUT = 2.0  # seconds the actors have to answer a health check or a scrape


def _start_ops(node: Node, writer: BatchWriter, args: argparse.Namespace) -> OpsServer | None:
    """With ``--metrics-port``: register the metrics, feed them from ``writer`` and serve /metrics and
    /healthz. Raises OSError when the address cannot be bound."""
    if args.metrics_port is None:
        return None
    from prometheus_client import CollectorRegistry

    from message_queue.metrics import QueueMetrics
    from service.ops_http import OpsServer, lease_problem

    registry = CollectorRegistry()
    metrics = writer.metrics = QueueMetrics(registry)

    def snapshot() -> Statistics | str:
        try:
            reply = node.call(GetStatistics()).result(HEALTH_TIMEOUT)
        except (TimeoutError, DriverStopped) as exc:
            return f"the actors did not answer within {HEALTH_TIMEOUT:g} s ({type(exc).__name__})"
        return reply if isinstance(reply, Statistics) else f"the actors answered {type(reply).__name__}"

    def refresh() -> None:
        reply = snapshot()
        if isinstance(reply, Statistics):
            metrics.observe_statistics(reply.channels)

    def health() -> str | None:
        if not node.running:
            return "the actor system stopped"
        reply = snapshot()
        if isinstance(reply, str):
            return reply
        return lease_problem(args.redis, HEALTH_TIMEOUT) if args.redis else None

    server = OpsServer(args.metrics_host, args.metrics_port, registry, health, refresh)
    try:
        server.start()
    except OSError as exc:
        raise ServeError(f"cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc}") from exc
    print(f"serve: metrics on http://{args.metrics_host}:{server.port}/metrics, health on /healthz",
          file=sys.stderr, flush=True)
    return server


def _start_control(node: Node, writer: BatchWriter, args: argparse.Namespace) -> ControlServer | None:
    """With ``--control PATH``: answer admin commands on a Unix socket at PATH (mode 0600)."""
    if args.control is None:
        return None
    from service.control import ControlError, ControlServer, Executor

    server = ControlServer(args.control, Executor(node, counters=writer.counters).execute)
    try:
        server.start()
    except (OSError, ControlError) as exc:
        raise ServeError(f"cannot listen for admin commands on {args.control}: {exc}") from exc
    print(f"serve: admin commands on {args.control} (run_system.py admin --control {args.control} ...)",
          file=sys.stderr, flush=True)
    return server


def channel_settings(args: argparse.Namespace) -> BatchSettings:
    """The settings serve's flags give every channel.

    Raises:
        InvalidSettings: naming the setting and the value.
    """
    return BatchSettings(
        args.window,
        args.max_batch_size,
        args.max_wait,
        busy_policy=args.busy_policy,
        split_on_author=args.split_on_author,
        dedupe_ttl=args.dedupe_ttl,
        max_attempts=args.max_attempts,
        retry_backoff=args.retry_backoff,
        processing_timeout=args.processing_timeout,
        max_queued=args.max_queued,
        overflow=args.overflow,
        max_age=args.max_age,
    )


def _serve(node: Node, writer: BatchWriter, args: argparse.Namespace) -> int:
    url = redacted(args.redis or "")
    ops: OpsServer | None = None
    control: ControlServer | None = None
    try:
        node.start()
        # Only now: the TCP base forks its admin while starting, and it must not inherit these handlers.
        catch_stop_signals()
        ops = _start_ops(node, writer, args)
        control = _start_control(node, writer, args)
        _announce(node, args)
        accepted, skipped = _feed(node, writer, read_lines(sys.stdin.buffer))
        print(f"serve: end of input; {accepted} messages accepted, {skipped} lines skipped; waiting for the "
              "last batches", file=sys.stderr, flush=True)
        _wait_drained(node, writer, accepted, args.window, controlled=control is not None)
        print(f"serve: done; {writer.messages} messages written in {writer.batches} batches", file=sys.stderr)
        return EXIT_OK
    except (Stopped, KeyboardInterrupt) as stop:
        name = str(stop) or signal.SIGINT.name
        kept = "kept in Redis for the next start" if args.redis else "discarded"
        print(f"serve: stopped by {name}; batches still open or waiting were {kept}", file=sys.stderr)
        return EXIT_OK
    except UnsafeRedis as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except StoreUnavailable as exc:
        print(f"serve: cannot reach Redis at {url}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except RedisDataLost as exc:
        print(f"serve: refusing to start: Redis at {url} lost data stored by an earlier run ({exc}); nothing "
              "was changed: check the server (restarted without its append-only file? flushed? failed over to "
              "an empty replica?)", file=sys.stderr)
        return EXIT_FAILED
    except OutputClosed as exc:
        silence_stdout()
        print(f"serve: {exc}; stopping", file=sys.stderr)
        return EXIT_FAILED
    except (ServeError, MessageQueueError, DriverStopped, TimeoutError) as exc:
        print(f"serve: {exc or type(exc).__name__}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        ignore_stop_signals()
        if ops is not None:
            ops.stop()
        if control is not None:
            control.stop()
        node.stop()
