"""``run_system.py admin ... dead-letters CHANNEL [--replay | --purge]`` on every route, against real nodes whose
processor fails chosen items until they are dead letters: the control socket of a node (the actors answer),
``--redis`` through the lease holder (the actors answer; the journal follows), ``--redis`` with no lease holder
(the stored list is read or purged, a replay refused), and a ``serve --redis --control`` node that restored
dead letters at start and replays them onto its stdout."""

from __future__ import annotations

import json
import os
import queue
import tempfile
import time
from typing import Any, Callable, Iterator

import pytest
import redis
from redis_support import RedisServer
from test_admin_control import admin
from test_run_system import TIMEOUT, Running, launch

from actors.driver import Output
from actors.system import SIMPLE_BASE, TCP_BASE
from protocol import codec, keys
from protocol.messages import BatchReady, GetDeadLetters, ProcessingDone, ProcessingFailed
from protocol.values import BatchSettings, DeadLetter, QueuedMessage, payload_messages
from service.control import ControlServer, Executor, request
from service.nodes import InProcessNode

__all__ = ["launch"]  # the fixture, used by name

CHANNEL = "slack:#dead"
SETTINGS = BatchSettings(batching=False, max_attempts=2, retry_backoff=0.0)


class FailingNode:
    """A node (real actors, optionally persisting to Redis) whose processor fails every item whose text is in
    :attr:`failing` and finishes the others; every delivery is queued in :attr:`delivered`."""

    def __init__(self, redis_url: str = "") -> None:
        self.failing: set[str] = set()
        self.delivered: queue.Queue[BatchReady] = queue.Queue()
        self.node = InProcessNode(self._on_output, SETTINGS, redis_url=redis_url)
        self.node.start()

    def _on_output(self, output: Output) -> None:
        if not isinstance(output, BatchReady):
            return
        self.delivered.put(output)
        text = payload_messages(output.item.payload)[0].text
        if text in self.failing:
            reply: object = ProcessingFailed(output.channel_id, output.delivery_id, f"cannot process {text}")
        else:
            reply = ProcessingDone(output.channel_id, output.delivery_id)
        self.node.tell(reply, output.reply_to)

    def enqueue(self, text: str) -> None:
        self.node.enqueue(QueuedMessage("slack", CHANNEL, "U1", "ann", text, message_id=f"id-{text}"))

    def next_delivery(self) -> BatchReady:
        return self.delivered.get(timeout=TIMEOUT)

    def dead_letter(self, *texts: str) -> dict[str, str]:
        """Make items of ``texts`` fail both attempts; their item ids by text, once all are dead letters."""
        self.failing.update(texts)
        for text in texts:
            self.enqueue(text)
        ids: dict[str, str] = {}
        for _ in range(2 * len(texts)):
            ready = self.next_delivery()
            text = payload_messages(ready.item.payload)[0].text
            assert ids.setdefault(text, ready.item.item_id) == ready.item.item_id  # a retry keeps the id
        deadline = time.monotonic() + TIMEOUT
        while len(self.letters()) < len(texts):  # the last failure is handled after its delivery was seen
            assert time.monotonic() < deadline, self.letters()
            time.sleep(0.01)  # polling the actors
        return ids

    def letters(self) -> tuple[DeadLetter, ...]:
        reply = self.node.call(GetDeadLetters(CHANNEL)).result(TIMEOUT)
        letters: tuple[DeadLetter, ...] = reply.letters  # type: ignore[attr-defined]
        return letters

    def stop(self) -> None:
        self.node.stop()


@pytest.fixture
def nodes() -> Iterator[Callable[..., FailingNode]]:
    started: list[FailingNode] = []

    def start(redis_url: str = "") -> FailingNode:
        node = FailingNode(redis_url)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture
def socket_path() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="mq-dead-")
    yield os.path.join(directory, "node.sock")
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    os.rmdir(directory)


def admin_json(*args: str) -> Any:
    result = admin(*args[:2], "--json", *args[2:])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def check_item_rows(rows: list[dict[str, Any]], ids: dict[str, str]) -> None:
    """``rows`` list the dead letters of ``ids`` (text -> item id), in order, as items that failed twice."""
    assert [row["item_id"] for row in rows] == list(ids.values())
    for row, text in zip(rows, ids):
        assert row["messages"] == [{"message_id": f"id-{text}", "text": text}]
        assert row["error"] == f"cannot process {text}"
        assert row["attempts"] == 2 and row["role"] == "item" and row["undecodable"] is False
        assert 0 < row["first_failed_at"] <= row["last_failed_at"] == row["at"] <= time.time()
        assert row["bytes"] == 0


def check_replayed(node: FailingNode, ids: dict[str, str]) -> None:
    """The items of ``ids`` are delivered again, in order, with their ids and attempt 1."""
    for text, item_id in ids.items():
        ready = node.next_delivery()
        assert (payload_messages(ready.item.payload)[0].text, ready.item.item_id, ready.item.attempt) == \
            (text, item_id, 1)


# -- --control PATH ----------------------------------------------------------------------------------------


def test_control_route_lists_replays_and_purges_the_actors_dead_letters(
        nodes: Callable[..., FailingNode], socket_path: str) -> None:
    node = nodes()
    server = ControlServer(socket_path, Executor(node.node).execute)
    server.start()
    try:
        ids = node.dead_letter("f1", "f2")
        node.enqueue("ok")
        assert payload_messages(node.next_delivery().item.payload)[0].text == "ok"  # the channel moved on

        listed = admin_json("--control", socket_path, "dead-letters", CHANNEL)
        assert listed.keys() == {"channel", "source", "dead_letters", "total", "undecodable"}
        assert (listed["channel"], listed["source"], listed["total"], listed["undecodable"]) == (CHANNEL, "node", 2, 0)
        check_item_rows(listed["dead_letters"], ids)
        first = admin_json("--control", socket_path, "dead-letters", CHANNEL, "--limit", "1")
        assert first["total"] == 2
        check_item_rows(first["dead_letters"], {"f1": ids["f1"]})  # the oldest
        row = next(r for r in admin_json("--control", socket_path, "channels")["channels"] if r["channel"] == CHANNEL)
        assert row["dead_letters"] == 2

        text = admin("--control", socket_path, "dead-letters", CHANNEL)
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        assert lines[0] == f"2 dead letter(s) on {CHANNEL!r} (0 undecodable), from the node"
        assert lines[1].startswith(f"  item {ids['f1']}: 2 attempt(s), failed ") and \
            lines[1].endswith(": cannot process f1")
        assert lines[2] == "    [id-f1] 'f1'"
        cut = admin("--control", socket_path, "dead-letters", CHANNEL, "--limit", "1")
        assert cut.returncode == 0, cut.stderr
        assert cut.stdout.splitlines()[0] == \
            f"2 dead letter(s) on {CHANNEL!r} (0 undecodable), from the node; the oldest 1 listed (--limit)"
        assert len(cut.stdout.splitlines()) == 3  # one item of one message
        zero = admin("--control", socket_path, "dead-letters", CHANNEL, "--limit", "0")
        assert zero.returncode == 2 and "--limit must be >= 1, got 0" in zero.stderr

        node.failing.clear()
        replayed = admin("--control", socket_path, "dead-letters", CHANNEL, "--replay")
        assert replayed.returncode == 0, replayed.stderr
        assert replayed.stdout.strip() == f"replayed 2 item(s) of {CHANNEL!r} to the tail of its queue"
        check_replayed(node, ids)
        assert node.letters() == ()

        node.dead_letter("f3")
        purge = admin("--control", socket_path, "dead-letters", CHANNEL, "--purge")
        assert purge.returncode == 0, purge.stderr
        assert purge.stdout.strip() == f"purged 1 dead letter(s) of {CHANNEL!r} on the node"
        assert node.letters() == ()
        assert admin_json("--control", socket_path, "dead-letters", CHANNEL)["dead_letters"] == []
        assert node.delivered.empty()  # a purged item is not delivered

        both = admin("--control", socket_path, "dead-letters", CHANNEL, "--replay", "--purge")
        assert both.returncode == 2 and "not allowed with argument" in both.stderr
        answer = request(socket_path, {"command": "dead-letters", "channel": CHANNEL, "replay": "yes"})
        assert answer == {"ok": False, "error": "dead-letters: replay must be true or false, got 'yes'"}
        answer = request(socket_path, {"command": "dead-letters", "channel": CHANNEL, "limit": True})
        assert answer == {"ok": False, "error": "dead-letters: limit must be an integer >= 1, got True"}
    finally:
        server.stop()


# -- --redis URL --------------------------------------------------------------------------------------------


def stored(client: redis.Redis, channel: str = CHANNEL) -> list[DeadLetter]:
    raws: list[bytes] = client.lrange(keys.channel_key(keys.DEAD_LETTER, channel), 0, -1)  # type: ignore[assignment]
    return [codec.decode(raw, DeadLetter) for raw in raws]


@pytest.mark.redis
def test_redis_route_reaches_the_lease_holder_and_the_journal_follows(
        nodes: Callable[..., FailingNode], redis_srv: RedisServer) -> None:
    url = redis_srv.url
    node = nodes(url)
    client = redis.Redis.from_url(url)
    try:
        ids = node.dead_letter("f1", "f2")
        listed = admin_json("--redis", url, "dead-letters", CHANNEL)
        assert (listed["source"], listed["undecodable"]) == ("node", 0)
        check_item_rows(listed["dead_letters"], ids)
        last = admin_json("--redis", url, "dead-letters", CHANNEL, "--limit", "1")  # the limit rides the stream
        assert last["total"] == 2
        check_item_rows(last["dead_letters"], {"f1": ids["f1"]})

        node.failing.clear()
        assert admin_json("--redis", url, "dead-letters", CHANNEL, "--replay") == {
            "channel": CHANNEL, "source": "node", "replayed": 2}
        check_replayed(node, ids)
        assert stored(client) == []  # the answer follows the journal's write

        f3 = node.dead_letter("f3")["f3"]
        assert [letter.item.item_id for letter in stored(client) if letter.item is not None] == [f3]
        assert admin_json("--redis", url, "dead-letters", CHANNEL, "--purge") == {
            "channel": CHANNEL, "source": "node", "purged": 1}
        assert node.letters() == () and stored(client) == []
        assert node.delivered.empty()
    finally:
        client.close()


@pytest.mark.redis
def test_with_no_lease_holder_the_stored_list_is_read_and_purged_and_a_replay_refused(
        nodes: Callable[..., FailingNode], redis_srv: RedisServer) -> None:
    url = redis_srv.url
    node = nodes(url)
    ids = node.dead_letter("f1")
    through_node = admin_json("--redis", url, "dead-letters", CHANNEL)
    node.stop()  # writes what it holds and gives the lease back
    client = redis.Redis.from_url(url)
    try:
        assert client.get(keys.LEASE) is None
        client.rpush(keys.channel_key(keys.DEAD_LETTER, CHANNEL), b"\xc1 not a frame")

        listed = admin_json("--redis", url, "dead-letters", CHANNEL)
        assert (listed["source"], listed["total"], listed["undecodable"]) == ("redis", 2, 1)
        first = admin_json("--redis", url, "dead-letters", CHANNEL, "--limit", "1")
        assert (first["total"], first["undecodable"]) == (2, 1)  # counted over all, listed: the oldest
        assert first["dead_letters"] == listed["dead_letters"][:1]
        assert listed["dead_letters"][0] == through_node["dead_letters"][0]  # one shape on every route
        check_item_rows(listed["dead_letters"][:1], ids)
        junk = listed["dead_letters"][1]
        assert (junk["item_id"], junk["role"], junk["undecodable"], junk["bytes"], junk["at"]) == \
            (None, "dead", True, 13, None)
        text = admin("--redis", url, "dead-letters", CHANNEL)
        assert text.returncode == 0, text.stderr
        assert text.stdout.splitlines()[0] == \
            f"2 dead letter(s) on {CHANNEL!r} (1 undecodable), from Redis (no node holds the lease)"
        assert text.stdout.splitlines()[-1].startswith("  undecodable (13 bytes, -): ")

        refused = admin("--redis", url, "dead-letters", CHANNEL, "--replay")
        assert refused.returncode == 1
        assert "no node holds the writer lease of this database: a node must be running to replay dead " \
            "letters" in refused.stderr
        assert client.llen(keys.channel_key(keys.DEAD_LETTER, CHANNEL)) == 2  # left where they are

        client.set(keys.LEASE, "host=elsewhere pid=1 token=0", px=60_000)  # a holder that does not answer
        silent = admin("--redis", url, "--timeout", "1", "dead-letters", CHANNEL, "--purge")
        assert silent.returncode == 1
        assert "no node holding the lease of this database answered within 1 s" in silent.stderr
        assert client.llen(keys.channel_key(keys.DEAD_LETTER, CHANNEL)) == 2
        client.delete(keys.LEASE)

        purged = admin("--redis", url, "dead-letters", CHANNEL, "--purge")
        assert purged.returncode == 0, purged.stderr
        assert purged.stdout.strip() == f"purged 2 dead letter(s) of {CHANNEL!r} from Redis (no node holds the lease)"
        assert client.llen(keys.channel_key(keys.DEAD_LETTER, CHANNEL)) == 0
        assert admin_json("--redis", url, "dead-letters", CHANNEL)["dead_letters"] == []
    finally:
        client.close()


@pytest.mark.redis
@pytest.mark.parametrize("base", [SIMPLE_BASE, TCP_BASE])
def test_serve_restores_dead_letters_and_replays_them_onto_its_output(
        nodes: Callable[..., FailingNode], launch: Callable[..., Running], redis_srv: RedisServer,
        socket_path: str, base: str) -> None:
    url = redis_srv.url
    node = nodes(url)
    ids = node.dead_letter("f1", "f2")
    node.stop()
    client = redis.Redis.from_url(url)
    try:
        client.rpush(keys.channel_key(keys.DEAD_LETTER, CHANNEL), b"\xc1 not a frame")
    finally:
        client.close()

    served = launch("serve", "--base", base, "--redis", url, "--control", socket_path, "--window", "30")
    served.stderr_line(lambda line: "ready" in line)
    through_redis = admin_json("--redis", url, "dead-letters", CHANNEL)
    through_socket = admin_json("--control", socket_path, "dead-letters", CHANNEL)
    assert through_redis == through_socket
    assert (through_redis["source"], through_redis["undecodable"]) == ("node", 1)
    check_item_rows(through_redis["dead_letters"][:2], ids)
    assert through_redis["dead_letters"][2]["undecodable"] is True  # loaded as a dead letter holding its bytes

    # Only the items go back; the undecodable entry is forgotten with them.
    assert admin_json("--redis", url, "dead-letters", CHANNEL, "--replay")["replayed"] == 2
    for text, item_id in ids.items():
        record = json.loads(served.stdout_line())
        assert (record["item_id"], record["attempt"], [m["text"] for m in record["messages"]]) == \
            (item_id, 1, [text])
        assert record["messages"][0]["message_id"] == f"id-{text}"
    assert admin_json("--control", socket_path, "dead-letters", CHANNEL)["dead_letters"] == []
    assert admin_json("--redis", url, "dead-letters", CHANNEL, "--purge")["purged"] == 0
    served.close_stdin()
    assert served.wait() == 0


@pytest.mark.redis
def test_an_asyncio_message_queue_answers_through_redis(redis_srv: RedisServer) -> None:
    import asyncio

    import redis.asyncio as aioredis

    from message_queue import MessageQueue, current_item

    url = redis_srv.url

    async def main() -> None:
        seen: list[tuple[str, str, int]] = []
        failing = {"f1"}

        async def callback(payload: Any) -> None:
            item = current_item()
            assert item is not None
            (text,) = [m.text for m in payload_messages(payload)]
            seen.append((text, item.item_id, item.attempt))
            if text in failing:
                raise RuntimeError(f"cannot process {text}")

        async def until(check: Callable[[], bool], what: str) -> None:
            deadline = time.monotonic() + TIMEOUT
            while not check():
                assert time.monotonic() < deadline, what
                await asyncio.sleep(0.01)  # polling the callback's record

        client = aioredis.Redis.from_url(url)
        try:
            async with MessageQueue(default_batch_window=0.0, max_batch_size=1, max_attempts=2, retry_backoff=0.0,
                                    redis=client) as mq:
                await mq.start_processing(CHANNEL, callback)
                await mq.enqueue(QueuedMessage("slack", CHANNEL, "U1", "ann", "f1", message_id="id-f1"))
                await until(lambda: len(seen) == 2, "two attempts")
                deadline = time.monotonic() + TIMEOUT
                while not await mq.dead_letters(CHANNEL):  # the last failure is handled after the callback
                    assert time.monotonic() < deadline, "the dead letter"
                    await asyncio.sleep(0.01)
                item_id = seen[0][1]

                listed = await asyncio.to_thread(admin_json, "--redis", url, "dead-letters", CHANNEL)
                assert (listed["source"], listed["undecodable"]) == ("node", 0)
                (row,) = listed["dead_letters"]
                assert (row["item_id"], row["attempts"], row["messages"]) == \
                    (item_id, 2, [{"message_id": "id-f1", "text": "f1"}])
                assert row["error"].endswith("cannot process f1")

                failing.clear()
                replayed = await asyncio.to_thread(admin_json, "--redis", url, "dead-letters", CHANNEL, "--replay")
                assert replayed == {"channel": CHANNEL, "source": "node", "replayed": 1}
                await until(lambda: len(seen) == 3, "the replayed item")
                assert seen[2] == ("f1", item_id, 1)
                assert await mq.dead_letters(CHANNEL) == []
        finally:
            await client.aclose()

    asyncio.run(asyncio.wait_for(main(), TIMEOUT * 2))


# -- the pieces every route shares ------------------------------------------------------------------------


def test_a_request_names_one_action_and_a_listed_text_is_cut() -> None:
    from actors.control_stream import MAX_LISTED_TEXT, dead_letter_row, dead_letters_message
    from protocol.errors import InvalidInput
    from protocol.messages import PurgeDeadLetters, ReplayDeadLetters
    from protocol.values import QueueItem

    assert dead_letters_message(CHANNEL, {}) == GetDeadLetters(CHANNEL)
    assert dead_letters_message(CHANNEL, {"replay": True, "purge": False}) == ReplayDeadLetters(CHANNEL)
    assert dead_letters_message(CHANNEL, {"purge": True}) == PurgeDeadLetters(CHANNEL)
    with pytest.raises(InvalidInput, match="^dead-letters: replay and purge cannot both be asked$"):
        dead_letters_message(CHANNEL, {"replay": True, "purge": True})
    with pytest.raises(InvalidInput, match="^dead-letters: purge must be true or false, got 1$"):
        dead_letters_message(CHANNEL, {"purge": 1})
    assert dead_letters_message(CHANNEL, {"limit": 5, "replay": False}) == GetDeadLetters(CHANNEL)
    for bad in (0, -1, 2.5, "3", True):
        with pytest.raises(InvalidInput, match="^dead-letters: limit must be an integer >= 1, got "):
            dead_letters_message(CHANNEL, {"limit": bad})

    long = "x" * (MAX_LISTED_TEXT + 1)
    item = QueueItem("i1", CHANNEL, QueuedMessage("slack", CHANNEL, "U1", "ann", long))
    row = dead_letter_row(DeadLetter("item", "boom", b"", 2.0, item=item, attempts=3, first_failed_at=1.0,
                                     last_failed_at=2.0))
    assert row["messages"] == [{"message_id": "", "text": long[:MAX_LISTED_TEXT], "truncated": True}]
    assert (row["item_id"], row["attempts"], row["first_failed_at"], row["last_failed_at"]) == ("i1", 3, 1.0, 2.0)
    aside = dead_letter_row(DeadLetter("redis", "could not encode", b"abc", 5.0))
    assert (aside["item_id"], aside["messages"], aside["first_failed_at"], aside["undecodable"], aside["bytes"]) == \
        (None, [], None, False, 3)
