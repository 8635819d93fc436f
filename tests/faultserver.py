"""A fault-injecting stand-in for Togai's ingestion API, for reliability tests of the client.

``FaultServer`` serves ``POST /ingest`` and ``POST /ingestBatch`` on a free port of 127.0.0.1
from a background thread. It checks every request against ``openapi/togai-ingestion.yaml``
(bearer token, ``application/json``, the operation's requestBody schema with date-time
formats), follows a script of faults (one action per request, plain success after the script
runs out) and keeps a ledger that deduplicates event ids the way Togai does::

    with FaultServer(token="t0k3n", script=mixed_script(seed=7, n=300),
                     reject_if=IdSample(one_in=97)) as srv:
        outcome = send_everything(srv.url, token="t0k3n", events=events)  # the client under test

How a reliability test checks "zero lost, zero metered twice" after the client is done:

- ``srv.violations == []``: the client never sent a request the API would refuse.
- Zero lost: every id the test sent is in ``srv.ledger`` (exactly once, as it is a dict) or was
  reported by the client as rejected/failed; ids in ``srv.rejected_ids`` were answered as
  rejected and must be among those the client reports.
- Zero metered twice: the ledger meters an id once whatever happens, so the check is on the
  client's re-sends: ``srv.deliveries[id] > 1`` only for ids in ``srv.ambiguous_ids``, the ids
  of requests that were metered although the client could not know (reset after processing,
  an answer slower than its timeout, a 504 after processing). Re-sending exactly those is
  allowed and expected. ``srv.requests`` logs every request for the error message.

The counters are updated under a lock; read them once the client has finished.

The actions (``Ok``, ``Throttle``, ``mixed_script``, ...) and the answers they give live in
``tests/faults.py`` and are importable from here too; this module is the HTTP side: the server,
the request checks against the document (``tests/openapi.py``) and the ledger.
"""

from __future__ import annotations

import contextlib
import json
import math
import select
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from bench.sink import TokenBucket
from tests import openapi
from tests.actor import ACTOR_HEADER
from tests.faults import (
    Action,
    BadGateway,
    Canned,
    EmptyAccept,
    Error,
    Event,
    GarbageAccept,
    GatewayTimeout,
    Headers,
    IdSample,
    Metering,
    Odd,
    Ok,
    Reject,
    ResetAfter,
    ResetBefore,
    Slow,
    Throttle,
    Unavailable,
    json_bytes,
    metered_answer,
    mixed_script,
    unavailable_burst,
)

__all__ = [  # the actions are re-exported: tests import everything from here
    "Action",
    "BadGateway",
    "EmptyAccept",
    "Error",
    "FaultServer",
    "GarbageAccept",
    "GatewayTimeout",
    "IdSample",
    "Odd",
    "Ok",
    "RateLimited",
    "Reject",
    "RequestRecord",
    "ResetAfter",
    "ResetBefore",
    "Slow",
    "Throttle",
    "Unavailable",
    "check_request",
    "mixed_script",
    "request_schema_pointer",
    "schema_errors",
    "unavailable_burst",
]

BODY_KEY = {"/ingest": "event", "/ingestBatch": "events"}
MAX_BODY = 16 * 1024 * 1024


# --- Checking requests against the OpenAPI document.


def schema_errors(instance: object, pointer: str) -> list[str]:
    """Violations of the schema at JSON ``pointer`` of the OpenAPI document, e.g.
    ``/components/schemas/IngestBatchEventResponse``; one ``"$.path: message"`` each."""
    errors = openapi.validator(pointer).iter_errors(instance)
    return sorted(f"{error.json_path}: {_shorten(error.message)}" for error in errors)


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def request_schema_pointer(path: str) -> str:
    return openapi.load().request_schema_pointer(path)


def check_request(
    command: str, target: str, headers: Message, body: bytes | None, token: str
) -> tuple[int | None, list[str]]:
    """The status to refuse a request with (None: go on) and the protocol violations found.
    A well-formed bearer token that is not ``token`` is refused but is no violation."""
    where = f"{command} {target}"
    path = urlsplit(target).path
    if body is None:
        return 400, [f"{where}: no valid Content-Length (or a body over {MAX_BODY} bytes)"]
    if path not in BODY_KEY:
        return 404, [f"{where}: unknown path"]
    scheme, _, credential = headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credential:
        return 401, [f"{where}: no 'Authorization: Bearer <token>' header"]
    if credential != token:
        return 401, []
    found = []
    media_type, _, parameters = headers.get("Content-Type", "").partition(";")
    if media_type.strip().lower() != "application/json":
        found.append(f"{where}: Content-Type is {headers.get('Content-Type')!r}")
    if "charset" in parameters.lower() and "utf-8" not in parameters.lower():
        found.append(f"{where}: Content-Type charset is not utf-8: {parameters!r}")
    try:
        document = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except ValueError as error:
        found.append(f"{where}: body is not UTF-8 JSON: {error}")
    else:
        errors = schema_errors(document, request_schema_pointer(path))
        found += [f"{where}: {error}" for error in errors]
    return (400 if found else None), found


# --- The server.


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it. ``status`` is None when no answer was sent (reset);
    ``seen`` tells whether the client could have received the answer; ``metered`` whether
    events of the request entered the ledger (``metered_ids``: which ones)."""

    path: str
    status: int | None
    action: str
    event_ids: tuple[str, ...]
    metered: bool
    seen: bool
    metered_ids: tuple[str, ...] = ()
    rejected_ids: tuple[str, ...] = ()
    started: float = 0.0  # time.monotonic() when the request line arrived
    actor: str = ""  # the request's X-Test-Actor header: which test process sent it


@dataclass(frozen=True)
class RateLimited:
    """Stands for a request refused by ``max_requests_per_second``; takes no script action."""

    retry_after: int


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, fault: FaultServer) -> None:
        self.fault = fault
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client hanging up is no news
            super().handle_error(request, client_address)


class FaultServer:
    """See the module docstring. ``token``: the bearer token to accept. ``script``: actions,
    one per request, then ``Ok``. ``reject_if``: ids the server always rejects (207 entry, or
    400 on ``/ingest``) on actions that can say so. ``max_requests_per_second``: the quota, a
    ``bench.sink.TokenBucket`` (the benchmark sink's) of as many tokens refilled at that rate;
    a request finding it empty gets 429 with an integer Retry-After (no script action used).
    ``latency``: seconds added to every answer. ``client_timeout``: if given, an answer of
    metered events that came at least this long (less 50 ms) after the request started counts
    as unseen (its events ambiguous), as the client may have given up; without it, only a
    client that has already hung up by the time of the answer counts as not seeing it."""

    def __init__(
        self,
        token: str = "t0k3n",
        script: Iterable[Action] = (),
        *,
        reject_if: Callable[[str], bool] | None = None,
        max_requests_per_second: float | None = None,
        latency: float = 0.0,
        client_timeout: float | None = None,
    ) -> None:
        self.token = token
        self.reject_if = reject_if
        self.latency = latency
        self.client_timeout = client_timeout
        self.violations: list[str] = []
        self.ledger: dict[str, Event] = {}
        self.deliveries: Counter[str] = Counter()
        self.rejected_ids: set[str] = set()
        self.ambiguous_ids: set[str] = set()
        self.requests: list[RequestRecord] = []
        self.arrivals = 0  # requests whose request line arrived; counted before any answer
        self.lock = threading.Lock()
        self._script: Iterator[Action] = iter(script)
        self._bucket = (
            TokenBucket(max_requests_per_second, max_requests_per_second)
            if max_requests_per_second
            else None
        )
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._httpd: _HTTPServer | None = None
        self._serving: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("FaultServer is not running")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> FaultServer:
        openapi.validator(request_schema_pointer("/ingest"))  # fail here, not in a handler thread
        self._stopping.clear()
        self._httpd = _HTTPServer(self)
        self._serving = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._serving.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, wake sleeping actions, cut open connections; wait ``timeout`` at most."""
        if self._httpd is None or self._serving is None:
            return
        deadline = time.monotonic() + timeout
        with self.lock:
            self._stopping.set()
            connections, threads = list(self._connections), list(self._threads)
        self._httpd.shutdown()
        for connection in connections:
            _shutdown(connection)
        self._httpd.server_close()
        for thread in [self._serving, *threads]:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._httpd = self._serving = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # Called by the handler threads.

    def _register(self, connection: socket.socket, add: bool) -> bool:
        with self.lock:
            if add:
                self._connections.add(connection)
                self._threads.add(threading.current_thread())
            else:
                self._connections.discard(connection)
                self._threads.discard(threading.current_thread())
            return not self._stopping.is_set()

    def _next_action(self) -> Action | RateLimited:
        with self.lock:
            if self._bucket is not None and (wait := self._bucket.take()) > 0:
                return RateLimited(max(1, math.ceil(wait)))
            return next(self._script, Ok())

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _meter(self, events: list[Event], skip: set[int]) -> tuple[str, ...]:
        """Meter the events not at a position in ``skip``; call with the lock held."""
        metered = []
        for position, event in enumerate(events):
            if position not in skip:
                self.ledger.setdefault(event["id"], event)
                self.deliveries[event["id"]] += 1
                metered.append(event["id"])
        return tuple(metered)

    def _rejections(self, action: Action, events: list[Event]) -> dict[int, str]:
        """Positions of the events to reject, with why; call with the lock held."""
        rejected = {}
        for position, event in enumerate(events):
            if event["id"] in self.ledger:
                continue
            if self.reject_if is not None and self.reject_if(event["id"]):
                rejected[position] = "Event rejected: the server always rejects this id"
            elif isinstance(action, Reject) and action.rejects(position, event["id"]):
                rejected[position] = action.message
        return rejected


def _shutdown(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stalls
    server: _HTTPServer

    @property
    def fault(self) -> FaultServer:
        return self.server.fault

    def setup(self) -> None:
        super().setup()
        if not self.fault._register(self.connection, add=True):
            _shutdown(self.connection)

    def finish(self) -> None:
        self.fault._register(self.connection, add=False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        if parsed:
            with self.fault.lock:
                self.fault.arrivals += 1
        return parsed

    def do_POST(self) -> None:
        started = time.monotonic()
        path = urlsplit(self.path).path
        action = self.fault._next_action()
        if isinstance(action, ResetBefore):
            self.rfile.read(min((self._content_length() or 0) // 2, 65536))
            self._reset()
            self._log(path, None, action, [], (), seen=False, started=started)
            return
        body = self._read_body()
        if body is not None and len(body) < (self._content_length() or 0):
            # The client went away mid-body (killed, or its timeout): nothing to answer or
            # meter, and no violation: the request never arrived whole.
            self.close_connection = True
            self._log(path, None, action, [], (), seen=False, started=started)
            return
        events = _events(path, body)
        status, violations = check_request(
            self.command, self.path, self.headers, body, self.fault.token
        )
        if status is None:
            self._perform(path, action, events, started)
            return
        with self.fault.lock:
            self.fault.violations += violations
        headers = [("Content-Type", "application/json")]
        if status == 401:
            headers.append(("WWW-Authenticate", "Bearer"))
        message = "; ".join(violations) or "Invalid bearer token"
        self.fault._sleep(self.fault.latency)
        seen = self._send(status, headers, json_bytes({"message": message[:500]}))
        self._log(path, status, action, events, (), seen=seen, started=started)

    def do_GET(self) -> None:
        violation = f"{self.command} {self.path}: method not allowed"
        with self.fault.lock:
            self.fault.violations.append(violation)
        body = b"" if self.command == "HEAD" else json_bytes({"message": violation})
        self.close_connection = True
        self._send(405, [("Content-Type", "application/json"), ("Allow", "POST")], body)
        self._log(urlsplit(self.path).path, 405, None, [], (), True, time.monotonic())

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    def _content_length(self) -> int | None:
        try:
            return int(self.headers["Content-Length"])
        except (TypeError, ValueError):
            return None

    def _read_body(self) -> bytes | None:
        length = self._content_length()
        if length is None or not 0 <= length <= MAX_BODY:
            self.close_connection = True
            return None
        return self.rfile.read(length)

    def _perform(
        self, path: str, action: Action | RateLimited, events: list[Event], started: float
    ) -> None:
        if isinstance(action, RateLimited):
            answer = Throttle(retry_after=action.retry_after).answer()
        elif isinstance(action, Canned):
            answer = action.answer()
        elif isinstance(action, GatewayTimeout) and not action.metered:
            answer = 504, [], b""
        elif isinstance(action, ResetBefore):
            raise AssertionError("ResetBefore is done before the body is read")
        else:
            self._perform_metered(path, action, events, started)
            return
        self.fault._sleep(self.fault.latency)
        seen = self._send(*answer)
        self._log(path, answer[0], action, events, (), seen=seen, started=started)

    def _perform_metered(
        self, path: str, action: Metering, events: list[Event], started: float
    ) -> None:
        """Meter, wait (latency, Slow), answer; note what the client could not have seen."""
        fault = self.fault
        with fault.lock:
            rejections = fault._rejections(action, events)
            metered_ids = fault._meter(events, skip=set(rejections))
        fault._sleep(fault.latency + (action.seconds if isinstance(action, Slow) else 0.0))
        status, headers, body = metered_answer(action, path, rejections, events)
        reported = not isinstance(action, ResetAfter | GatewayTimeout)  # rejections were told
        written = status is not None and self._send(status, headers, body)
        if status is None:
            self._reset()
        # The client's timer started after the request line came: "late" errs on the safe side.
        late = fault.client_timeout is not None and (
            time.monotonic() - started >= fault.client_timeout - 0.05
        )
        seen = written and not late
        rejected_ids = tuple(events[position]["id"] for position in rejections) if reported else ()
        with fault.lock:
            if written:
                fault.rejected_ids.update(rejected_ids)
            if not seen or status is None or not 200 <= status < 300:
                fault.ambiguous_ids.update(metered_ids)
        self._log(path, status, action, events, metered_ids, seen, started, rejected_ids)

    def _send(self, status: int, headers: Headers, body: bytes) -> bool:
        """Answer; False if the client had gone, the server is stopping or writing failed."""
        if self.fault._stopping.is_set() or _peer_gone(self.connection):
            self.close_connection = True
            return False
        try:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return True
        except OSError:
            self.close_connection = True
            return False

    def _reset(self) -> None:
        """Close the connection with an RST (SO_LINGER 0) instead of a FIN."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # the socket really closes once its file objects are closed
        self.connection.close()

    def _log(
        self,
        path: str,
        status: int | None,
        action: Action | RateLimited | None,
        events: list[Event],
        metered_ids: tuple[str, ...],
        seen: bool,
        started: float,
        rejected_ids: tuple[str, ...] = (),
    ) -> None:
        record = RequestRecord(
            path=path,
            status=status,
            action="MethodNotAllowed" if action is None else type(action).__name__,
            event_ids=tuple(str(event.get("id")) for event in events),
            metered=bool(metered_ids),
            seen=seen,
            metered_ids=metered_ids,
            rejected_ids=rejected_ids,
            started=started,
            actor=self.headers.get(ACTOR_HEADER, ""),
        )
        with self.fault.lock:
            self.fault.requests.append(record)


def _events(path: str, body: bytes | None) -> list[Event]:
    """The events of a request body, best effort (only dicts, as far as it parses)."""
    try:
        document = json.loads(body or b"")
    except ValueError:
        return []
    if not isinstance(document, dict):
        return []
    found = document.get(BODY_KEY.get(path, ""))
    items = found if isinstance(found, list) else [found]
    return [item for item in items if isinstance(item, dict)]


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _peer_gone(connection: socket.socket) -> bool:
    """True if the client closed or reset the connection (it sends nothing while it waits)."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        return bool(readable) and connection.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True
