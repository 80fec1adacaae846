"""The examples in ``examples/`` and the code blocks of ``README.md`` run, and do what they say.

Rules for README code blocks:

- A fenced block with an info string (```` ```python ````, ```` ```sh ````, ...) is code; one without is text (a
  diagram, a layout) and is not looked at.
- Every code block is either run by a test of this module, which names it by a line of its own in
  :data:`RUN_BLOCKS`, or marked not run: an HTML comment ``<!-- not-run: reason -->`` on the line right before
  its opening fence. A code block that is neither, a marked block that a test runs as well, or an entry of
  :data:`RUN_BLOCKS` that matches no block or several, fails
  :func:`test_every_readme_code_block_is_run_or_marked_not_run`.
- A block runs in a subprocess with the repository root on ``PYTHONPATH`` (so it imports this clone, not an
  installed copy) and a timeout. The README's example Redis URL (:data:`README_REDIS_URL`), admin port and
  block time are replaced textually with a private server's; a replacement whose text is missing fails.

Every example in ``examples/`` is run by a test named in :data:`RUN_EXAMPLES`;
:func:`test_every_example_is_run` fails for an example that none runs. Every process a test starts is ended
by pid when the test ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import pytest
import redis.asyncio as aioredis
from redis_support import RedisServer
from test_run_system import MARKER, Running, accepts_connections, launch, texts_by_channel  # noqa: F401

from actors.system import free_port
from message_queue import InboundBatch, MessageBatch, QueuedMessage, RedisStreamEventBus, decode_entry

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TIMEOUT = 30.0  # seconds; generous for a loaded machine, never reached when things work
README_REDIS_URL = "redis://127.0.0.1:6380/0"
STREAM = "message_queue:inbound"
GROUP = "agents"
IDLE = 2.0  # seconds a consumer is left without entries: several of its (shortened) block times

RUN_BLOCKS = {  # a line of each README code block that a test runs -> that test
    "async with MessageQueue(default_batch_window=1.0, max_batch_size=10) as queue:":
        "test_readme_asyncio_example_answers_the_burst_once",
    "class Agent(ActorTypeDispatcher):": "test_readme_processor_actor_block_runs",
    "| python3 run_system.py serve --window 0.5": "test_readme_serve_pipe_prints_the_batch_as_json",
    "bus = RedisStreamEventBus(client,": "test_readme_distributed_block_publishes_the_batch_to_the_stream",
    "async def consume(client: aioredis.Redis,": "test_readme_consumer_prints_entries_and_survives_an_idle_stream",
    'asys = ActorSystem("multiprocTCPBase", {"Admin Port": 1900})':
        "test_external_sender_and_readme_sender_enqueue_into_a_tcp_node",
    'async with MessageQueue(default_batch_window=0.2, busy_policy="interrupt") as queue:':
        "test_readme_interrupting_bot_answers_both_messages_together",
    'added = await queue.take_waiting("chat")': "test_readme_steering_agent_takes_what_was_added",
}
RUN_EXAMPLES = {
    "stream_consumer": (
        "test_stream_consumer_prints_entries_and_survives_an_idle_stream",
        "test_consume_retries_a_read_that_times_out",
        "test_consume_first_handles_its_own_pending_entries",
    ),
    "external_sender": ("test_external_sender_and_readme_sender_enqueue_into_a_tcp_node",),
}


# -- README blocks ----------------------------------------------------------------------------------------

_FENCE = re.compile(r"^(?P<indent> *)```(?P<info>\S*)\s*$")
_NOT_RUN = re.compile(r"^\s*<!--\s*not-run:(?P<reason>.*?)-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block of README.md: its info string, its text (dedented), the line of its opening fence,
    and the reason of the not-run marker before it (None when unmarked)."""

    info: str
    code: str
    line: int
    not_run: str | None


def readme_blocks() -> list[Block]:
    """Every fenced block of README.md, in order; an unclosed fence fails."""
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        closing = f"{opening['indent']}```"
        end = next((j for j in range(i + 1, len(lines)) if lines[j].rstrip() == closing), None)
        assert end is not None, f"README.md line {i + 1}: code fence never closed"
        marker = _NOT_RUN.match(lines[i - 1]) if i > 0 else None
        code = textwrap.dedent("\n".join(lines[i + 1:end])) + "\n"
        blocks.append(Block(opening["info"], code, i + 1, marker["reason"].strip() if marker else None))
        i = end + 1
    return blocks


def readme_block(claim: str) -> Block:
    """The one README code block holding the line ``claim`` (a key of :data:`RUN_BLOCKS`)."""
    assert claim in RUN_BLOCKS, f"{claim!r} is not listed in RUN_BLOCKS"
    found = [block for block in readme_blocks() if block.info and claim in block.code]
    assert len(found) == 1, f"{len(found)} README code blocks hold {claim!r}"
    return found[0]


def substituted(code: str, replacements: dict[str, str]) -> str:
    """``code`` with each key replaced by its value; a key that does not occur fails (the README changed)."""
    for old, new in replacements.items():
        assert old in code, f"expected {old!r} in the block:\n{code}"
        code = code.replace(old, new)
    return code


def test_every_readme_code_block_is_run_or_marked_not_run() -> None:
    blocks = [block for block in readme_blocks() if block.info]
    assert blocks, "README.md has no code blocks: the parser is broken"
    claimed = {claim: [b.line for b in blocks if claim in b.code] for claim in RUN_BLOCKS}
    assert {claim: lines for claim, lines in claimed.items() if len(lines) != 1} == {}, \
        "each RUN_BLOCKS line must name exactly one README code block"
    run_lines = {lines[0] for lines in claimed.values()}
    for block in blocks:
        where = f"README.md line {block.line} (```{block.info})"
        if block.line in run_lines:
            assert block.not_run is None, f"{where} is run by a test but marked not-run"
        else:
            assert block.not_run is not None, (
                f"{where} is neither run by tests/test_examples.py (RUN_BLOCKS) nor marked "
                "<!-- not-run: reason --> on the line before it"
            )
            assert block.not_run, f"{where}: the not-run marker gives no reason"
    tests = {name for name, value in globals().items() if name.startswith("test_") and callable(value)}
    assert set(RUN_BLOCKS.values()) <= tests, "RUN_BLOCKS names a test that does not exist"


def test_every_example_is_run() -> None:
    examples = {path.stem for path in (REPO / "examples").glob("*.py") if path.stem != "__init__"}
    assert examples == set(RUN_EXAMPLES), "every example in examples/ needs a test in RUN_EXAMPLES"
    tests = {name for name, value in globals().items() if name.startswith("test_") and callable(value)}
    named = {name for names in RUN_EXAMPLES.values() for name in names}
    assert named <= tests, f"RUN_EXAMPLES names tests that do not exist: {sorted(named - tests)}"


# -- running code in subprocesses -------------------------------------------------------------------------


def environment(**more: str) -> dict[str, str]:
    """This environment with the repository root first on PYTHONPATH, this interpreter's directory first on
    PATH (so ``python3`` in a shell block is it), and unbuffered output."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    bin_path = os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "")))
    return {**os.environ, "PYTHONPATH": path, "PATH": bin_path, "PYTHONUNBUFFERED": "1", **more}


def run_python(code: str, directory: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a script in ``directory`` to completion (killed after TIMEOUT)."""
    script = directory / "block.py"
    script.write_text(code, encoding="utf-8")
    return subprocess.run([sys.executable, str(script)], cwd=directory, env=environment(**env),
                          capture_output=True, text=True, timeout=TIMEOUT)


class Background:
    """A process whose stdout lines a thread copies into a queue as they arrive; ``close`` kills it by pid."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(args, cwd=cwd, env=environment(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=_copy_lines, args=(self.proc.stdout, self.lines), daemon=True)
        self._reader.start()

    def line(self) -> str:
        """The next stdout line; fails when the process ends first or nothing comes within TIMEOUT."""
        try:
            line = self.lines.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no output within {TIMEOUT} s") from None
        assert line is not None, f"the process ended (status {self.proc.wait()}): {self.stderr()}"
        return line

    def still_running_after(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the process to end; True when it is still running then."""
        try:
            self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return True
        return False

    def stderr(self) -> str:
        """Everything on stderr; only once the process has ended."""
        assert self.proc.stderr is not None and self.proc.poll() is not None
        return self.proc.stderr.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)
        self._reader.join(TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _copy_lines(stream: IO[str], into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


@pytest.fixture
def background() -> Iterator[Callable[..., Background]]:
    """Start processes in the background; every one is killed after the test."""
    started: list[Background] = []

    def start(args: list[str], cwd: Path = REPO) -> Background:
        process = Background(args, cwd)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


# -- Redis helpers ----------------------------------------------------------------------------------------


def message(channel: str, text: str) -> QueuedMessage:
    return QueuedMessage(channel.split(":", 1)[0], channel, "U1", "ann", text)


def publish(url: str, channel: str, *texts: str) -> str:
    """Publish one batch of ``texts`` on ``channel`` to the inbound stream; return its batch id."""

    async def main() -> str:
        client = aioredis.Redis.from_url(url)
        try:
            bus = RedisStreamEventBus(client, stream=STREAM)
            return str(await bus.publish_inbound(MessageBatch([message(channel, text) for text in texts])))
        finally:
            await client.aclose()

    return asyncio.run(main())


def redis_call(url: str, call: Callable[[aioredis.Redis], Any]) -> Any:
    """Await ``call(client)`` on a fresh client of ``url`` and return its result."""

    async def main() -> Any:
        client = aioredis.Redis.from_url(url)
        try:
            return await call(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def pending(url: str) -> int:
    """How many entries of the inbound stream the group has delivered and not yet seen acknowledged."""
    return int(redis_call(url, lambda client: client.xpending(STREAM, GROUP))["pending"])


def stream_entries(url: str) -> list[InboundBatch]:
    entries = redis_call(url, lambda client: client.xrange(STREAM))
    return [decode_entry(fields, entry_id) for entry_id, fields in entries]


def check_consumer_survives_idle(consumer: Background, url: str, expect: Callable[[str, str], str]) -> None:
    """Publish a batch and read the consumer's line for it (``expect(channel, batch id)`` is that line), leave
    the stream idle for IDLE seconds, then do it again; every entry ends acknowledged."""
    first = publish(url, "slack:#dev", "hey", "can you")
    assert consumer.line() == expect("slack:#dev", first)
    assert consumer.still_running_after(IDLE), f"the consumer died on an idle stream: {consumer.stderr()}"
    second = publish(url, "slack:#ops", "after a pause")
    assert consumer.line() == expect("slack:#ops", second)
    _poll(lambda: pending(url) == 0, "every entry acknowledged")


def _poll(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"not reached within {TIMEOUT} s: {what}"
        time.sleep(0.02)  # polling a condition with a deadline


# -- examples/stream_consumer.py --------------------------------------------------------------------------


@pytest.mark.redis
def test_stream_consumer_prints_entries_and_survives_an_idle_stream(
    redis_srv: RedisServer, background: Callable[..., Background]
) -> None:
    consumer = background([sys.executable, "-m", "examples.stream_consumer", "--redis", redis_srv.url,
                           "--block", "500"])
    check_consumer_survives_idle(
        consumer, redis_srv.url,
        lambda channel, batch_id: f"{channel} {batch_id} (published): "
        + ("hey / can you" if channel == "slack:#dev" else "after a pause") + "\n",
    )
    assert consumer.proc.poll() is None


@pytest.mark.redis
def test_consume_retries_a_read_that_times_out(redis_srv: RedisServer) -> None:
    from examples.stream_consumer import consume

    async def main() -> None:
        # the socket timeout (0.2 s) is shorter than the block time (1 s): every idle read times out
        client = aioredis.Redis.from_url(redis_srv.url, socket_timeout=0.2)
        observer = aioredis.Redis.from_url(redis_srv.url)
        seen: list[list[str]] = []
        handled = asyncio.Event()

        async def handle(inbound: InboundBatch) -> None:
            seen.append([m.text for m in inbound.batch.messages])
            handled.set()

        try:
            task = asyncio.create_task(consume(client, handle, block=1000, max_batches=2))
            await RedisStreamEventBus(observer).publish_inbound(MessageBatch([message("c:1", "first")]))
            await asyncio.wait_for(handled.wait(), TIMEOUT)
            connections = (await observer.info("stats"))["total_connections_received"]
            with pytest.raises(asyncio.TimeoutError):  # still running after an idle period
                await asyncio.wait_for(asyncio.shield(task), IDLE)
            reconnected = (await observer.info("stats"))["total_connections_received"] - connections
            assert reconnected >= 2, "the reads did not time out: the test does not test the retry"
            await RedisStreamEventBus(observer).publish_inbound(MessageBatch([message("c:2", "second")]))
            assert await asyncio.wait_for(task, TIMEOUT) == 2
            assert seen == [["first"], ["second"]]
            assert (await observer.xpending(STREAM, GROUP))["pending"] == 0
        finally:
            await client.aclose()
            await observer.aclose()

    asyncio.run(main())


@pytest.mark.redis
def test_consume_first_handles_its_own_pending_entries(
    redis_srv: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from examples.stream_consumer import consume

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_srv.url)
        seen: list[list[str]] = []

        async def handle(inbound: InboundBatch) -> None:
            seen.append([m.text for m in inbound.batch.messages])

        try:
            bus = RedisStreamEventBus(client)
            await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
            for text in ("lost", "trimmed", "kept"):
                await bus.publish_inbound(MessageBatch([message("c:1", text)]))
            # a read whose reply never reached the consumer: the entries are pending for it
            delivered: Any = await client.xreadgroup(GROUP, "worker-1", {STREAM: ">"}, count=3)
            ids = [entry_id for _, entries in delivered for entry_id, _ in entries]
            assert len(ids) == 3
            await client.xdel(STREAM, ids[1])  # trimmed from the stream while pending
            await bus.publish_inbound(MessageBatch([message("c:1", "new")]))
            assert await asyncio.wait_for(consume(client, handle, block=100, max_batches=3), TIMEOUT) == 3
            assert seen == [["lost"], ["kept"], ["new"]]
            assert (await client.xpending(STREAM, GROUP))["pending"] == 0
        finally:
            await client.aclose()

    asyncio.run(main())
    assert "trimmed from the stream before it was handled" in capsys.readouterr().out


# -- README: the asyncio API, a processor actor, serve --------------------------------------------------


def test_readme_asyncio_example_answers_the_burst_once(tmp_path: Path) -> None:
    block = readme_block("async with MessageQueue(default_batch_window=1.0, max_batch_size=10) as queue:")
    result = run_python(block.code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "one reply for: hey / can you / fix the build?\n", result.stderr


def test_readme_interrupting_bot_answers_both_messages_together(tmp_path: Path) -> None:
    block = readme_block('async with MessageQueue(default_batch_window=0.2, busy_policy="interrupt") as queue:')
    result = run_python(block.code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "interrupted while answering: what's the weather\n"
        "reply to: what's the weather / in Paris? (after an interruption)\n"
    ), result.stderr


def test_readme_steering_agent_takes_what_was_added(tmp_path: Path) -> None:
    block = readme_block('added = await queue.take_waiting("chat")')
    result = run_python(block.code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "steered by: ['about autumn']\ndone: ['write a haiku', 'about autumn']\n", result.stderr


def test_readme_processor_actor_block_runs(tmp_path: Path) -> None:
    block = readme_block("class Agent(ActorTypeDispatcher):")
    result = run_python(block.code + "assert Agent.receiveMsg_BatchReady\n", tmp_path)
    assert result.returncode == 0, result.stderr


def test_readme_serve_pipe_prints_the_batch_as_json() -> None:
    block = readme_block("| python3 run_system.py serve --window 0.5")
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.code], cwd=REPO, env=environment(),
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    batch = json.loads(line)
    assert batch["channel_id"] == "slack:#dev"
    assert [(m["user_name"], m["text"]) for m in batch["messages"]] == [("ann", "hey")]


# -- README: distributed mode -----------------------------------------------------------------------------


@pytest.mark.redis
def test_readme_distributed_block_publishes_the_batch_to_the_stream(redis_srv: RedisServer,
                                                                    tmp_path: Path) -> None:
    block = readme_block("bus = RedisStreamEventBus(client,")
    code = substituted(block.code, {README_REDIS_URL: redis_srv.url})
    # the block is a fragment of a coroutine that is given ``message``
    script = (
        "import asyncio\nfrom message_queue import QueuedMessage\n\n"
        "async def main(message: QueuedMessage) -> None:\n" + textwrap.indent(code, "    ")
        + '\nasyncio.run(main(QueuedMessage("slack", "slack:#dev", "U1", "ann", "hey")))\n'
    )
    result = run_python(script, tmp_path)
    assert result.returncode == 0, result.stderr
    [entry] = stream_entries(redis_srv.url)  # published before close() returned
    assert (entry.channel_id, entry.reason, [m.text for m in entry.batch.messages]) == ("slack:#dev", "window",
                                                                                        ["hey"])


@pytest.mark.redis
def test_readme_consumer_prints_entries_and_survives_an_idle_stream(
    redis_srv: RedisServer, background: Callable[..., Background], tmp_path: Path
) -> None:
    block = readme_block("async def consume(client: aioredis.Redis,")
    code = substituted(block.code, {README_REDIS_URL: redis_srv.url, "block=5000": "block=500"})
    script = tmp_path / "consumer.py"
    script.write_text(code, encoding="utf-8")
    consumer = background([sys.executable, str(script)], tmp_path)
    texts = {"slack:#dev": "['hey', 'can you']", "slack:#ops": "['after a pause']"}
    check_consumer_survives_idle(consumer, redis_srv.url,
                                 lambda channel, batch_id: f"{channel} {batch_id} {texts[channel]}\n")
    assert consumer.proc.poll() is None


# -- examples/external_sender.py and the README's sender, against a TCP node -----------------------------


@pytest.mark.tcp
def test_external_sender_and_readme_sender_enqueue_into_a_tcp_node(
    launch: Callable[..., Running], tmp_path: Path  # noqa: F811 - the fixture imported above
) -> None:
    port = free_port()
    node = launch("serve", "--base", "multiprocTCPBase", "--admin-port", str(port), "--window", "0.05")
    node.stderr_line(lambda line: f"admin port {port}" in line)
    # the senders carry the node's marker: any process they might leave behind is found and ended with it
    marked = environment(**{MARKER: node.marker})
    sender = subprocess.run(
        [sys.executable, "-m", "examples.external_sender", "--port", str(port), "--channel", "cli:ext",
         "hello", "from", "outside"],
        cwd=REPO, env=marked, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert sender.returncode == 0, sender.stdout + sender.stderr
    assert sender.stdout == "3 of 3 messages accepted\n"

    block = readme_block('asys = ActorSystem("multiprocTCPBase", {"Admin Port": 1900})')
    code = substituted(block.code, {'{"Admin Port": 1900}': f'{{"Admin Port": {port}}}'})
    (tmp_path / "sender.py").write_text(code, encoding="utf-8")
    readme_sender = subprocess.run([sys.executable, str(tmp_path / "sender.py")], cwd=REPO, env=marked,
                                   capture_output=True, text=True, timeout=TIMEOUT)
    assert readme_sender.returncode == 0, readme_sender.stderr

    texts: dict[str, list[str]] = {}
    while sum(map(len, texts.values())) < 4:
        for channel, got in texts_by_channel([json.loads(node.stdout_line())]).items():
            texts.setdefault(channel, []).extend(got)
    assert texts == {"cli:ext": ["hello", "from", "outside"], "cli:demo": ["hello from outside"]}

    node.close_stdin()
    assert node.wait() == 0, node.all_stderr()
    assert not accepts_connections(port)
    assert node.processes() == set()  # the node's admin and actors, and anything the senders started
