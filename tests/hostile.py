"""A hostile HTTP server on 127.0.0.1 for the hardening tests: it answers each request with
whatever a script says, however wrong — any status, any body, any header, a body that never
ends, an answer trickled one byte at a time, the token echoed back.

The fault server (``tests/faultserver.py``) plays a faulty but honest Togai; this one plays a
proxy, a broken gateway or an attacker, so it does not check requests against the document.
It records every request (path, headers, body) for the tests to inspect.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One answer. ``body`` is sent after the headers; ``trickle`` seconds between bytes
    (headers and body); ``endless`` streams zeros after ``body`` without end (with a
    Content-Length of ``length`` if given); ``close`` drops the connection without answering."""

    status: int = 202
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
    trickle: float = 0.0
    endless: bool = False
    length: int | None = None
    close: bool = False


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def event_ids(self) -> list[str]:
        document = self.json()
        events = document.get("events") or [document.get("event")]
        return [e["id"] for e in events]


Script = Callable[[Request], Reply]


def replies(answers: Iterable[Reply], then: Reply = Reply()) -> Script:
    """A script answering with ``answers`` in order, then ``then`` forever."""
    iterator = iter(answers)
    lock = threading.Lock()

    def script(_request: Request) -> Reply:
        with lock:
            return next(iterator, then)

    return script


@dataclass
class HostileServer:
    script: Script = field(default_factory=lambda: replies([]))
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: socketserver.ThreadingTCPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HostileServer:
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                outer._serve(self.connection, self.rfile)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            block_on_close = False

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _serve(self, connection: socket.socket, rfile: Any) -> None:
        connection.settimeout(10)
        while not self._stopping.is_set():
            request = _read_request(rfile)
            if request is None:
                return
            with self._lock:
                self.requests.append(request)
            reply = self.script(request)
            if reply.close:
                return
            try:
                self._write(connection, reply)
            except OSError:
                return

    def _write(self, connection: socket.socket, reply: Reply) -> None:
        headers = [f"HTTP/1.1 {reply.status} Whatever"]
        headers += [f"{k}: {v}" for k, v in reply.headers]
        if reply.endless:
            headers.append(f"Content-Length: {reply.length or (1 << 40)}")
        else:
            headers.append(f"Content-Length: {len(reply.body)}")
        head = ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1")
        if reply.trickle:
            for byte in head + reply.body:
                if self._stopping.wait(reply.trickle):
                    return
                connection.sendall(bytes([byte]))
            return
        connection.sendall(head + reply.body)
        if reply.endless:
            block = b"0" * 65536
            while not self._stopping.is_set():
                connection.sendall(block)


def _read_request(rfile: Any) -> Request | None:
    try:
        line = rfile.readline(65537)
        if not line:
            return None
        parts = line.decode("latin-1").split()
        path = parts[1] if len(parts) > 1 else "/"
        headers: dict[str, str] = {}
        while True:
            header = rfile.readline(65537)
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = rfile.read(int(headers.get("content-length", "0")))
    except (OSError, ValueError):
        return None
    return Request(path, headers, body)


@contextlib.contextmanager
def serving(script: Script) -> Iterator[HostileServer]:
    with HostileServer(script) as server:
        yield server


def batch_errors(ids: Iterable[str | None], message: str = "bad") -> bytes:
    """A 207 body listing ``ids`` (None: an entry without ``eventPayload``)."""
    errors: list[dict[str, Any]] = []
    for event_id in ids:
        entry: dict[str, Any] = {"message": message}
        if event_id is not None:
            entry["eventPayload"] = {"id": event_id}
        errors.append(entry)
    return json.dumps({"errors": errors}).encode()


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
