"""Distributed mode with real node processes (``run_system.py serve --distributed``) on a private redis-server.

Traffic: 1,000 channels, rounds of messages (each channel sends in a round with some probability), every
message to a random node. A round starts only once the previous one is acknowledged (each node reports
``{"acked": N}``: its first N input messages are stored), so within a channel a later message was sent after
the earlier one was stored: that is the order the stream must keep. Rounds are paced by a traffic plan (a
round at most every ``ROUND_S``); waits for behaviour are condition waits and ``XREAD BLOCK`` polls.

Midway one node is killed with SIGKILL. Messages it had acknowledged must all be published (its open batches
by the survivors' sweepers); messages it had not acknowledged may be published or not, but never twice.
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict

import pytest
import redis
from dist_cluster import NodeProcess, StreamReader, message_line, open_deadlines, percentile, start_nodes
from redis_support import RedisServer

from protocol.keys import channel_tag

pytestmark = pytest.mark.redis

CHANNELS = 1000
ROUNDS = 20
KILL_AFTER_ROUND = 9
CHATTY = 100  # the first channels send in almost every round: their batches fill up
CHATTY_PROBABILITY = 0.95
SEND_PROBABILITY = 0.3
ROUND_S = 0.05
WINDOW = 0.15
CAP = 5


def test_three_nodes_publish_every_message_once_in_order_and_survive_a_kill(
    redis_srv: RedisServer, client: redis.Redis
) -> None:
    rng = random.Random(20240611)
    channels = [f"chan-{i:04d}" for i in range(CHANNELS)]
    nodes = start_nodes(redis_srv.url, 3, "--window", str(WINDOW), "--max-batch-size", str(CAP),
                        "--sweep-interval", "0.2", "--grace", "0.1")
    try:
        sent_to: dict[str, list[str]] = {node.name: [] for node in nodes}  # message ids, in the order sent
        round_of: dict[str, int] = {}
        channel_of: dict[str, str] = {}
        live = list(nodes)
        killed: NodeProcess | None = None
        acked_by_killed = 0
        started = time.monotonic()
        for round_no in range(ROUNDS):
            plan_at = started + round_no * ROUND_S
            pause = plan_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # the traffic plan: rounds at most every ROUND_S
            batches: dict[str, list[bytes]] = defaultdict(list)
            for index, channel in enumerate(channels):
                if rng.random() >= (CHATTY_PROBABILITY if index < CHATTY else SEND_PROBABILITY):
                    continue
                node = rng.choice(live)
                msg_id = f"{channel}/{round_no}"
                round_of[msg_id] = round_no
                channel_of[msg_id] = channel
                sent_to[node.name].append(msg_id)
                batches[node.name].append(message_line(channel, msg_id))
            for node in live:
                lines = batches[node.name]
                node.send(b"".join(lines), len(lines))
            if round_no == KILL_AFTER_ROUND:
                killed = live.pop(0)
                killed.wait_acked(killed.sent - len(batches[killed.name]) + 1)  # it is storing this round
                killed.kill()  # mid-round: some of its messages are stored, others maybe not
                acked_by_killed = killed.acked
            for node in live:
                node.wait_acked(node.sent)

        assert killed is not None
        certain = {m for node in live for m in sent_to[node.name]}
        certain |= set(sent_to[killed.name][:acked_by_killed])
        uncertain = set(sent_to[killed.name][acked_by_killed:])
        assert len(certain) > 5000

        reader = StreamReader(client)

        def all_published() -> bool:
            seen = {text for _, text in reader.messages()}
            return certain <= seen and open_deadlines(client) == 0

        reader.read_until(all_published, timeout=20)
        for node in live:
            assert node.finish() == 0, node.stderr[-5:]
            assert any(line.startswith("serve: done;") for line in node.stderr), node.stderr[-5:]
        reader.poll(block_ms=50)
    finally:
        for node in nodes:
            node.end()

    # Exactly once: every acknowledged message; at most once: those the killed node had not acknowledged.
    counts = Counter(text for _, text in reader.messages())
    assert not [m for m, n in counts.items() if n > 1], "published twice"
    assert not [m for m in certain if counts[m] != 1], "lost"
    assert set(counts) <= certain | uncertain

    by_channel: dict[str, list[int]] = defaultdict(list)
    seqs: dict[str, list[int]] = defaultdict(list)
    batch_ids = Counter(entry.batch_id for entry in reader.entries)
    assert max(batch_ids.values()) == 1
    for entry in reader.entries:
        assert 1 <= len(entry.batch.messages) <= CAP  # no batch over the cap
        assert entry.batch_id == f"{channel_tag(entry.channel_id)}:{entry.seq}"
        seqs[entry.channel_id].append(entry.seq)
        for message in entry.batch.messages:
            assert channel_of[message.text] == entry.channel_id == message.channel_id  # its own channel
            if message.text in certain:
                by_channel[entry.channel_id].append(round_of[message.text])
    for channel, rounds in by_channel.items():
        assert rounds == sorted(rounds), f"{channel}: order broken: {rounds}"
    for channel, numbers in seqs.items():  # consecutive from where the channel's state started (the seq floor)
        assert numbers[0] >= 1 and numbers == list(range(numbers[0], numbers[0] + len(numbers))), (
            f"{channel}: batch numbers {numbers}")

    # Batches closed by time, and those of the dead node, published by the survivors' sweepers.
    reasons = Counter(entry.reason for entry in reader.entries)
    assert reasons["window"] and reasons["full"], reasons
    swept = [entry for entry in reader.entries if entry.by.endswith("/sweep")]
    assert swept, "no orphaned batch was swept"
    lateness = [entry.lateness_ms for entry in reader.entries if entry.lateness_ms is not None]
    assert max(lateness) <= 3000, f"a batch published {max(lateness)} ms after its deadline"
    print(f"\n{len(reader.entries)} batches, {sum(counts.values())} messages, reasons {dict(reasons)}, "
          f"swept {len(swept)} (lateness max {max(e.lateness_ms or 0 for e in swept)} ms), lateness p50 "
          f"{percentile(lateness, 0.5)} p99 {percentile(lateness, 0.99)} max {max(lateness)} ms; uncertain "
          f"{len(uncertain)} of which published {sum(1 for m in uncertain if counts[m])}")
