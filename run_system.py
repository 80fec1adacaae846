"""The message queue's entry point: a demo of simulated chat traffic, or a long-lived node.

Usage::

    python run_system.py                  # = demo: simulated chat channels, batches printed as they flush
    python run_system.py demo --seed 7 --duration 3
    printf '%s\\n' '{"platform": "slack", "channel_id": "slack:#dev", "user_id": "U1", "user_name": "ann",
                    "text": "hey"}' | python run_system.py serve --window 0.5 | jq .
    python run_system.py serve --base multiprocTCPBase --admin-port 1900
    python run_system.py serve --redis redis://127.0.0.1:6379/0     # queues survive a restart
    python run_system.py serve --redis redis://127.0.0.1:6379/0 --distributed   # one of many nodes; batches
                                                                                # go to a Redis stream

``serve`` reads inbound messages as JSON lines on stdin and writes each finished batch as one JSON line on
stdout, acknowledging it to its channel once written. At end of input it waits until every open batch has
flushed and been written, then exits 0. SIGINT and SIGTERM stop it at once, also with status 0: without
``--redis`` batches still open are discarded; with it they stay in Redis for the next start.

With ``--redis URL`` every channel's open batch, waiting items and item in flight are kept in Redis, and a
node started on the same Redis restores them (printing how many channels it restored on stderr) and delivers
them like any other batch, open batches by their original deadline. Delivery is at least once: a batch that
was being written or not yet acknowledged when a node died is written again by the next one, with the same
``item_id`` and ``attempt`` raised (``attempt`` is 1 for a first delivery); a consumer that must not act twice
deduplicates by ``item_id``. The Redis server must not lose acknowledged writes: without ``appendonly yes``,
or with a ``maxmemory-policy`` other than ``noeviction``, serve refuses to start (exit 1) unless
``--allow-volatile-redis`` is given, and then warns. It also exits 1 when Redis cannot be reached, or when it
lost data an earlier run had stored (nothing is changed then; an operator must look at the server). Run one
node per Redis database at a time: two nodes restoring and writing the same channels would interleave them.

With ``--redis URL --distributed`` the process is a node of distributed mode (no actor system): any number of
nodes share that Redis, each message may go to any node, batching state lives in Redis, and every finished
batch is appended once to a Redis stream (``--stream``, default ``message_queue:inbound``) instead of stdout.
At end of input a node waits until the deadlines it armed have flushed; stopped by a signal or killed, it
leaves its open batches to the other nodes' sweepers. ``--acks`` writes ``{"acked": N}`` lines on stdout as
the first N input messages are stored. See ``message_queue/distributed.py``.

With ``--base multiprocTCPBase`` other processes can enqueue too: the Supervisor is registered under the
global name ``message_queue.supervisor`` on the admin port (see ``examples/external_sender.py``); keep stdin
open while they do (``tail -f /dev/null | python run_system.py serve --base multiprocTCPBase``), since end of
input ends the node. That base binds every network interface and unpickles whatever reaches its ports: anyone
who can connect to the port can run code as this user. Use it only where the port is unreachable from
untrusted hosts.

Exit status: 0 on success (serve: also when stopped by a signal), 1 on failure (demo: a message missing or out
of order; serve: stdout closed, the actor system failed, Redis refused, unreachable or lost data), 2 on a usage
error, 130 when the demo is interrupted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _ensure_dependencies() -> None:
    """On a fresh clone, run with any Python 3.11+: create ``.venv`` next to this file, install the package
    into it (once), and run this script again there."""
    try:
        import msgpack  # noqa: F401
        import thespian  # noqa: F401
    except ImportError:
        pass
    else:
        return
    root = Path(__file__).resolve().parent
    venv = root / ".venv"
    python = venv / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "--quiet", f"{root}[redis]"]
    if Path(sys.prefix).resolve() == venv.resolve():
        raise SystemExit(f"run_system.py: {venv} lacks the dependencies; repair it with: {' '.join(install)}")
    ready = [str(python), "-c", "import msgpack, thespian"]
    if not python.exists() or subprocess.run(ready, capture_output=True).returncode != 0:
        print(f"run_system.py: first run: installing the package into {venv}", file=sys.stderr, flush=True)
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(install, check=True)
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


if __name__ == "__main__":
    _ensure_dependencies()

import argparse  # noqa: E402
import asyncio
import base64
import json
import logging
import queue
import random
import signal
import threading
import time
from collections import Counter
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from types import FrameType
from typing import IO, Any, Callable, Iterable, Iterator, Protocol, Sequence, TypeVar
from urllib.parse import urlsplit, urlunsplit

from thespian.actors import ActorAddress

from actors.driver import STOP, Command, DriverStopped, Inbox, InProcessDriver, Output
from actors.system import SIMPLE_BASE, SUPPORTED_BASES, TCP_BASE, RunningSystem, start_system
from protocol.errors import (
    InvalidInput,
    InvalidSettings,
    MessageQueueError,
    RedisDataLost,
    StoreUnavailable,
    Timeout,
    UnsafeRedis,
)
from protocol.limits import validate_message
from protocol.messages import (
    SUPERVISOR_NAME,
    BatchReady,
    CancelProcessing,
    ChannelConfigured,
    ConfigureChannel,
    Enqueue,
    EnqueueMany,
    GetStatistics,
    ProcessingDone,
    ProcessingStarted,
    StartProcessing,
    Statistics,
)
from protocol.values import BatchSettings, QueuedMessage, payload_messages

log = logging.getLogger("run_system")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # the demo only: it was stopped before it could verify delivery

REPLY_TIMEOUT = 10.0  # seconds to wait for the Supervisor's answer to a command
MAX_LINE_BYTES = 1024 * 1024  # an input line longer than this is rejected unread
_MAX_COALESCED = 256  # messages merged into one EnqueueMany on the TCP base

_Reply = TypeVar("_Reply")


# == nodes: an actor system with this process registered as every channel's processor ===================


class Node(Protocol):
    """An actor system whose outputs (``BatchReady``, ``CancelProcessing``) reach a callback; once started,
    this process is every channel's processor."""

    def start(self) -> None: ...

    def enqueue(self, message: QueuedMessage) -> None: ...

    def tell(self, msg: object, to: ActorAddress | None = None) -> None:
        """Send ``msg`` to the Supervisor, or to ``to`` (a ``BatchReady``'s ``reply_to``)."""
        ...

    def call(self, msg: object) -> Future[object]: ...

    def stop(self, timeout: float = 10.0) -> None: ...

    @property
    def running(self) -> bool: ...

    @property
    def restored(self) -> int:
        """Channels restored from Redis when the node started (0 without persistence)."""
        ...


class InProcessNode(InProcessDriver):
    """The ``simpleSystemBase`` system of an :class:`InProcessDriver`, with this process as processor."""

    def start(self, timeout: float = REPLY_TIMEOUT) -> None:
        """Start the system thread and register as every channel's processor.

        Raises:
            Timeout: if the Supervisor does not confirm the registration.
        """
        super().start(timeout)
        _expect(self.call(StartProcessing()).result(timeout), ProcessingStarted, "StartProcessing")

    @property
    def restored(self) -> int:
        return self._system.restored if self._system is not None else 0


def _expect(reply: object, expected: type[_Reply], command: str) -> _Reply:
    """``reply`` if it is an ``expected``; raises :class:`Timeout` (a missing or wrong answer) otherwise."""
    if not isinstance(reply, expected):
        raise Timeout(f"the Supervisor did not answer {command} with {expected.__name__} (got {reply!r})")
    return reply




class TcpNode:
    """A ``multiprocTCPBase`` system driven from two threads of this process.

    Thespian's ``ActorSystem`` is not thread-safe, so each thread has an endpoint of its own: the sender
    thread sends commands through ``asys.private()`` (merging consecutive enqueues into one ``EnqueueMany``),
    and the listener thread owns the main endpoint, which is registered as every channel's processor.
    """

    def __init__(
        self,
        on_output: Callable[[Output], None],
        settings: BatchSettings,
        *,
        idle_timeout: float,
        admin_port: int | None,
        redis_url: str = "",
        allow_volatile_redis: bool = False,
    ) -> None:
        self._on_output = on_output
        self._settings = settings
        self._idle_timeout = idle_timeout
        self._admin_port = admin_port
        self._redis_url = redis_url
        self._allow_volatile_redis = allow_volatile_redis
        self._restored = 0
        self._inbox: queue.SimpleQueue[Inbox] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._system: RunningSystem | None = None

    @property
    def admin_port(self) -> int:
        """The TCP port of the Thespian admin (once started)."""
        if self._system is None:
            raise RuntimeError("TcpNode.admin_port read before start()")
        return int(self._system.asys.capabilities["Admin Port"])

    @property
    def restored(self) -> int:
        return self._restored

    def start(self) -> None:
        """Start the actor system, register this process as processor and start both threads. Call
        :meth:`stop` even when this raises: processes may have started.

        Raises:
            Timeout: if the Supervisor does not answer.
            UnsafeRedis, RedisDataLost, StoreLocked, StoreUnavailable: as :func:`actors.system.start_system`.
        """
        system = self._system = start_system(
            TCP_BASE,
            self._settings,
            idle_timeout=self._idle_timeout,
            admin_port=self._admin_port,
            redis_url=self._redis_url,
            allow_volatile_redis=self._allow_volatile_redis,
        )
        self._restored = system.restored
        reply = system.asys.ask(system.supervisor, StartProcessing(), REPLY_TIMEOUT)
        _expect(reply, ProcessingStarted, "StartProcessing")
        for target, name in ((self._send_loop, "mq-sender"), (self._listen_loop, "mq-listener")):
            thread = threading.Thread(target=target, args=(system,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def enqueue(self, message: QueuedMessage) -> None:
        self._inbox.put(message)

    def tell(self, msg: object, to: ActorAddress | None = None) -> None:
        self._inbox.put(Command(msg, None, to))

    def call(self, msg: object) -> Future[object]:
        future: Future[object] = Future()
        self._inbox.put(Command(msg, future))
        return future

    @property
    def running(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop both threads and every process of the actor system. Idempotent."""
        self._stopping.set()
        self._inbox.put(STOP)
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()
        system, self._system = self._system, None
        if system is not None:
            system.shutdown(timeout)

    def _send_loop(self, system: RunningSystem) -> None:
        with system.asys.private() as endpoint:
            while True:
                items = _drain(self._inbox)
                for command in _commands(items):
                    if command.future is None:
                        endpoint.tell(system.supervisor if command.to is None else command.to, command.msg)
                    elif command.future.set_running_or_notify_cancel():
                        command.future.set_result(endpoint.ask(system.supervisor, command.msg, REPLY_TIMEOUT))
                if STOP in items:
                    return

    def _listen_loop(self, system: RunningSystem) -> None:
        while not self._stopping.is_set():
            response = system.asys.listen(0.2)
            if isinstance(response, (BatchReady, CancelProcessing)):
                self._on_output(response)
            elif response is not None:
                log.warning("unexpected %s ignored", type(response).__name__)


def _drain(inbox: queue.SimpleQueue[Inbox]) -> list[Inbox]:
    """Block for one item, then take whatever else is already waiting (bounded)."""
    items = [inbox.get()]
    while len(items) < _MAX_COALESCED:
        try:
            items.append(inbox.get_nowait())
        except queue.Empty:
            break
    return items


def _commands(items: Sequence[Inbox]) -> Iterator[Command]:
    """The commands ``items`` stand for, in order, with consecutive messages merged into one."""
    pending: list[QueuedMessage] = []
    for item in items:
        if isinstance(item, QueuedMessage):
            pending.append(item)
            continue
        if pending:
            yield _enqueue_command(pending)
            pending = []
        if isinstance(item, Command):
            yield item
    if pending:
        yield _enqueue_command(pending)


def _enqueue_command(messages: list[QueuedMessage]) -> Command:
    return Command(Enqueue(messages[0]) if len(messages) == 1 else EnqueueMany(tuple(messages)), None)


# == signals and a closed stdout =========================================================================


class Stopped(Exception):
    """SIGINT or SIGTERM arrived; the message is the signal's name."""


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signal.Signals(signum).name)


def _catch_stop_signals() -> None:
    """Turn SIGINT and SIGTERM into :class:`Stopped` in the main thread."""
    signal.signal(signal.SIGINT, _raise_stopped)
    signal.signal(signal.SIGTERM, _raise_stopped)


def _ignore_stop_signals() -> None:
    """While shutting down, a second signal must not abort the clean-up halfway."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail on a closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


@contextmanager
def _signal_handlers_restored() -> Iterator[None]:
    """Put SIGINT's and SIGTERM's handlers back as they were on leaving."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


# == demo ===============================================================================================

_DEMO_CHANNELS = (
    "slack:#general",
    "discord:1234",
    "telegram:-1001234567890",
    "slack:#deploys",
    "discord:5678",
    "telegram:-1009876543210",
)
_PLATFORMS = ("slack", "discord", "telegram")
_USERS = ("ana", "bo", "chen", "dev", "eli", "fay", "gus", "hana", "ivo", "jun")
_FRAGMENTS = (
    "hey", "hi all", "can you", "fix the build?", "the deploy failed again", "one sec", "nvm", "lol",
    "ok so", "here's the log", "wait", "actually", "ping @oncall", "thanks!", "is staging down?",
    "I pushed a fix", "looks green now", "merging", "ugh", "CI is flaky", "which branch?", "main",
    "let me check", "yes", "no", "brb", "ship it", "who owns this?", "any update?", "done",
)


def demo_channels(count: int) -> list[str]:
    """``count`` channel ids: the six named ones first, then numbered rooms across platforms."""
    extra = [f"{_PLATFORMS[i % 3]}:room-{i}" for i in range(len(_DEMO_CHANNELS), count)]
    return [*_DEMO_CHANNELS[:count], *extra]


@dataclass(frozen=True, slots=True)
class Planned:
    """One simulated message and when, in seconds after the start, it is sent."""

    at: float
    message: QueuedMessage


def _demo_message(rng: random.Random, channel: str, user: str, seq: int) -> QueuedMessage:
    platform = channel.split(":", 1)[0]
    return QueuedMessage(platform, channel, f"{platform}-{user}", user, rng.choice(_FRAGMENTS), extra={"seq": seq})


def _plan_bursts(rng: random.Random, channel: str, window: float, duration: float, first: int) -> list[Planned]:
    """Bursts of 1-6 messages (the first one ``first`` long if non-zero), quiet gaps between them."""
    plan: list[Planned] = []
    at = rng.uniform(0.0, window)
    while at < duration:
        user = rng.choice(_USERS)
        size = first or rng.randint(1, 6)
        first = 0
        for _ in range(size):
            plan.append(Planned(at, _demo_message(rng, channel, user, len(plan))))
            at += rng.uniform(0.05, 0.5) * window
        at += rng.uniform(1.3, 3.0) * window
    return plan


def _plan_chatter(rng: random.Random, channel: str, window: float, duration: float) -> list[Planned]:
    """One user who never pauses for a whole window: only max_wait closes the batch."""
    plan: list[Planned] = []
    at = rng.uniform(0.0, window / 2)
    while at < duration:
        plan.append(Planned(at, _demo_message(rng, channel, "chatty-cat", len(plan))))
        at += rng.uniform(0.4, 0.8) * window
    return plan


def plan_traffic(rng: random.Random, channels: Sequence[str], args: argparse.Namespace) -> list[Planned]:
    """Every message of the demo, sorted by send time: the first channel is the chatty one, the second
    opens with a paste longer than the batch cap, the rest send random bursts."""
    plan: list[Planned] = []
    for index, channel in enumerate(channels):
        if index == 0:
            plan += _plan_chatter(rng, channel, args.window, args.duration)
        else:
            paste = args.max_batch_size + 2 if index == 1 else 0
            plan += _plan_bursts(rng, channel, args.window, args.duration, paste)
    return sorted(plan, key=lambda p: p.at)


class DemoProcessor:
    """Prints each batch as it flushes, records what arrived, and acknowledges it."""

    def __init__(self, channel_width: int) -> None:
        self.node: Node | None = None
        self.started = time.monotonic()  # reset when the traffic starts
        self._width = channel_width
        self._changed = threading.Condition()
        self.delivered: dict[str, list[int]] = {}  # channel -> "seq" of each message, in delivery order
        self.reasons: Counter[str] = Counter()
        self.lateness_ms: list[float] = []
        self.output_closed = False  # stdout's reader went away (``| head``): printing stopped

    def header(self) -> str:
        return f"{'time':>7}  {'channel':<{self._width}}  {'n':>2}  {'reason':<8}  {'late':>9}  text"

    def on_output(self, output: Output) -> None:
        if not isinstance(output, BatchReady):
            return  # the demo never cancels
        messages = payload_messages(output.item.payload)
        late_ms = output.lateness * 1000
        self._print(
            f"{time.monotonic() - self.started:6.2f}s  {output.channel_id:<{self._width}}  {len(messages):2d}  "
            f"{output.reason:<8}  {late_ms:6.1f} ms  {' | '.join(m.text for m in messages)}"
        )
        assert self.node is not None
        self.node.tell(ProcessingDone(output.channel_id, output.delivery_id), output.reply_to)
        with self._changed:
            self.delivered.setdefault(output.channel_id, []).extend(int(m.extra["seq"]) for m in messages)
            self.reasons[output.reason] += 1
            self.lateness_ms.append(late_ms)
            self._changed.notify_all()

    def _print(self, line: str) -> None:
        if self.output_closed:
            return
        try:
            print(line, flush=True)
        except BrokenPipeError:
            self.output_closed = True

    def wait_for(self, total: int, timeout: float) -> bool:
        """Wait until ``total`` messages were delivered; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: sum(map(len, self.delivered.values())) >= total, timeout)


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def _send_plan(node: Node, plan: Sequence[Planned], started: float) -> None:
    for planned in plan:
        delay = started + planned.at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        node.enqueue(planned.message)


def _demo_summary(plan: Sequence[Planned], processor: DemoProcessor) -> bool:
    """Print the summary; True when every channel got exactly its messages, in send order."""
    sent: dict[str, list[int]] = {}
    for planned in plan:
        sent.setdefault(planned.message.channel_id, []).append(int(planned.message.extra["seq"]))
    got = processor.delivered
    late = processor.lateness_ms
    by_reason = ", ".join(f"{reason} {count}" for reason, count in sorted(processor.reasons.items()))
    print(f"\nsummary: {len(plan)} messages sent, {sum(map(len, got.values()))} delivered in {len(late)} "
          f"batches ({by_reason})")
    print(f"lateness: p50 {_percentile(late, 0.5):.1f} ms, p99 {_percentile(late, 0.99):.1f} ms, "
          f"max {max(late, default=0.0):.1f} ms")
    wrong = sorted(c for c in sent.keys() | got.keys() if sent.get(c) != got.get(c))
    if wrong:
        print(f"order: FAILED, what was delivered differs from what was sent on {', '.join(wrong)}")
        return False
    print(f"order: OK, all {len(plan)} messages delivered once each, in send order, on {len(sent)} channels")
    return True


def run_demo(args: argparse.Namespace) -> int:
    """Simulate chat traffic on the in-memory base, print batches as they flush, verify delivery order."""
    channels = demo_channels(args.channels)
    plan = plan_traffic(random.Random(args.seed), channels, args)
    processor = DemoProcessor(max(map(len, channels)))
    processor.node = node = InProcessNode(processor.on_output, BatchSettings(args.window, args.max_batch_size))
    print(f"demo: {len(plan)} messages on {len(channels)} channels over {args.duration:g} s (seed {args.seed}); "
          f"window {args.window:g} s, max batch {args.max_batch_size}, max wait {args.max_wait:g} s "
          f"on {channels[0]} only")
    try:
        node.start()
        chatty = BatchSettings(args.window, args.max_batch_size, args.max_wait)
        _expect(node.call(ConfigureChannel(channels[0], chatty)).result(REPLY_TIMEOUT), ChannelConfigured,
                "ConfigureChannel")
        print(processor.header(), flush=True)
        processor.started = time.monotonic()
        _send_plan(node, plan, processor.started)
        if not processor.wait_for(len(plan), args.window + args.max_wait + REPLY_TIMEOUT):
            print("demo: gave up waiting for the last batches", file=sys.stderr)
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        node.stop()
    if processor.output_closed:
        _silence_stdout()
        print("demo: output closed; no summary", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK if _demo_summary(plan, processor) else EXIT_FAILED


# == serve: JSON lines in, JSON lines out ================================================================

_REQUIRED = ("platform", "channel_id", "user_id", "user_name", "text")
_OPTIONAL = ("extra", "queued_at")


def parse_line(data: bytes) -> QueuedMessage:
    """Decode one input line into a checked message.

    Rules: a UTF-8 JSON object with the string fields platform, channel_id, user_id, user_name and text,
    optionally extra (an object) and queued_at (ISO 8601; without a UTC offset it is taken as UTC), and no
    other field; every limit of :func:`protocol.limits.validate_message` holds.

    Raises:
        InvalidInput: naming the first broken rule.
    """
    try:
        record = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"not JSON ({exc.msg} at column {exc.colno})") from exc
    except RecursionError as exc:
        raise InvalidInput("JSON nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise InvalidInput(f"JSON not accepted ({exc})") from exc
    if not isinstance(record, dict):
        raise InvalidInput(f"expected a JSON object, got {_json_type(record)}")
    missing = [name for name in _REQUIRED if name not in record]
    if missing:
        raise InvalidInput(f"missing field(s): {', '.join(missing)}")
    unknown = sorted(set(record) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(unknown)} (put them in extra)")
    for name in _REQUIRED:
        if not isinstance(record[name], str):
            raise InvalidInput(f"{name} must be a string, got {_json_type(record[name])}")
    extra = record.get("extra", {})
    if not isinstance(extra, dict):
        raise InvalidInput(f"extra must be an object, got {_json_type(extra)}")
    fields = {name: record[name] for name in _REQUIRED}
    if "queued_at" in record:
        fields["queued_at"] = _parse_time(record["queued_at"])
    return validate_message(QueuedMessage(**fields, extra=extra))


def _parse_time(value: object) -> datetime:
    if not isinstance(value, str):
        raise InvalidInput(f"queued_at must be an ISO 8601 string, got {_json_type(value)}")
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput(f"queued_at must be an ISO 8601 date-time, got {value[:40]!r}") from exc
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=timezone.utc)


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def read_lines(stream: IO[bytes], limit: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes | None]]:
    """Yield (line number from 1, line) until end of input; the line is None when it exceeds ``limit``
    bytes (the rest of it is skipped unread into memory)."""
    number = 0
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        number += 1
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := stream.readline(limit)) and not rest.endswith(b"\n"):
                pass
            yield number, None
        else:
            yield number, line


def batch_record(ready: BatchReady) -> dict[str, Any]:
    """The JSON object written for one finished batch. ``attempt`` is 1 for a first delivery and more for a
    redelivery after a crash (``--redis``), which keeps the ``item_id``: deduplicate by ``item_id``."""
    return {
        "channel_id": ready.channel_id,
        "item_id": ready.item.item_id,
        "attempt": ready.item.attempt,
        "delivery_id": ready.delivery_id,
        "reason": ready.reason,
        "lateness_ms": round(ready.lateness * 1000, 3),
        "messages": [
            {
                "platform": m.platform,
                "channel_id": m.channel_id,
                "user_id": m.user_id,
                "user_name": m.user_name,
                "text": m.text,
                "queued_at": m.queued_at.isoformat(),
                "extra": m.extra,
            }
            for m in payload_messages(ready.item.payload)
        ],
    }


def _json_default(value: object) -> str:
    """JSON for values only a sender on the TCP base can put in ``extra``."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    return str(value)


class BatchWriter:
    """Writes each finished batch as one JSON line, flushes, then acknowledges it to its channel."""

    def __init__(self, out: IO[bytes]) -> None:
        self.node: Node | None = None
        self._out = out
        self._changed = threading.Condition()
        self.batches = 0
        self.messages = 0
        self.broken: OSError | None = None  # the output was closed: nothing more can be written

    def on_output(self, output: Output) -> None:
        if not isinstance(output, BatchReady):
            return  # a cancel always comes after the batch was written and acknowledged
        if self.broken is not None:
            return
        line = json.dumps(batch_record(output), ensure_ascii=False, default=_json_default) + "\n"
        try:
            self._out.write(line.encode("utf-8"))
            self._out.flush()
        except OSError as exc:
            with self._changed:
                self.broken = exc
                self._changed.notify_all()
            return
        assert self.node is not None
        self.node.tell(ProcessingDone(output.channel_id, output.delivery_id), output.reply_to)
        with self._changed:
            self.batches += 1
            self.messages += len(payload_messages(output.item.payload))
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
    for number, data in lines:
        _check(node, writer)
        if data is not None and not data.strip():
            continue  # an empty line carries nothing
        try:
            if data is None:
                raise InvalidInput(f"line longer than {MAX_LINE_BYTES} bytes")
            node.enqueue(parse_line(data))
            accepted += 1
        except InvalidInput as exc:
            skipped += 1
            print(f"serve: line {number} skipped: {exc}", file=sys.stderr, flush=True)
    return accepted, skipped


def _wait_drained(node: Node, writer: BatchWriter, accepted: int) -> None:
    """Return once no channel holds an open, waiting or in-flight batch.

    Waits first until at least ``accepted`` messages were written (on the TCP base a flooded Supervisor can
    take long to answer anything), then asks the channels, which also covers messages from other senders.
    """
    while writer.messages < accepted:
        writer.wait_for(lambda: writer.messages >= accepted, 1.0)
        _check(node, writer)
    while True:
        seen = writer.batches
        reply = _expect(_await(node.call(GetStatistics()), node, writer), Statistics, "GetStatistics")
        if all(not (s.open_batch_size or s.queued or s.in_flight) for s in reply.channels):
            return
        writer.wait_for(lambda: writer.batches > seen, 1.0)  # the next batch written may be the last
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
    settings = BatchSettings(args.window, args.max_batch_size, args.max_wait)
    redis_url: str = args.redis or ""
    allow_volatile: bool = args.allow_volatile_redis
    node: Node
    if args.base == TCP_BASE:
        node = TcpNode(writer.on_output, settings, idle_timeout=args.idle_timeout, admin_port=args.admin_port,
                       redis_url=redis_url, allow_volatile_redis=allow_volatile)
    else:
        node = InProcessNode(writer.on_output, settings, idle_timeout=args.idle_timeout, redis_url=redis_url,
                             allow_volatile_redis=allow_volatile)
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
    with _signal_handlers_restored():
        return _serve(node, writer, args)


def _serve(node: Node, writer: BatchWriter, args: argparse.Namespace) -> int:
    url = redacted(args.redis or "")
    try:
        node.start()
        # Only now: the TCP base forks its admin while starting, and it must not inherit these handlers.
        _catch_stop_signals()
        _announce(node, args)
        accepted, skipped = _feed(node, writer, read_lines(sys.stdin.buffer))
        print(f"serve: end of input; {accepted} messages accepted, {skipped} lines skipped; waiting for the "
              "last batches", file=sys.stderr, flush=True)
        _wait_drained(node, writer, accepted)
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
        _silence_stdout()
        print(f"serve: {exc}; stopping", file=sys.stderr)
        return EXIT_FAILED
    except (ServeError, MessageQueueError, DriverStopped, TimeoutError) as exc:
        print(f"serve: {exc or type(exc).__name__}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        _ignore_stop_signals()
        node.stop()


# == serve --distributed: JSON lines in, batches to a Redis stream =====================================


class _LineSplitter:
    """Splits chunks of bytes into numbered lines like :func:`read_lines`: a line longer than ``limit`` bytes
    comes out as None, and its bytes are dropped as they arrive."""

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self._limit = limit
        self._partial = bytearray()
        self._overlong = False
        self._number = 0

    def feed(self, chunk: bytes) -> Iterator[tuple[int, bytes | None]]:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            piece = chunk[start:end + 1]
            start = end + 1
            self._number += 1
            if self._overlong or len(self._partial) + len(piece) > self._limit + 1:
                self._overlong = False
                self._partial.clear()
                yield self._number, None
            elif self._partial:
                self._partial += piece
                line = bytes(self._partial)
                self._partial.clear()
                yield self._number, line
            else:
                yield self._number, piece
        rest = chunk[start:]
        if self._overlong:
            return
        if len(self._partial) + len(rest) > self._limit:
            self._overlong = True
            self._partial.clear()
        else:
            self._partial += rest

    def end(self) -> Iterator[tuple[int, bytes | None]]:
        """The last line, if the input did not end with a newline."""
        if self._overlong or self._partial:
            self._number += 1
            yield self._number, None if self._overlong else bytes(self._partial)
        self._overlong = False
        self._partial.clear()


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
    with _signal_handlers_restored():
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
            if data is not None and not data.strip():
                continue
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
        splitter = _LineSplitter()
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
            _silence_stdout()
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


# == command line ========================================================================================


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _batch_options(parser: argparse.ArgumentParser, window: float, max_batch_size: int) -> None:
    parser.add_argument("--window", type=float, default=window, metavar="SECONDS",
                        help=f"quiet time that closes a batch; it restarts with each message (default {window:g})")
    parser.add_argument("--max-batch-size", type=int, default=max_batch_size, metavar="N",
                        help=f"a batch closes at once when it holds N messages (default {max_batch_size})")


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``demo`` (the default) and ``serve``; the top-level help shows both in full."""
    parser = argparse.ArgumentParser(
        prog="run_system.py",
        description="Per-channel, ordered, batched delivery of chat messages, as Thespian actors. "
        "Without a command, runs the demo.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="{demo,serve}")
    demo = commands.add_parser("demo", help="simulated chat traffic on the in-memory base (the default)",
                               description="Simulate several chat channels on simpleSystemBase, print each "
                               "batch as it flushes, then a summary that checks every channel's delivery "
                               "order. Exit status 0 when all messages arrived in order, 1 if not, 130 when "
                               "interrupted.")
    demo.add_argument("--seed", type=int, default=1, help="seed of the simulated traffic (default 1)")
    demo.add_argument("--duration", type=_positive_float, default=4.0, metavar="SECONDS",
                      help="how long the simulated users type; the last batches flush after (default 4)")
    demo.add_argument("--channels", type=int, default=6, metavar="N",
                      help="number of simulated channels, at least 1 (default 6)")
    _batch_options(demo, window=0.8, max_batch_size=5)
    demo.add_argument("--max-wait", type=_positive_float, default=1.2, metavar="SECONDS",
                      help="age cap of a batch on the first (chatty) channel; the others have none (default 1.2)")
    defaults = BatchSettings()
    serve = commands.add_parser("serve", help="a long-lived node: JSON lines on stdin, batches on stdout",
                                description="Read messages as JSON lines on stdin (fields platform, "
                                "channel_id, user_id, user_name, text; optional extra (object) and queued_at "
                                "(ISO 8601)); write each finished batch as one JSON line on stdout (channel_id, "
                                "item_id, attempt, delivery_id, reason, lateness_ms, messages) and acknowledge "
                                "it once written. attempt is 1, or more when the batch is written again after a "
                                "crash (--redis; same item_id). Bad lines are reported on stderr with their "
                                "number and skipped. At end of input, waits for every open batch to flush, then "
                                "exits 0. SIGINT and SIGTERM stop at once with status 0; batches still open are "
                                "discarded, or kept for the next start with --redis.")
    serve.add_argument("--base", choices=SUPPORTED_BASES, default=SIMPLE_BASE,
                       help=f"Thespian system base (default {SIMPLE_BASE}); {TCP_BASE} runs each actor in a "
                       "process of its own and lets other processes enqueue through the admin port, but binds "
                       "every interface and unpickles whatever reaches its ports")
    _batch_options(serve, window=defaults.window, max_batch_size=defaults.max_batch_size)
    serve.add_argument("--max-wait", type=_positive_float, default=None, metavar="SECONDS",
                       help="a batch closes when its first message is this old, however busy (default: no cap)")
    serve.add_argument("--admin-port", type=int, default=None, metavar="PORT",
                       help=f"TCP port of the Thespian admin, with --base {TCP_BASE} only (default: a free port, "
                       "printed on stderr)")
    serve.add_argument("--idle-timeout", type=_positive_float, default=60.0, metavar="SECONDS",
                       help="a channel with no work for this long is stopped; it comes back on its next "
                       "message (default 60)")
    serve.add_argument("--redis", default=None, metavar="URL",
                       help="persist every channel's open batch, waiting batches and batch in flight to this "
                       "Redis (redis://[user:password@]host:port/db, rediss://... for TLS, unix:///path?db=N); "
                       "a node started on the same Redis restores and delivers them, a batch in flight at a "
                       "crash again with the same item_id and attempt > 1 (deduplicate by item_id). The "
                       "server must have appendonly yes and maxmemory-policy noeviction, or serve refuses to "
                       "start. One node per Redis database at a time (default: in memory only)")
    serve.add_argument("--allow-volatile-redis", action="store_true",
                       help="with --redis: accept a server that may lose acknowledged messages (no AOF, or an "
                       "evicting maxmemory-policy), with a warning on stderr")
    dist = serve.add_argument_group(
        "distributed mode", "With --redis URL --distributed, any number of serve processes share that Redis as "
        "nodes: batching state lives in Redis, each message may go to any node, and every finished batch is "
        "appended once to a Redis stream (not written to stdout). At end of input a node waits until the "
        "deadlines it armed have flushed; a node that dies leaves its open batches to the others.")
    dist.add_argument("--distributed", action="store_true",
                      help="run as a node of distributed mode (needs --redis)")
    dist.add_argument("--stream", default="message_queue:inbound", metavar="KEY",
                      help="the stream finished batches are appended to (default message_queue:inbound)")
    dist.add_argument("--stream-maxlen", type=int, default=0, metavar="N",
                      help="trim the stream to about N entries (XADD MAXLEN ~), oldest first, read or not; "
                      "0 keeps every entry (default 0)")
    dist.add_argument("--sweep-interval", type=_positive_float, default=0.2, metavar="SECONDS",
                      help="how often the node looks for overdue batches of dead nodes (default 0.2)")
    dist.add_argument("--grace", type=float, default=0.1, metavar="SECONDS",
                      help="how long past its deadline a batch must be before a sweeper takes it (default 0.1)")
    dist.add_argument("--node-id", default=None, metavar="ID",
                      help="the node's name in published entries, 1-64 of A-Z a-z 0-9 . _ - "
                      "(default host-pid-random)")
    dist.add_argument("--acks", action="store_true",
                      help='write {"acked": N} on stdout whenever the number of input messages stored in Redis '
                      "grows (the first N accepted lines, in order)")
    parser.epilog = "\n".join(f"{name}:\n{sub.format_help()}" for name, sub in (("demo", demo), ("serve", serve)))
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` (without the program name); no command means ``demo``. Exits 2 on a usage error."""
    args = list(argv)
    if not args or args[0] not in ("demo", "serve", "-h", "--help"):
        args.insert(0, "demo")
    parser = build_parser()
    namespace = parser.parse_args(args)
    try:
        BatchSettings(namespace.window, namespace.max_batch_size, namespace.max_wait)
    except InvalidSettings as exc:
        parser.error(str(exc))
    if namespace.command == "demo" and namespace.channels < 1:
        parser.error(f"--channels must be >= 1, got {namespace.channels}")
    if namespace.command == "serve" and namespace.admin_port is not None and namespace.base != TCP_BASE:
        parser.error(f"--admin-port needs --base {TCP_BASE}")
    if namespace.command == "serve" and namespace.redis is not None:
        _check_redis_url(parser, namespace.redis)
    if namespace.command == "serve" and namespace.allow_volatile_redis and namespace.redis is None:
        parser.error("--allow-volatile-redis needs --redis")
    if namespace.command == "serve":
        _check_distributed(parser, namespace)
    return namespace


def _check_distributed(parser: argparse.ArgumentParser, namespace: argparse.Namespace) -> None:
    defaults = parser.parse_args(["serve"])
    tuned = [f"--{name.replace('_', '-')}" for name in ("stream", "stream_maxlen", "sweep_interval", "grace",
                                                         "node_id", "acks")
             if getattr(namespace, name) != getattr(defaults, name)]
    if not namespace.distributed:
        if tuned:
            parser.error(f"{', '.join(tuned)} need(s) --distributed")
        return
    if namespace.redis is None:
        parser.error("--distributed needs --redis URL")
    if namespace.base != SIMPLE_BASE or namespace.admin_port is not None:
        parser.error("--distributed runs no actor system: --base and --admin-port do not apply")
    if not namespace.stream:
        parser.error("--stream must not be empty")
    if namespace.stream_maxlen < 0:
        parser.error(f"--stream-maxlen must be >= 0, got {namespace.stream_maxlen}")
    if not namespace.grace >= 0:
        parser.error(f"--grace must be >= 0, got {namespace.grace}")
    if namespace.node_id is not None:
        try:
            from protocol.keys import dist_node_key

            dist_node_key(namespace.node_id)
        except ValueError as exc:
            parser.error(f"--node-id: {exc}")


def _check_redis_url(parser: argparse.ArgumentParser, url: str) -> None:
    try:
        from redis.connection import parse_url
    except ImportError:
        parser.error("--redis needs the redis package: pip install '.[redis]'")
    try:
        parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        parser.error(f"--redis {redacted(url)}: {exc}")


class _ReportedByServe(logging.Filter):
    """Drops the actors' log records of what serve reports on stderr in its own words (a refused Redis, an
    accepted volatile one), so each is said once. Installed before the actor system starts: the TCP base's
    processes inherit it."""

    _SAID: tuple[tuple[str, str], ...] = (
        ("actors.supervisor", "persistence refused"),
        ("actors.store", "accepted a Redis that may lose data"),
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.name == name and str(record.msg).startswith(start) for name, start in self._SAID)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in ``argv`` (default: the process's arguments) and return the exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_ReportedByServe())
    try:
        if args.command == "serve":
            return run_serve_distributed(args) if args.distributed else run_serve(args)
        return run_demo(args)
    except BrokenPipeError:  # stdout's reader went away, e.g. ``| head``
        _silence_stdout()
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
