"""A fast stand-in for Togai's ``POST /ingestBatch``, run in its own process by the benchmark.

``python -m bench.sink [--latency S] [--quota N] [--parse json|count] [--track-ids]`` answers
``POST /ingestBatch`` with 202 ``{"errors":[]}`` on a free port of 127.0.0.1, prints
``http://127.0.0.1:PORT`` as its first line and serves until its stdin closes. ``GET /stats``
answers the counters and the sink's own CPU seconds (so the benchmark can show that the sink
is not the bottleneck).

- ``--latency S``: every accepted request is answered S seconds late (other connections
  proceed meanwhile).
- ``--quota N``: the API gateway's quota, a ``TokenBucket`` of N tokens refilled at N per
  second; a request finding it empty gets 429 with ``Retry-After`` (whole seconds) at once.
- ``--parse json`` (default) parses every body; ``count`` counts ``"id":`` keys instead.
- ``--track-ids`` keeps the distinct event ids, to tell lost events from re-sent ones (it
  implies ``--parse json``).

Standard library only: ``asyncio.start_server`` and a minimal HTTP/1.1 keep-alive parser.
``SinkProcess`` starts it as a child process and reads its counters.
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
from typing import Literal, Self

import httpx

__all__ = ["Parse", "SinkProcess", "SinkStats", "TokenBucket"]

Parse = Literal["json", "count"]
_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class SinkStats:
    requests: int = 0
    """Requests received but ``GET /stats`` (any answer)."""
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
    """A server's request quota: ``capacity`` tokens, refilled at ``rate`` per second, one per
    request. The server side of every quota here (this sink and ``tests/faultserver.py``),
    written apart from the client's limiters so that the benchmark and the tests never
    measure the client against itself."""

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


def _response(status: str, body: bytes = b"", extra: str = "") -> bytes:
    kind = "Content-Type: application/json\r\n" if body else ""
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{kind}{extra}\r\n".encode() + body


class Sink:
    """The server's state: the counters, the distinct ids, the quota's bucket."""

    def __init__(self, latency: float, quota: float | None, parse: Parse, track_ids: bool) -> None:
        self.latency = latency
        self.parse: Parse = "json" if track_ids else parse
        self.stats = SinkStats()
        self.ids: set[str] | None = set() if track_ids else None
        self.bucket = TokenBucket(quota, quota) if quota else None

    def _count(self, body: bytes) -> int | None:
        """Events in ``body``, or None if it is not a batch."""
        if self.parse == "count":
            return body.count(b'"id":')
        try:
            events = json.loads(body)["events"]
            if self.ids is not None:
                self.ids.update(e["id"] for e in events)
            return len(events)
        except (ValueError, KeyError, TypeError):
            return None

    async def handle(self, path: str, body: bytes) -> bytes:
        self.stats.requests += 1
        if path != "/ingestBatch":
            self.stats.bad += 1
            return _response("404 Not Found", b'{"message":"no such path"}')
        if self.bucket is not None and (wait := self.bucket.take()) > 0:
            self.stats.throttled += 1
            return _response(
                "429 Too Many Requests",
                b'{"message":"Rate limit exceeded"}',
                f"Retry-After: {max(1, math.ceil(wait))}\r\n",
            )
        count = self._count(body)
        if count is None:
            self.stats.bad += 1
            return _response("400 Bad Request", b'{"message":"unreadable body"}')
        if self.latency:
            await asyncio.sleep(self.latency)
        self.stats.events += count
        return _response("202 Accepted", b'{"errors":[]}')

    def stats_body(self) -> bytes:
        self.stats.cpu = time.process_time()
        self.stats.distinct = len(self.ids) if self.ids is not None else 0
        return json.dumps(asdict(self.stats)).encode()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One keep-alive connection: requests with a ``Content-Length`` body, in turn."""
        try:
            while True:
                request_line, *lines = (await reader.readuntil(b"\r\n\r\n"))[:-4].split(b"\r\n")
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
                    writer.write(_response("200 OK", self.stats_body()))
                else:
                    writer.write(await self.handle(path, body))
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except ValueError:  # a request line or header we cannot read
            writer.write(_response("400 Bad Request"))
        finally:
            writer.close()


async def _serve(sink: Sink) -> None:
    server = await asyncio.start_server(sink.serve, "127.0.0.1", 0, backlog=128)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
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
    parser.add_argument("--quota", type=float, default=None, help="requests/s")
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
        self.args += ["--quota", str(quota)] if quota is not None else []
        self.args += ["--track-ids"] if track_ids else []
        self._process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> Self:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.sink", *self.args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=_ROOT,
        )
        assert self._process.stdout is not None
        self.url = self._process.stdout.readline().decode().strip()
        if not self.url.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the sink did not start: {self.args}")
        return self

    def stats(self) -> SinkStats:
        return SinkStats(**httpx.get(f"{self.url}/stats", timeout=10).json())

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None and process.stdout is not None
        process.stdin.close()  # the sink exits when its stdin closes
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    main()
