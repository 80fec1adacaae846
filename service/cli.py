"""The command line: ``demo`` (the default) and ``serve``, their checks, and :func:`main`, which runs the
chosen command and returns its exit status."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from actors.system import SIMPLE_BASE, SUPPORTED_BASES, TCP_BASE
from protocol.errors import InvalidSettings
from protocol.values import BatchSettings
from service.admin import add_parser as add_admin_parser
from service.admin import check_args as check_admin_args
from service.admin import run_admin
from service.demo import run_demo
from service.distributed_serve import run_serve_distributed
from service.logs import FORMATS as LOG_FORMATS
from service.logs import configure as configure_logs
from service.process import EXIT_FAILED, silence_stdout
from service.serve import channel_settings, redacted, run_serve
from service.top import add_parser as add_top_parser
from service.top import check_args as check_top_args


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


def _channel_options(parser: argparse.ArgumentParser, defaults: BatchSettings) -> None:
    """The conversation and failure settings every channel gets (``BatchSettings``), as serve's flags."""
    group = parser.add_argument_group("channel settings (see the README: Conversations, and When processing "
                                      "fails or input floods)")
    group.add_argument("--busy-policy", choices=("queue", "collect", "interrupt", "reject"),
                       default=defaults.busy_policy, help="messages arriving while a batch is being written "
                       f"(default {defaults.busy_policy})")
    group.add_argument("--split-on-author", action="store_true",
                       help="a message from another user_id closes the open batch first")
    group.add_argument("--dedupe-ttl", type=float, default=defaults.dedupe_ttl, metavar="SECONDS",
                       help="drop a message whose message_id its channel accepted this recently; 0: off "
                       f"(default {defaults.dedupe_ttl:g})")
    group.add_argument("--max-attempts", type=int, default=defaults.max_attempts, metavar="N",
                       help=f"deliveries of a batch before it becomes a dead letter (default {defaults.max_attempts})")
    group.add_argument("--retry-backoff", type=float, default=defaults.retry_backoff, metavar="SECONDS",
                       help=f"base of the jittered backoff between attempts (default {defaults.retry_backoff:g})")
    group.add_argument("--processing-timeout", type=_positive_float, default=None, metavar="SECONDS",
                       help="a delivery not acknowledged this long counts as a failed attempt (default: none)")
    group.add_argument("--max-queued", type=int, default=defaults.max_queued, metavar="N",
                       help=f"messages a channel holds waiting (default {defaults.max_queued})")
    group.add_argument("--overflow", choices=("reject", "drop_oldest", "drop_newest"), default=defaults.overflow,
                       help=f"what a full channel does with a new message (default {defaults.overflow})")
    group.add_argument("--max-age", type=_positive_float, default=None, metavar="SECONDS",
                       help="drop a message this old (by queued_at) instead of delivering it (default: never)")


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``demo`` (the default) and ``serve``; the top-level help shows both in full."""
    parser = argparse.ArgumentParser(
        prog="run_system.py",
        description="Per-channel, ordered, batched delivery of chat messages, as Thespian actors. "
        "Without a command, runs the demo.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="{demo,serve,admin,top}")
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
                                "crash (--redis; same item_id). Input and output are strict JSON. Bad lines "
                                "(blank ones, NaN or Infinity, over 1 MiB included) are reported on stderr with "
                                "their number and skipped. At end of input, waits for every open batch to flush, then "
                                "exits 0. SIGINT and SIGTERM stop at once with status 0; batches still open are "
                                "discarded, or kept for the next start with --redis.")
    serve.add_argument("--base", choices=SUPPORTED_BASES, default=SIMPLE_BASE,
                       help=f"Thespian system base (default {SIMPLE_BASE}); {TCP_BASE} runs each actor in a "
                       "process of its own and lets other processes enqueue through the admin port, but binds "
                       "every interface and unpickles whatever reaches its ports")
    _batch_options(serve, window=defaults.window, max_batch_size=defaults.max_batch_size)
    serve.add_argument("--max-wait", type=_positive_float, default=None, metavar="SECONDS",
                       help="a batch closes when its first message is this old, however busy (default: no cap)")
    _channel_options(serve, defaults)
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
    ops = serve.add_argument_group("operations")
    ops.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                     help="serve Prometheus metrics on http://HOST:PORT/metrics and a health check on /healthz "
                     "(200 while the actors answer and, with --redis, Redis answers and this node holds the "
                     "writer lease; 503 with the reason otherwise); 0 picks a free port, printed on stderr "
                     "(default: none)")
    ops.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                     help="address the metrics endpoint binds (default 127.0.0.1: this host only)")
    ops.add_argument("--control", default=None, metavar="PATH",
                     help="listen for admin commands (run_system.py admin --control PATH) on a Unix socket "
                     "created at PATH with mode 0600; connections from other users are refused (default: none)")
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
    admin = add_admin_parser(commands)
    top = add_top_parser(commands)
    for sub in (demo, serve, admin, top):
        sub.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                         help="log lines on stderr as text (default) or one JSON object a line, with channel, "
                         "item_id, delivery_id and attempt where they apply")
    parser.epilog = "\n".join(f"{name}:\n{sub.format_help()}"
                               for name, sub in (("demo", demo), ("serve", serve), ("admin", admin),
                                                 ("top", top)))
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` (without the program name); no command means ``demo``. Exits 2 on a usage error."""
    args = list(argv)
    if not args or args[0] not in ("demo", "serve", "admin", "top", "-h", "--help"):
        args.insert(0, "demo")
    parser = build_parser()
    namespace = parser.parse_args(args)
    if namespace.command == "admin":
        check_admin_args(parser, namespace)
        return namespace
    if namespace.command == "top":
        check_top_args(parser, namespace)
        return namespace
    try:
        if namespace.command == "serve":
            channel_settings(namespace)
        else:
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
        _check_ops(parser, namespace)
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
    local_only = [f"--{name.replace('_', '-')}" for name in (
        "busy_policy", "split_on_author", "max_attempts", "retry_backoff", "processing_timeout", "max_age")
        if getattr(namespace, name) != getattr(defaults, name)]
    if local_only:
        parser.error(f"{', '.join(local_only)} do(es) not apply to --distributed (the nodes batch in Redis "
                     "scripts and publish to a stream: only --dedupe-ttl, --max-queued and --overflow do)")
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


def _check_ops(parser: argparse.ArgumentParser, namespace: argparse.Namespace) -> None:
    port = namespace.metrics_port
    if port is not None and not 0 <= port <= 65535:
        parser.error(f"--metrics-port must be 0-65535, got {port}")
    if port is None and namespace.metrics_host != "127.0.0.1":
        parser.error("--metrics-host needs --metrics-port")
    if port is not None and namespace.distributed:
        parser.error("--metrics-port serves an actor-system node; a --distributed node has none")
    if namespace.control is not None and namespace.distributed:
        parser.error("--control reaches an actor-system node; a --distributed node has none")


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
    configure_logs(args.log_format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_ReportedByServe())
    try:
        if args.command == "serve":
            return run_serve_distributed(args) if args.distributed else run_serve(args)
        if args.command == "admin":
            return run_admin(args)
        if args.command == "top":
            from service.top import run_top  # rich, only for the view

            return run_top(args)
        return run_demo(args)
    except BrokenPipeError:  # stdout's reader went away, e.g. ``| head``
        silence_stdout()
        return EXIT_FAILED
