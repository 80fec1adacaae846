"""Helpers shared by the benchmarks of the loop-driven asyncio API (``bench_facade``, ``bench_burst``,
``bench_durable``): a probe of the event loop's responsiveness, a tap on the queue's actor outputs, a CPU
hog, and the profile summary.

The queue's actors run on the caller's event loop (``actors.loop_driver.LoopDriver``), so the loop's
responsiveness is what a slow actor turn would cost everyone else on it; :class:`StallProbe` measures it.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import pathlib
import pstats
import subprocess
import sys
import time
from collections import Counter
from typing import Any, Callable, Iterator

from bench_actors import percentiles_ms

from protocol.messages import BatchReady

mono = time.monotonic
ROOT = pathlib.Path(__file__).resolve().parents[1]

PROBE_INTERVAL = 0.001  # seconds between two probe wake-ups


class StallProbe:
    """How late the loop runs what is due: while it runs, a task loops on ``asyncio.sleep(interval)`` and a
    chained ``loop.call_later(interval)`` re-arms itself; each records how long after its due time it ran.

    ``sleep`` includes a task step (the path of any coroutine waking from a sleep or a future); ``call_later``
    is a bare timer callback. A stall of S ms means some callback (an actor turn, a producer step, a callback
    task) held the loop for about S ms past a due timer.
    """

    def __init__(self, interval: float = PROBE_INTERVAL) -> None:
        self.interval = interval
        self.sleep: list[float] = []
        self.call_later: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._sleeper())
        self._arm(loop.time() + self.interval)

    async def _sleeper(self) -> None:
        interval, record = self.interval, self.sleep.append
        while True:
            t = mono()
            await asyncio.sleep(interval)
            record(max(0.0, mono() - t - interval))

    def _arm(self, due: float) -> None:
        assert self._loop is not None
        self._handle = self._loop.call_at(due, self._fired, due)

    def _fired(self, due: float) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self.call_later.append(max(0.0, now - due))
        self._arm(now + self.interval)

    async def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def report(self) -> dict[str, Any]:
        return {
            "sleep": percentiles_ms(self.sleep),
            "call_later": percentiles_ms(self.call_later),
            "samples": len(self.sleep) + len(self.call_later),
        }


def stall_summary(
    per_run: list[dict[str, Any]], median: Callable[[list[float | None]], float | None]
) -> dict[str, Any]:
    """Medians over runs of each probe's p50/p99/max (ms), and each run's worst p99 of the two probes."""
    out: dict[str, Any] = {}
    for probe in ("sleep", "call_later"):
        out[probe] = {k: _r(median([r[probe][k] for r in per_run])) for k in ("p50", "p99", "max")}
    out["runs_p99"] = [max(r["sleep"]["p99"] or 0.0, r["call_later"]["p99"] or 0.0) for r in per_run]
    out["p99"] = _r(median(list(out["runs_p99"])))
    out["max"] = _r(median([max(r["sleep"]["max"] or 0.0, r["call_later"]["max"] or 0.0) for r in per_run]))
    return out


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def loop_driver(mq: Any) -> Any:
    """The ``LoopDriver`` running a started in-memory or persisted ``MessageQueue``.

    Private attributes, read only: the benchmarks' single hook into the queue's pipeline."""
    driver = mq._backend._driver
    assert driver is not None, "the queue has not started its actors yet"
    return driver


class OutputTap:
    """Wraps the loop driver's output callback (``LoopDriver._on_output``, a private attribute, replaced for
    the run): when each ``BatchReady`` left the actors, and how many outputs of each type the queue got.
    Costs one ``time.monotonic()`` and one ``list.append`` per output, on the loop thread. It keeps what it
    reads of each ``BatchReady`` (``emitted``: time, ``id`` of the payload, channel, reason, lateness: no
    object the collector tracks), not the ``BatchReady`` itself, which would keep it and its item alive for the
    run's garbage collections to walk (the queue drops both once the callback returns)."""

    def __init__(self, driver: Any) -> None:
        self.emitted: list[tuple[float, int, str, str, float]] = []
        self.kinds: Counter[str] = Counter()
        inner: Callable[[object], None] = driver._on_output
        emitted, kinds = self.emitted, self.kinds

        def tap(output: Any) -> None:
            if type(output) is BatchReady:
                emitted.append((mono(), id(output.item.payload), output.channel_id, output.reason, output.lateness))
            kinds[type(output).__name__] += 1
            inner(output)

        driver._on_output = tap


@contextlib.contextmanager
def busy_core() -> Iterator[int]:
    """A child process spinning on one core for the duration (its pid is yielded); killed by pid after."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)  # let the scheduler see it running before the timed part
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(10)


IDLE = frozenset({"<method 'poll' of 'select.epoll' objects>", "<method 'select' of 'select.epoll' objects>"})
"""The selector's wait: the loop idle, not work."""


def top_functions(
    profile: cProfile.Profile, top: int, messages: int, batches: int, total: float
) -> list[dict[str, Any]]:
    """The ``top`` functions by own time: calls per batch, own time per delivered message and as a share of
    the profile's ``total`` own time."""
    stats = pstats.Stats(profile)
    busy = [kv for kv in stats.stats.items() if kv[0][2] not in IDLE]  # type: ignore[attr-defined]
    rows = sorted(busy, key=lambda kv: -kv[1][2])[:top]
    out = []
    for (filename, line, name), (_, ncalls, tottime, cumtime, _) in rows:
        out.append({
            "function": f"{_short(filename)}:{line}({name})",
            "ncalls": ncalls,
            "calls_per_batch": round(ncalls / max(1, batches), 2),
            "tottime_s": round(tottime, 4),
            "tottime_us_per_msg": round(tottime / max(1, messages) * 1e6, 3),
            "share_pct": round(100 * tottime / total, 1) if total else None,
            "cumtime_s": round(cumtime, 4),
        })
    return out


def call_counts(profile: cProfile.Profile, wanted: dict[str, tuple[str, str, int | None]]) -> dict[str, int]:
    """Calls of each function named by ``wanted``: label -> (file name ending, function name, line or None)."""
    stats = pstats.Stats(profile)
    counts = dict.fromkeys(wanted, 0)
    for (filename, line, name), (_, ncalls, _, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        for label, (suffix, func, at) in wanted.items():
            if name == func and filename.endswith(suffix) and (at is None or at == line):
                counts[label] += ncalls
    return counts


def total_tottime(profile: cProfile.Profile) -> float:
    """Own time of every profiled function, less the time the loop waited in its selector (idle)."""
    stats = pstats.Stats(profile)
    idle = sum(
        tt for (_, _, name), (_, _, tt, _, _) in stats.stats.items()  # type: ignore[attr-defined]
        if name in IDLE
    )
    return float(stats.total_tt) - idle  # type: ignore[attr-defined]


def _short(filename: str) -> str:
    root = str(ROOT) + "/"
    if filename.startswith(root):
        return filename[len(root):]
    for marker in ("/site-packages/", "/lib/python3.11/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename
