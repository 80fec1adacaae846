"""serve's operations endpoint: ``/metrics`` (Prometheus text, from prometheus_client's own exposition) and
``/healthz`` on a small HTTP server of its own thread.

``/healthz`` answers 200 ``ok`` while the node is healthy and 503 with the reason in the body otherwise; what
healthy means is the ``health`` callable's business (:func:`node_health` for serve). ``/metrics`` first calls
``refresh`` (which sets the gauges from a fresh snapshot; a failure only leaves them as they were).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("run_system")

Health = Callable[[], "str | None"]
"""Returns None when healthy, else the reason it is not."""


class OpsServer:
    """``/metrics`` and ``/healthz`` on ``host:port`` (port 0: a free one, see :attr:`port`), served from a
    daemon thread until :meth:`stop`.

    Raises:
        OSError: from :meth:`start` when the address cannot be bound.
    """

    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: Health,
                 refresh: Callable[[], None]) -> None:
        self._address = (host, port)
        self._registry = registry
        self._health = health
        self._refresh = refresh
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "OpsServer.port read before start()"
        return int(self._server.server_address[1])

    def start(self) -> None:
        ops = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    try:
                        ops._refresh()
                    except Exception as exc:  # the counters are still worth serving
                        log.warning("metrics: could not refresh the gauges (%s)", exc)
                    self._answer(200, generate_latest(ops._registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    try:
                        reason = ops._health()
                    except Exception as exc:
                        reason = f"health check failed: {type(exc).__name__}: {exc}"
                    if reason is None:
                        self._answer(200, b"ok\n")
                    else:
                        self._answer(503, f"unhealthy: {reason}\n".encode())
                else:
                    self._answer(404, b"not found: try /metrics or /healthz\n")

            def _answer(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # a scrape every few seconds is not news

        server = self._server = ThreadingHTTPServer(self._address, Handler)
        server.daemon_threads = True
        self._thread = threading.Thread(target=server.serve_forever, name="mq-ops-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None


def lease_problem(redis_url: str, timeout: float = 2.0) -> str | None:
    """None when the Redis at ``redis_url`` answers and its writer lease is held by this process or one of
    its descendants (the TCP base's persistence actor); else why not."""
    import redis

    from actors.lease import LeaseHolder
    from actors.procfs import parent
    from protocol.keys import LEASE

    client = redis.Redis.from_url(redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        raw = client.get(LEASE)
    except redis.RedisError as exc:
        return f"Redis unreachable: {exc}"
    finally:
        client.close()
    if raw is None:
        return "the writer lease is not held (expired: Redis stalled or unreachable for longer than the lease?)"
    holder = LeaseHolder.decode(raw if isinstance(raw, bytes) else str(raw).encode())
    if holder is None:
        return f"the writer lease holds a value this node did not write: {raw[:100]!r}"
    if holder.host != socket.gethostname():
        return f"the writer lease is held by another node: {holder.describe()}"
    me, pid = os.getpid(), holder.pid
    for _ in range(16):
        if pid == me:
            return None
        if pid <= 1:
            break
        pid = parent(pid)
    return f"the writer lease is held by another node: {holder.describe()}"
