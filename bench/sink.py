"""A fast stand-in for Togai's ingestion endpoints, run in its own process by the benchmark.

``python -m bench.sink [--latency S] [--quota N] [--parse json|count] [--track-ids]`` serves
``POST /ingestBatch`` (202 ``{"errors":[]}``) and ``POST /ingest`` (202, empty body, as the
document says) on a free port of 127.0.0.1, prints ``http://127.0.0.1:PORT`` as its first
line and serves until its stdin closes. ``GET /stats`` answers the counters (and the sink's
own CPU seconds, so the benchmark can show that the sink is not the bottleneck).

- ``--latency S``: every accepted request is answered S seconds late (requests on other
  connections proceed meanwhile).
- ``--quota N``: an API gateway's quota: a token bucket per endpoint, N tokens, refilled at N
  per second; a request finding it empty gets 429 with ``Retry-After`` (whole seconds) at once.
- ``--parse json`` (default) parses every body; ``count`` counts ``"id":`` keys instead.
- ``--track-ids`` keeps the distinct event ids, to tell lost events from re-sent ones (it
  implies ``--parse json``).

The server is standard library only: ``asyncio.start_server`` and a minimal HTTP/1.1
keep-alive parser. ``SinkProcess`` starts it as a child process and reads its counters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import httpx

__all__ = ["SinkProcess", "SinkStats", "TokenBucket"]

Parse = Literal["json", "count"]
_ROOT = Path(__file__).resolve().parent.parent
_PATHS = ("/ingest", "/ingestBatch")
_BATCH_OK = b'{"errors":[]}'
_THROTTLED = b'{"message":"Rate limit exceeded"}'


@dataclass
class SinkStats:
    requests: int = 0
    """POST requests received (any answer)."""
    events: int = 0
    """Events in requests answered 202 (re-sent events counted again)."""
    distinct: int = 0
    """Distinct event ids answered 202 (only with ``--track-ids``)."""
    throttled: int = 0
    """Requests answered 429."""
    bad: int = 0
    """Requests answered 400 or 404 (unreadable body, unknown path)."""
    cpu: float = 0.0
    """The sink's CPU seconds so far."""

    def __sub__(self, other: SinkStats) -> SinkStats:
        return SinkStats(**{k: v - getattr(other, k) for k, v in asdict(self).items()})


class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` per second; one token per request."""

    def __init__(self, rate: float, capacity: float, now: float | None = None) -> None:
        self.rate = rate
        self.capacity = capacity
        self._tokens = capacity
        self._last = time.monotonic() if now is None else now

    def take(self, now: float | None = None) -> float:
        """0.0 if a token was taken, else the seconds until the next token."""
        now = time.monotonic() if now is None else now
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


def _response(status: str, body: bytes, extra: bytes = b"") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n".encode()
    kind = b"Content-Type: application/json\r\n" if body else b""
    return head + kind + extra + b"\r\n" + body


class Sink:
    """The server's state: counters, the distinct ids, and a token bucket per endpoint."""

    def __init__(
        self,
        latency: float = 0.0,
        quota: float | None = None,
        parse: Parse = "json",
        track_ids: bool = False,
    ) -> None:
        self.latency = latency
        self.parse: Parse = "json" if track_ids else parse
        self.stats = SinkStats()
        self.ids: set[str] | None = set() if track_ids else None
        self._buckets = {p: TokenBucket(quota, quota) for p in _PATHS} if quota else {}

    def _count(self, path: str, body: bytes) -> int | None:
        """Events in ``body``, or None if it is not a request body of ``path``."""
        if self.parse == "count":
            return body.count(b'"id":')
        try:
            document = json.loads(body)
            events = document["events"] if path == "/ingestBatch" else [document["event"]]
            if self.ids is not None:
                self.ids.update(e["id"] for e in events)
            return len(events)
        except (ValueError, KeyError, TypeError):
            return None

    async def handle(self, path: str, body: bytes) -> bytes:
        stats = self.stats
        stats.requests += 1
        if path not in _PATHS:
            stats.bad += 1
            return _response("404 Not Found", b'{"message":"no such path"}')
        bucket = self._buckets.get(path)
        if bucket is not None and (wait := bucket.take()) > 0:
            stats.throttled += 1
            retry_after = f"Retry-After: {max(1, math.ceil(wait))}\r\n".encode()
            return _response("429 Too Many Requests", _THROTTLED, retry_after)
        count = self._count(path, body)
        if count is None:
            stats.bad += 1
            return _response("400 Bad Request", b'{"message":"unreadable body"}')
        if self.latency:
            await asyncio.sleep(self.latency)
        stats.events += count
        return _response("202 Accepted", _BATCH_OK if path == "/ingestBatch" else b"")

    def stats_body(self) -> bytes:
        self.stats.cpu = time.process_time()
        self.stats.distinct = len(self.ids) if self.ids is not None else 0
        return json.dumps(asdict(self.stats)).encode()

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *lines = head[:-4].split(b"\r\n")
                method, target, _ = request_line.split(b" ", 2)
                length, close = 0, False
                for line in lines:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection":
                        close = value.strip().lower() == b"close"
                body = await reader.readexactly(length) if length else b""
                path = target.decode("ascii", "replace")
                if method == b"GET" and path == "/stats":
                    answer = _response("200 OK", self.stats_body())
                elif method == b"POST":
                    answer = await self.handle(path, body)
                else:
                    answer = _response("405 Method Not Allowed", b"")
                writer.write(answer)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except ValueError:  # a request line or header we cannot read
            writer.write(_response("400 Bad Request", b""))
        finally:
            writer.close()


async def _serve(sink: Sink) -> None:
    server = await asyncio.start_server(sink.serve_connection, "127.0.0.1", 0, backlog=128)
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}", flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = loop.create_future()

    def wait_for_eof() -> None:
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(stdin_closed.set_result, None)

    threading.Thread(target=wait_for_eof, daemon=True).start()
    async with server:
        await stdin_closed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sink", description=__doc__)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument("--quota", type=float, default=None, help="requests/s per endpoint")
    parser.add_argument("--parse", choices=["json", "count"], default="json")
    parser.add_argument("--track-ids", action="store_true")
    args = parser.parse_args(argv)
    asyncio.run(_serve(Sink(args.latency, args.quota, args.parse, args.track_ids)))


class SinkProcess:
    """The sink as a child process (its own interpreter, so its own GIL)::

    with SinkProcess(latency=0.05, quota=50) as sink:
        before = sink.stats()
        ...  # send to sink.url
        print(sink.stats() - before)
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        quota: float | None = None,
        parse: Parse = "json",
        track_ids: bool = False,
    ) -> None:
        self.args = ["--latency", str(latency), "--parse", parse]
        if quota is not None:
            self.args += ["--quota", str(quota)]
        if track_ids:
            self.args.append("--track-ids")
        self._process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> Self:
        command = [sys.executable, "-m", "bench.sink", *self.args]
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=_ROOT
        )
        assert self._process.stdout is not None
        self.url = self._process.stdout.readline().decode().strip()
        if not self.url.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the sink did not start: {self.args}")
        return self

    def stats(self) -> SinkStats:
        document: dict[str, Any] = httpx.get(f"{self.url}/stats", timeout=10).json()
        return SinkStats(**document)

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()  # the sink exits when its stdin closes
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


if __name__ == "__main__":
    main()
