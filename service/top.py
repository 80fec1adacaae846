"""``run_system.py top``: a live view of a node, refreshed every second: the busiest channels, enqueue and
delivery rates, lateness, dead letters.

Reads the same sources as ``admin`` (:mod:`service.admin`): a running node's control socket (``--control``),
or the state a persisting node stores in Redis (``--redis``; rates need the control socket), with the channels
of distributed mode that hold an open batch (their deadline and batches published as two more columns). On a terminal it
draws with ``rich`` (Live + Table) and quits on ``q`` or Ctrl-C; when stdout is not a terminal it prints the
same table as plain text once per refresh (``--iterations`` bounds how many).
"""

from __future__ import annotations

import argparse
import io
import select
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from rich.console import Console
from rich.table import Table

from service.admin import AdminError, redis_command
from service.control import NoNode, request
from service.process import EXIT_FAILED, EXIT_OK


@dataclass(frozen=True)
class Snapshot:
    """What the view shows at one moment: channel rows (as ``admin channels`` gives them), the node's
    message counters (None where unknown) and when it was taken (monotonic seconds)."""

    at: float
    channels: tuple[dict[str, Any], ...]
    total_channels: int
    enqueued: int | None = None
    delivered: int | None = None
    lateness_p99_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def rate(now: Snapshot, before: Snapshot | None, name: str) -> float | None:
    """Per-second rate of counter ``name`` between two snapshots (None when unknown)."""
    if before is None:
        return None
    a, b = getattr(before, name), getattr(now, name)
    if a is None or b is None or now.at <= before.at:
        return None
    return float(max(0, b - a) / (now.at - before.at))


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render(now: Snapshot, before: Snapshot | None, source: str) -> Table:
    """The view of ``now`` (rates against ``before``) as a rich Table."""
    enq, dlv = rate(now, before, "enqueued"), rate(now, before, "delivered")
    dead = sum(int(r.get("dead_letters") or 0) for r in now.channels)
    caption = (f"enqueued {_num(enq)}/s  delivered {_num(dlv)}/s  lateness p99 {_num(now.lateness_p99_ms)} ms  "
               f"dead letters {dead}  channels {now.total_channels}")
    table = Table(title=f"message_queue top — {source}", caption=caption, caption_justify="left")
    for name, justify in (("channel", "left"), ("waiting", "right"), ("open", "right"), ("in flight", "center"),
                          ("attempt", "right"), ("oldest (s)", "right"), ("dead", "right"), ("paused", "center")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    distributed = any(r.get("mode") == "distributed" for r in now.channels)
    if distributed:
        for name in ("due (s)", "published"):
            table.add_column(name, justify="right")
    for r in now.channels:
        cells = [
            str(r["channel"]), str(r["waiting"]), str(r["open_batch_size"]), "yes" if r["in_flight"] else "",
            "-" if r.get("attempt") is None else str(r["attempt"]),
            "-" if r.get("oldest_age_s") is None else f"{r['oldest_age_s']:.1f}",
            str(r.get("dead_letters") or 0), "yes" if r.get("paused") else "",
        ]
        if distributed:
            cells += ["-" if r.get("deadline_in_s") is None else f"{r['deadline_in_s']:.1f}",
                      "-" if r.get("batches_published") is None else str(r["batches_published"])]
        table.add_row(*cells)
    return table


def render_text(now: Snapshot, before: Snapshot | None, source: str, width: int = 100) -> str:
    """The view as plain text (what a non-terminal stdout gets)."""
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    console.print(render(now, before, source))
    return console.export_text()


def take(args: argparse.Namespace) -> Snapshot:
    """A snapshot from the node (``--control``) or from Redis (``--redis``).

    Raises:
        NoNode, AdminError: when the source does not answer.
    """
    if args.control is not None:
        answer = request(args.control, {"command": "channels", "limit": args.limit, "counters": True},
                         args.timeout)
        if not answer.get("ok"):
            raise AdminError(f"the node refused: {answer.get('error')}")
        result = answer["result"]
    else:
        result = redis_command(argparse.Namespace(admin_command="channels", limit=args.limit, redis=args.redis,
                                                  timeout=args.timeout))
    counters = result.get("counters") or {}
    return Snapshot(time.monotonic(), tuple(result["channels"]), result["total"], counters.get("enqueued"),
                    counters.get("delivered"), counters.get("lateness_p99_ms"))


def add_parser(commands: Any) -> argparse.ArgumentParser:
    top: argparse.ArgumentParser = commands.add_parser(
        "top", help="a live view of a node: busiest channels, rates, lateness, dead letters",
        description="A live view of a node, refreshed every second; q or Ctrl-C quits. Plain text when stdout "
        "is not a terminal.")
    where = top.add_mutually_exclusive_group(required=True)
    where.add_argument("--control", metavar="PATH", help="the control socket of a running serve node")
    where.add_argument("--redis", metavar="URL", help="the Redis a persisting node stores its channels in")
    top.add_argument("--limit", type=int, default=20, metavar="N", help="channels shown (default 20)")
    top.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="refresh period (default 1)")
    top.add_argument("--iterations", type=int, default=None, metavar="N", help="stop after N refreshes")
    top.add_argument("--timeout", type=float, default=6.0, metavar="SECONDS",
                     help="how long to wait for the node's answer (default 6)")
    return top


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    if not args.interval > 0 or not args.timeout > 0:
        parser.error("--interval and --timeout must be > 0")
    if args.iterations is not None and args.iterations < 1:
        parser.error(f"--iterations must be >= 1, got {args.iterations}")


def _snapshots(args: argparse.Namespace) -> Iterator[tuple[Snapshot, Snapshot | None]]:
    before: Snapshot | None = None
    count = 0
    while args.iterations is None or count < args.iterations:
        now = take(args)
        yield now, before
        before = now
        count += 1


def _quit_pressed(timeout: float) -> bool:
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    return bool(ready) and sys.stdin.read(1) in ("q", "Q")


def run_top(args: argparse.Namespace) -> int:
    source = f"control {args.control}" if args.control else "redis"
    try:
        if not sys.stdout.isatty():
            for i, (now, before) in enumerate(_snapshots(args)):
                if i:
                    time.sleep(args.interval)  # the refresh period of the view
                print(render_text(now, before, source), flush=True)
            return EXIT_OK
        return _live(args, source)
    except (NoNode, AdminError) as exc:
        print(f"top: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK


def _live(args: argparse.Namespace, source: str) -> int:
    import termios
    import tty

    from rich.live import Live

    stdin_tty = sys.stdin.isatty()
    saved = termios.tcgetattr(sys.stdin) if stdin_tty else None
    try:
        if stdin_tty:
            tty.setcbreak(sys.stdin.fileno())
        with Live(auto_refresh=False, screen=False) as live:
            for now, before in _snapshots(args):
                live.update(render(now, before, source), refresh=True)
                if stdin_tty and _quit_pressed(args.interval):
                    break
                if not stdin_tty:
                    time.sleep(args.interval)
    finally:
        if saved is not None:
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)
    return EXIT_OK
