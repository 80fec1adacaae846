"""The demo: simulated chat traffic on the in-memory base, each batch printed as it flushes, and a summary
that checks every message arrived once and in send order."""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from actors.driver import Output
from protocol.messages import BatchReady, ChannelConfigured, ConfigureChannel, ProcessingDone
from protocol.values import BatchSettings, QueuedMessage, payload_messages
from service.nodes import REPLY_TIMEOUT, InProcessNode, Node, expect
from service.process import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, silence_stdout

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
        expect(node.call(ConfigureChannel(channels[0], chatty)).result(REPLY_TIMEOUT), ChannelConfigured,
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
        silence_stdout()
        print("demo: output closed; no summary", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK if _demo_summary(plan, processor) else EXIT_FAILED
