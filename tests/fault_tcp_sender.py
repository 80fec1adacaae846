"""An external sender for the fault tests: random protocol messages with random field values to the Supervisor of
a ``serve --base multiprocTCPBase`` node, from another process.

Run as ``python tests/fault_tcp_sender.py ADMIN_PORT COUNT SEED``. Every ``GOOD_EVERY``-th command is a good
``Enqueue(ack=True)`` to the channel ``fuzz:good`` with the text ``G<n>`` (n = 0, 1, ...); the others are
commands with random (mostly wrong) field values, or objects that are no command at all. A command that answers
answers (every command but a fire-and-forget enqueue) must answer at least once. Each command is followed by a
``GetStatistics`` probe of a channel of its own; the replies before the probe's are the command's. Random
commands never name ``fuzz:good``.

Prints one JSON object: ``replies`` (reply class -> count; ``Rejected/<error>: <reason's first words>`` for
rejections, ``none`` for a probe not answered within the timeout), ``good`` (good enqueues sent),
``good_acked`` (good enqueues answered ``Enqueued(1)``), ``answering`` (commands that must answer),
``replies_total``, ``silent_before_probe``, ``unanswered``, ``seconds``.
"""

from __future__ import annotations

import json
import pathlib
import random
import re
import sys
import time
from collections import Counter
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from fault_inputs import field_value  # noqa: E402
from thespian.actors import ActorSystem  # noqa: E402

from actors.supervisor import Supervisor  # noqa: E402
from protocol.messages import (  # noqa: E402
    SUPERVISOR_NAME,
    CancelCurrent,
    Clear,
    ConfigureChannel,
    Enqueue,
    Enqueued,
    EnqueueFront,
    EnqueueMany,
    FlushBatch,
    GetStatistics,
    HoldBatch,
    Rejected,
    Statistics,
    StopChannel,
)
from protocol.values import BatchSettings, MessageBatch, QueuedMessage  # noqa: E402

GOOD_EVERY = 5
ASK_TIMEOUT = 5.0
GOOD_CHANNEL = "fuzz:good"


def channel(rng: random.Random) -> Any:
    return rng.choice(["fz:a", "fz:b", "fz:c"]) if rng.random() < 0.4 else field_value(rng, "channel")


def control_channel(rng: random.Random) -> Any:
    """A channel for commands that stop or hold a channel: never one that receives messages, since serve waits
    at end of input until every channel is drained (tests/test_fault_regressions.py)."""
    value = channel(rng)
    return "ctl:" + value if isinstance(value, str) and value else value


def random_message(rng: random.Random) -> QueuedMessage:
    fields: dict[str, Any] = {
        "platform": "fuzz", "channel_id": rng.choice(["fz:a", "fz:b"]), "user_id": "u", "user_name": "n",
        "text": "t", "queued_at": field_value(rng, "time") if rng.random() < 0.2 else None,
        "extra": field_value(rng, "extra") if rng.random() < 0.3 else {},
    }
    for name in rng.sample(["platform", "channel_id", "user_id", "user_name", "text", "extra"], rng.randint(0, 3)):
        fields[name] = field_value(rng, "extra" if name == "extra" else "str")
    if fields["queued_at"] is None:
        del fields["queued_at"]
    if fields["channel_id"] == GOOD_CHANNEL:
        fields["channel_id"] = "fz:a"
    return QueuedMessage(**fields)


def random_settings(rng: random.Random) -> Any:
    """Settings that are no BatchSettings, or valid ones. (BatchSettings whose fields were set past the
    constructor's checks crash the channel actor: tests/test_fault_regressions.py.)"""
    if rng.random() < 0.5:
        return BatchSettings(window=rng.choice([0.0, 0.01, 0.05]), max_batch_size=rng.randint(1, 100))
    return field_value(rng, "str")


def random_command(rng: random.Random) -> tuple[Any, bool]:
    """A command with random fields and whether it answers (sent with ask)."""
    kind = rng.randrange(10)
    if kind == 0:
        ack = rng.random() < 0.8
        return Enqueue(random_message(rng), ack=ack), ack
    if kind == 1:
        messages: Any = tuple(random_message(rng) for _ in range(rng.randint(0, 5)))
        if rng.random() < 0.2:
            messages = field_value(rng, "str")
        return EnqueueMany(messages, ack=True), True
    if kind == 2:
        payload: Any = rng.choice([
            random_message(rng),
            MessageBatch([random_message(rng) for _ in range(rng.randint(0, 3))], field_value(rng, "time"),
                         field_value(rng, "time")),
            MessageBatch([QueuedMessage("p", "fz:a", "u", "n", "x")] * 101),
            field_value(rng, "str"),
        ])
        return EnqueueFront(payload, ack=True), True
    if kind == 3:
        return ConfigureChannel(channel(rng), random_settings(rng)), True
    if kind == 4:
        return GetStatistics(channel(rng)), True
    if kind == 5:
        command = rng.choice([CancelCurrent, Clear, FlushBatch])
        return command(channel(rng)), True
    if kind == 6:
        return rng.choice([1, "Enqueue", None, b"\x00", {"channel_id": "fz:a"}, [Enqueue]]), True
    if kind == 7:
        return rng.choice([HoldBatch, StopChannel])(control_channel(rng)), True
    if kind == 8:
        return QueuedMessage("p", "fz:a", "u", "n", "bare message"), True  # a value, not a command
    return Enqueue(random_message(rng), ack=False), False


def reply_class(reply: object) -> str:
    if reply is None:
        return "none"
    if isinstance(reply, Rejected):
        reason = re.sub(r"(got|at|,|\(|'|\d).*", "", reply.reason).strip()
        return f"Rejected/{reply.error}: {reason[:60]}"
    return type(reply).__name__


def main() -> int:
    port, count, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    asys = ActorSystem("multiprocTCPBase", {"Admin Port": port})
    supervisor = asys.createActor(Supervisor, globalName=SUPERVISOR_NAME)
    replies: Counter[str] = Counter()
    good = good_acked = answering = silent = 0
    unanswered: list[str] = []
    start = time.monotonic()
    for n in range(count):
        if n % GOOD_EVERY == 0:
            # On an endpoint of its own: the channel acknowledges it (it may refuse a message by its busy
            # policy) on its own, later than the Supervisor answers a probe.
            with asys.private() as own:
                reply = own.ask(supervisor, Enqueue(QueuedMessage("cli", GOOD_CHANNEL, "u", "n", f"G{good}"),
                                                    ack=True), ASK_TIMEOUT)
            good += 1
            good_acked += reply == Enqueued(1)
            replies[reply_class(reply)] += 1
            answering += 1
            continue
        command, answers = random_command(rng)
        answering += answers
        try:
            asys.tell(supervisor, command)
        except Exception as exc:  # the sender could not send it (it cannot be pickled)
            replies[f"not sent: {type(exc).__name__}"] += 1
            continue
        # A command may answer more than once (EnqueueMany: a Rejected per bad message, then Enqueued), and
        # ask() returns whatever arrives first: every reply up to this probe's is counted for this command.
        probe = f"fz:probe:{n}"
        asys.tell(supervisor, GetStatistics(probe))
        got = 0
        while True:
            reply = asys.listen(ASK_TIMEOUT)
            if reply is None:
                replies["none"] += 1
                unanswered.append(f"probe after {command!r}"[:300])
                break
            if isinstance(reply, Statistics) and [c.channel_id for c in reply.channels] == [probe]:
                break
            got += 1
            replies[reply_class(reply)] += 1
        if answers and not got:
            silent += 1
    # A held batch, or one whose window a random ConfigureChannel made huge, would stay open: close them all,
    # since serve waits at end of input until no batch is open (FlushBatch of a channel with none is harmless).
    for name in ("fz:a", "fz:b", "fz:c", "🙂", "nul\x00", "yesterday", "Enqueue"):
        replies[reply_class(asys.ask(supervisor, FlushBatch(name), ASK_TIMEOUT))] += 1
    # replies that came after their probe (a channel actor answers after the Supervisor) are counted here
    while (reply := asys.listen(1.0)) is not None:
        replies[reply_class(reply)] += 1
    every = asys.ask(supervisor, GetStatistics(), ASK_TIMEOUT)
    busy = [repr(c)[:300] for c in every.channels if c.open_batch_size or c.queued or c.in_flight] \
        if isinstance(every, Statistics) else [repr(every)]
    print(json.dumps({"busy": busy, "replies": dict(replies), "good": good, "good_acked": good_acked,
                      "answering": answering,
                      "replies_total": sum(replies.values()), "silent_before_probe": silent,
                      "unanswered": unanswered, "seconds": round(time.monotonic() - start, 3)}))
    # no asys.shutdown(): it would stop the node's actor system
    return 0


if __name__ == "__main__":
    sys.exit(main())
