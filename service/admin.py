"""``run_system.py admin``: look at and act on a node's channels.

Two ways to a node's state:
    * ``--control PATH``: a running ``serve --control PATH`` node, through its Unix socket
      (:mod:`service.control`): every command.
    * ``--redis URL``: the state a persisting node (``serve --redis``, ``MessageQueue(redis=...)``) keeps in
      Redis. ``channels`` and ``show`` read it directly. Commands that change what a node holds (``pause``,
      ``resume``, ``flush``, ``clear``) and ``dead-letters`` (listing, ``--replay``, ``--purge``) go to the
      node holding the database's writer lease through the control stream (:mod:`actors.control_stream`),
      and its answer comes back the same way. With no lease holder, ``dead-letters`` lists the stored list
      ``message_queue:dead:{channel}`` directly and ``--purge`` deletes it (no node holds those letters in
      memory; the deletion is refused if a node takes the lease meanwhile), while ``--replay`` fails: only a
      running node can put items back into a channel's queue. Channels of distributed mode (``serve
      --distributed``) are read from their own keys and changed by an atomic script
      (:mod:`service.admin_distributed`): ``channels`` lists those with an open batch or paused, ``show`` any,
      the mutations act at once (no node needs to answer), and ``dead-letters`` refuses with exit 1 (they keep
      none). ``--distributed`` treats a channel Redis holds no state of as a distributed one.

``dead-letters CHANNEL`` gives the same result on every route: ``{"channel", "source", "dead_letters": [...],
"total", "undecodable"}`` (``source`` is ``node`` when the node's actors answered, ``redis`` when the stored list
was read; the listing holds the oldest ``--limit`` letters, default 20, and ``total`` and ``undecodable`` count
them all), each letter as :func:`actors.control_stream.dead_letter_row` describes it (item id, messages' ids and
text, last error, attempts, first and last failure times; entries that do not decode are listed as
``undecodable`` and counted); ``--replay``: ``{"channel", "source", "replayed"}`` (items put back at the tail
of the channel's queue, ids kept, attempt 1); ``--purge``: ``{"channel", "source", "purged"}``.

Every command prints a table, or one JSON object with ``--json``. Exit status: 0 done, 1 when no node answers
(within ``--timeout``), no node holds the lease for ``dead-letters --replay``, the node refused the command,
or Redis cannot be reached, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from typing import Any, Callable

from protocol import codec
from protocol.errors import DecodeError, InvalidInput
from protocol.limits import validate_channel_id
from protocol.values import OpenEntry, QueueItem, payload_messages
from service.control import NoNode, request
from service.process import EXIT_FAILED, EXIT_OK

MUTATIONS = ("pause", "resume", "flush", "clear")


class AdminError(Exception):
    """The command cannot be carried out; the message says why."""


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """The ``admin`` subcommand of ``run_system.py``."""
    admin: argparse.ArgumentParser = commands.add_parser(
        "admin", help="look at and act on a node's channels (channels, show, pause, resume, flush, clear, "
        "dead-letters)",
        description="Look at and act on a node's channels: through a running node's control socket "
        "(serve --control PATH; every command), or the state a persisting node keeps in Redis (--redis URL: "
        "channels and show read directly; dead-letters and pause, resume, flush and clear go to the node holding "
        "the writer lease, or act at once on a channel of distributed mode). Exit status 0 done, 1 when no node "
        "answers or the command failed, 2 on a usage error.")
    where = admin.add_mutually_exclusive_group(required=True)
    where.add_argument("--control", metavar="PATH", help="the control socket of a running serve node")
    where.add_argument("--redis", metavar="URL", help="the Redis a persisting node stores its channels in")
    admin.add_argument("--distributed", action="store_true",
                       help="with --redis: act on CHANNEL as a channel of distributed mode even when Redis holds "
                       "no state of it yet (e.g. pause it before its first message)")
    admin.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    admin.add_argument("--timeout", type=float, default=6.0, metavar="SECONDS",
                       help="how long to wait for the node's answer (default 6)")
    sub = admin.add_subparsers(dest="admin_command", metavar="COMMAND", required=True)
    channels = sub.add_parser("channels", help="one row per channel, most waiting items first")
    channels.add_argument("--limit", type=int, default=20, metavar="N", help="at most N rows (default 20)")
    for name, text in (("show", "one channel in full"),
                       ("pause", "deliver nothing more on the channel until resumed (it keeps batching)"),
                       ("resume", "deliver the channel's waiting items again"),
                       ("flush", "close the channel's open batch now"),
                       ("clear", "discard the channel's waiting items")):
        sub.add_parser(name, help=text).add_argument("channel", metavar="CHANNEL")
    dead = sub.add_parser("dead-letters", help="the channel's dead letters: items that failed their last attempt, "
                          "and stored entries set aside")
    dead.add_argument("channel", metavar="CHANNEL")
    action = dead.add_mutually_exclusive_group()
    action.add_argument("--replay", action="store_true",
                        help="put the dead letters' items back at the tail of the channel's queue (attempt 1, ids "
                        "kept); needs a running node")
    action.add_argument("--purge", action="store_true", help="forget the channel's dead letters")
    dead.add_argument("--limit", type=int, default=20, metavar="N",
                      help="list at most N letters, the oldest (default 20; the total is always given)")
    return admin


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.timeout > 0:
        parser.error(f"--timeout must be > 0, got {args.timeout}")
    if args.distributed and args.redis is None:
        parser.error("--distributed needs --redis URL")
    if args.admin_command in ("channels", "dead-letters") and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    channel = getattr(args, "channel", None)
    if channel is not None:
        try:
            validate_channel_id(channel)
        except InvalidInput as exc:
            parser.error(str(exc))


def build_request(args: argparse.Namespace) -> dict[str, Any]:
    payload: dict[str, Any] = {"command": args.admin_command}
    if args.admin_command == "channels":
        payload["limit"] = args.limit
    else:
        payload["channel"] = args.channel
    if args.admin_command == "dead-letters":
        payload["replay"] = args.replay
        payload["purge"] = args.purge
        payload["limit"] = args.limit
    return payload


def run_admin(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    """Run the admin command in ``args``; print its result; return the exit status."""
    try:
        if args.control is not None:
            answer = request(args.control, build_request(args), args.timeout)
            if not answer.get("ok"):
                raise AdminError(f"the node refused {args.admin_command}: {answer.get('error')}")
            result = answer["result"]
        else:
            result = redis_command(args)
    except (NoNode, AdminError) as exc:
        print(f"admin: {exc}", file=sys.stderr)
        return EXIT_FAILED
    out(json.dumps(result, ensure_ascii=False) if args.json else render(args.admin_command, result))
    return EXIT_OK


# -- reading a persisting node's state from Redis -----------------------------------------------------------


def redis_command(args: argparse.Namespace) -> dict[str, Any]:
    """Run a command on a persisting node's state: read from Redis, or sent to the lease holder.

    Raises:
        AdminError: when no node answers a command that must go to one, the node refused it, or Redis cannot
            be reached.
    """
    import redis

    command = args.admin_command
    # The socket timeout outlasts the wait for the node's answer (BLPOP blocks up to --timeout).
    from protocol import keys
    from service import admin_distributed as dist

    client = redis.Redis.from_url(args.redis, socket_timeout=args.timeout + 5.0,
                                  socket_connect_timeout=args.timeout)
    try:
        if command == "channels":
            members = client.sunion([keys.CHANNEL_INDEX, keys.PAUSED])
            names = sorted(m.decode("utf-8", "replace") for m in members)  # type: ignore[union-attr]
            rows = [stored_channel(client, name) for name in names]
            distributed, distributed_total = dist.channel_rows(client)
            rows += distributed
            rows.sort(key=lambda r: (-r["waiting"], -r["open_batch_size"], r["channel"]))
            return {"channels": rows[: args.limit], "total": len(names) + distributed_total}
        stored = bool(client.sismember(keys.CHANNEL_INDEX, args.channel)) or \
            bool(client.sismember(keys.PAUSED, args.channel))
        distributed_row = dist.channel_row(client, args.channel)
        is_distributed = getattr(args, "distributed", False) or (distributed_row is not None and not stored)
        if command == "dead-letters":
            if is_distributed:
                dist.refuse(command)
            return dead_letters_command(client, args)
        if command in MUTATIONS:
            if not is_distributed:
                return node_command(client, build_request(args), args.timeout)
            return dist.MUTATIONS[command](client, args.channel)
        # show
        if distributed_row is not None and not stored:
            return distributed_row
        row = stored_channel(client, args.channel)
        if distributed_row is not None:
            row["distributed"] = distributed_row
        return row
    except dist.Refused as exc:
        raise AdminError(str(exc)) from exc
    except redis.RedisError as exc:
        raise AdminError(f"Redis at {_redacted(args.redis)}: {exc}") from exc
    finally:
        client.close()


def node_command(client: Any, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send ``payload`` to the node holding the database's writer lease and return its result.

    Raises:
        AdminError: when no node holds the lease, none answers within ``timeout`` seconds, or it refused.
    """
    from actors import control_stream

    if control_stream.lease_holder(client) is None:
        raise AdminError("no node holds the writer lease of this database: nothing to send "
                         f"{payload['command']} to (start one with serve --redis URL)")
    answer = control_stream.send(client, payload, timeout)
    if answer is None:
        raise AdminError(f"no node holding the lease of this database answered within {timeout:g} s")
    if not answer.get("ok"):
        raise AdminError(f"the node refused {payload['command']}: {answer.get('error')}")
    result = answer.get("result")
    assert isinstance(result, dict), answer
    return result


def _redacted(url: str) -> str:
    from service.serve import redacted

    return redacted(url)


def stored_channel(client: Any, channel: str) -> dict[str, Any]:
    """One channel's row from its stored keys: open batch size, waiting items, the item in flight with its
    attempt, the age of its oldest message (seconds), dead letters and the ``paused`` settings field."""
    from protocol import keys

    pipe = client.pipeline(transaction=False)
    pipe.llen(keys.channel_key(keys.OPEN_BATCH, channel))
    pipe.llen(keys.queue_key(channel))
    pipe.lrange(keys.channel_key(keys.PROCESSING, channel), 0, 0)
    pipe.lindex(keys.queue_key(channel), 0)
    pipe.lindex(keys.channel_key(keys.OPEN_BATCH, channel), 0)
    pipe.llen(keys.channel_key(keys.DEAD_LETTER, channel))
    pipe.hget(keys.config_key(channel), "paused")
    open_size, waiting, flying, head, open_head, dead, paused = pipe.execute()
    attempt = None
    oldest: float | None = None
    now = time.time()
    for raw in (flying[0] if flying else None, head):
        if raw is None:
            continue
        try:
            item = codec.decode(raw, QueueItem)
        except DecodeError:
            continue
        if raw is (flying[0] if flying else None):
            attempt = item.attempt
        first = payload_messages(item.payload)[0]
        oldest = max(oldest or 0.0, now - first.queued_at.timestamp())
    if open_head is not None and oldest is None:
        try:
            oldest = now - codec.decode(open_head, OpenEntry).arrived_at
        except DecodeError:
            pass
    return {
        "channel": channel,
        "mode": "stored",
        "open_batch_size": int(open_size),
        "waiting": int(waiting),
        "in_flight": bool(flying),
        "attempt": attempt,
        "oldest_age_s": round(oldest, 3) if oldest is not None else None,
        "dead_letters": int(dead),
        "paused": paused in (b"1", b"true", b"yes"),
    }


def dead_letters_command(client: Any, args: argparse.Namespace) -> dict[str, Any]:
    """``dead-letters``: through the lease holder when there is one; otherwise read (or purged) from the
    stored list, and ``--replay`` refused.

    Raises:
        AdminError: for ``--replay`` with no lease holder, and as :func:`node_command` does.
    """
    from actors import control_stream

    if control_stream.lease_holder(client) is not None:
        return node_command(client, build_request(args), args.timeout)
    if args.replay:
        raise AdminError("no node holds the writer lease of this database: a node must be running to replay dead "
                         "letters, since they go back into a live channel's queue (start one with serve --redis URL); "
                         "the dead letters stay where they are")
    return stored_dead_letters(client, args.channel, purge=args.purge, limit=args.limit)


class LeaseTaken(AdminError):
    """A node took the writer lease while the stored dead letters were being purged; nothing was deleted."""


def stored_dead_letters(client: Any, channel: str, *, purge: bool, limit: int | None = None) -> dict[str, Any]:
    """The channel's stored dead letters, read while no node holds the lease (see
    :func:`actors.control_stream.dead_letters_listing`: the first ``limit`` of them listed, all of them counted);
    with ``purge``, deleted instead (``{"channel",
    "source", "purged"}``), in a transaction that fails if a node takes the lease meanwhile.

    Raises:
        LeaseTaken: when a node took the lease during the purge.
    """
    import redis

    from actors import control_stream
    from protocol import keys

    key = keys.channel_key(keys.DEAD_LETTER, channel)
    if not purge:
        rows = []
        for raw in client.lrange(key, 0, -1):  # bounded: a channel keeps MAX_DEAD_LETTERS at most
            try:
                rows.append(control_stream.dead_letter_row(codec.decode_dead_letter(raw)))
            except DecodeError as exc:
                rows.append(control_stream.undecodable_row(raw, exc))
        undecodable = sum(1 for row in rows if row["undecodable"])
        return control_stream.dead_letters_listing(channel, rows[:limit], "redis", total=len(rows),
                                                   undecodable=undecodable)
    with client.pipeline(transaction=True) as pipe:
        try:
            # A node that takes the lease loads the dead letters after it: if none held it when the
            # deletion ran, none holds them in memory.
            pipe.watch(keys.LEASE, key)
            if pipe.exists(keys.LEASE):
                raise LeaseTaken("a node took the writer lease of this database: run dead-letters --purge again "
                                 "to purge through it")
            count = int(pipe.llen(key))
            pipe.multi()
            pipe.delete(key)
            pipe.execute()
        except redis.WatchError as exc:
            raise LeaseTaken("a node took the writer lease of this database (or changed the dead letters) while "
                             "they were purged: nothing was deleted; run dead-letters --purge again") from exc
    return {"channel": channel, "source": "redis", "purged": count}


# -- output ----------------------------------------------------------------------------------------------------

COLUMNS = (("channel", "CHANNEL"), ("open_batch_size", "OPEN"), ("waiting", "WAITING"), ("in_flight", "IN FLIGHT"),
           ("attempt", "ATTEMPT"), ("oldest_age_s", "OLDEST (s)"), ("dead_letters", "DEAD"), ("paused", "PAUSED"))
DISTRIBUTED_COLUMNS = (("mode", "MODE"), ("deadline_in_s", "DEADLINE IN (s)"), ("batches_published", "PUBLISHED"))


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if value is True:
        return "yes"
    if value is False:
        return "no"
    return str(value)


def render(command: str, result: dict[str, Any]) -> str:
    """``result`` as the human-readable text of ``command``."""
    if command == "channels":
        columns: tuple[tuple[str, str], ...] = COLUMNS
        if any(r.get("mode") == "distributed" for r in result["channels"]):
            columns = COLUMNS + DISTRIBUTED_COLUMNS
        rows = [[_cell(r.get(key)) for key, _ in columns] for r in result["channels"]]
        header = [title for _, title in columns]
        widths = [max(len(x) for x in column) for column in zip(header, *rows)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *rows]]
        shown = len(rows)
        lines.append(f"{shown} of {result['total']} channel(s)")
        return "\n".join(lines)
    if command == "show":
        return "\n".join(f"{key}: {_cell(value)}" for key, value in result.items() if key != "distributed") + \
            ("\ndistributed: " + render("flush", result["distributed"]) if "distributed" in result else "")
    if command == "dead-letters":
        return render_dead_letters(result)
    return ", ".join(f"{key}: {_cell(value)}" for key, value in result.items())


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def render_dead_letters(result: dict[str, Any]) -> str:
    """A ``dead-letters`` result (listing, replay or purge) as text."""
    channel = result["channel"]
    source = "the node" if result["source"] == "node" else "Redis (no node holds the lease)"
    if "replayed" in result:
        return f"replayed {result['replayed']} item(s) of {channel!r} to the tail of its queue"
    if "purged" in result:
        where = "on the node" if result["source"] == "node" else "from Redis (no node holds the lease)"
        return f"purged {result['purged']} dead letter(s) of {channel!r} {where}"
    letters = result["dead_letters"]
    total = result.get("total", len(letters))
    cut = f"; the oldest {len(letters)} listed (--limit)" if total > len(letters) else ""
    lines = [f"{total} dead letter(s) on {channel!r} ({result['undecodable']} undecodable), from {source}{cut}"]
    for letter in letters:
        if letter["item_id"] is not None:
            lines.append(f"  item {letter['item_id']}: {letter['attempts']} attempt(s), failed "
                         f"{_when(letter['first_failed_at'])} .. {_when(letter['last_failed_at'])}: {letter['error']}")
            for message in letter["messages"]:
                text = message["text"] if len(message["text"]) <= 60 else message["text"][:59] + "\u2026"
                lines.append(f"    [{message['message_id'] or '-'}] {text!r}")
        else:
            kind = "undecodable" if letter["undecodable"] else f"set aside from {letter['role']}"
            lines.append(f"  {kind} ({letter['bytes']} bytes, {_when(letter['at'])}): {letter['error']}")
    return "\n".join(lines)
