"""A private redis-server for tests: free loopback port, temporary directory, ended by pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

REDIS_SERVER = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """One redis-server process. ``url`` points at it; ``restart``/``kill`` act on the same data dir."""

    directory: str
    port: int = field(default_factory=_free_port)
    appendonly: bool = True
    appendfsync: str = "everysec"
    maxmemory_policy: str = "noeviction"
    logfile: str | None = None  # default: redis.log in ``directory`` (elsewhere, it can be read when that is full)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        args = [
            REDIS_SERVER or "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.directory,
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--maxmemory-policy", self.maxmemory_policy,
            "--daemonize", "no",
            "--logfile", self.logfile or os.path.join(self.directory, "redis.log"),
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.01)  # polling a starting server process; not waiting for behaviour under test
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout} s")

    def kill(self) -> None:
        """SIGKILL the server (as a crash would) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()


@contextlib.contextmanager
def redis_server(**options: object) -> Iterator[RedisServer]:
    """Start a private redis-server in a temporary directory; end it and remove the directory after."""
    directory = tempfile.mkdtemp(prefix="mq-redis-")
    server = RedisServer(directory, **options)  # type: ignore[arg-type]
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def tmpfs(size: str) -> Iterator[str]:
    """A tmpfs of ``size`` (``mount -t tmpfs -o size=SIZE``) on a new temporary directory, unmounted and removed
    after, even when the block fails. Needs root (or CAP_SYS_ADMIN).

    Raises:
        PermissionError: when ``mount`` is missing or not permitted here (the message says which).
    """
    mount = shutil.which("mount")
    if mount is None:
        raise PermissionError("no mount command on PATH")
    directory = tempfile.mkdtemp(prefix="mq-tmpfs-")
    try:
        done = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", directory],
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise PermissionError(f"mount -t tmpfs is not permitted here (exit {done.returncode}): "
                                  f"{done.stderr.strip()}")
        try:
            yield directory
        finally:
            if subprocess.run(["umount", directory], capture_output=True, timeout=30).returncode != 0:
                subprocess.run(["umount", "-l", directory], capture_output=True, timeout=30)  # busy: detach it
    finally:
        os.rmdir(directory)


def as_bytes(value: object) -> bytes:
    """A reply of a client made without ``decode_responses``, as the bytes it is (redis-py types replies as
    ``bytes | str``)."""
    assert isinstance(value, bytes), value
    return value


def reply(value: object) -> Any:
    """A structured reply of redis-py (streams, scans, script results), whose declared type is too loose to
    use as it is."""
    return value
