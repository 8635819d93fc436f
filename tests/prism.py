"""Run Prism (the Stoplight mock server) on the OpenAPI document, and check what it reports.

Usable from pytest (see tests/contract/conftest.py) and from plain Python::

    from tests.prism import PrismServer

    with PrismServer() as prism:
        httpx.post(f"{prism.url}/ingest", ...)

How Prism 5.16 reports a request that breaks the document (found by trying it):

* Prism validates every request (body schema, formats, required body, content type, security)
  whether or not ``--errors`` is given, and lists what it found in an ``sl-violations``
  response header: a JSON array of ``{"location": [...], "severity": "Error", "code": ...,
  "message": ...}``. A valid request gets no such header.
* An invalid body is answered 422 (the document declares a 422) with the document's 422
  *example* body, so the status and body alone cannot tell a violation from a mocked 422.
  It is answered 422 even when the request asks for another status with ``Prefer: code=...``.
* A missing or non-bearer ``Authorization`` header is answered 401 with
  ``sl-violations: [{"location": ["request"], "code": 401, ...}]``.
* Unknown paths and methods are answered 404/405 with ``application/problem+json`` whose
  ``type`` starts with ``https://stoplight.io/prism/errors#``, and no ``sl-violations`` header.
* Gaps: a body sent as ``Content-Type: text/plain`` is accepted (202, no violation), and a
  body that is not JSON at all gets no answer (the connection hangs). The recorder below
  therefore also checks the request's content type itself, and clients must use a timeout.

``--errors`` additionally turns *response* violations (a mocked response that does not match
its schema) into error responses; it is on by default here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import httpx

from tests.openapi import (
    JSON_MEDIA_TYPE,
    REPO_ROOT,
    SPEC_PATH,
    SchemaValidator,
    json_pointer,
    load,
    resolve_in,
    validator_for,
)

__all__ = [
    "JSON_MEDIA_TYPE",
    "PRISM_BIN",
    "REPO_ROOT",
    "SPEC_PATH",
    "Exchange",
    "PrismNotInstalledError",
    "PrismServer",
    "PrismStartupError",
    "SchemaValidator",
    "Violation",
    "ViolationRecorder",
    "free_port",
    "json_pointer",
    "load_spec",
    "resolve",
    "schema_keyword",
    "schema_validator",
    "violations_of",
]

PRISM_BIN = REPO_ROOT / "mock" / "node_modules" / ".bin" / "prism"
VIOLATIONS_HEADER = "sl-violations"
PRISM_PROBLEM_PREFIX = "https://stoplight.io/prism/errors#"

# The document helpers below keep the contract tests' spelling (the document passed in);
# they are thin wrappers of tests/openapi.py, which reads the document once.


def load_spec(path: Path = SPEC_PATH) -> dict[str, Any]:
    """The OpenAPI document as plain data, parsed once (shared: copy it before changing it)."""
    return load(path).data


def resolve(spec: dict[str, Any], node: Any) -> Any:
    """Follow a local `$ref` (and chains of them) within the document."""
    return resolve_in(spec, node)


def schema_keyword(spec: dict[str, Any], schema: str, prop: str, keyword: str) -> Any:
    """A keyword of a property of a component schema, e.g. ("Event", "id", "maxLength")."""
    node = resolve_in(spec, spec["components"]["schemas"][schema]["properties"][prop])
    if keyword not in node:
        raise KeyError(f"components/schemas/{schema}/properties/{prop} has no {keyword}")
    return node[keyword]


def schema_validator(spec: dict[str, Any], pointer: str) -> SchemaValidator:
    """An OpenAPI 3.0 schema validator (date-time etc. checked) for the schema at `pointer`;
    `$ref`s resolve within the document (cached for the checked-in document)."""
    document = load()
    if spec is document.data:
        return document.validator(pointer)
    return validator_for(spec, pointer)


class PrismNotInstalledError(RuntimeError):
    """mock/node_modules (or node itself) is missing."""


class PrismStartupError(RuntimeError):
    """Prism exited or did not answer in time; the message carries its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on `host` a moment ago (the caller retries if it is taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class PrismServer:
    """One `prism mock` process serving `spec` on `host`:`port` (a free port by default).

    `start()` returns once Prism answers HTTP; `stop()` ends the process (and only it: Prism
    runs in its own process group, which is signalled by its id). Both are idempotent.
    """

    def __init__(
        self,
        spec: Path = SPEC_PATH,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        prism_bin: Path = PRISM_BIN,
        errors: bool = True,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 30.0,
    ) -> None:
        self.spec = Path(spec)
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self.prism_bin = Path(prism_bin)
        self.errors = errors
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None or self._process is None:
            raise RuntimeError("Prism is not running; call start() or use `with PrismServer()`")
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        """Everything Prism printed so far (stdout and stderr)."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode("utf-8", errors="replace")

    def _check_installed(self) -> None:
        if not self.prism_bin.exists():
            raise PrismNotInstalledError(
                f"Prism is not installed: {self.prism_bin} does not exist. "
                "Run `make node` (it runs `npm ci --prefix mock`) and try again."
            )
        if shutil.which("node") is None:
            raise PrismNotInstalledError(
                "`node` is not on PATH; Prism needs Node.js. Install Node.js, then run `make node`."
            )
        if not self.spec.is_file():
            raise FileNotFoundError(f"OpenAPI document not found: {self.spec}")

    def start(self) -> Self:
        if self._process is not None:
            return self
        self._check_installed()
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(attempts):
            port = self._requested_port or free_port(self.host)
            try:
                self._spawn(port)
                return self
            except PrismStartupError as error:
                log = self.log()
                self.stop()
                if "EADDRINUSE" in log and attempt + 1 < attempts:
                    continue  # another process took the port in between: try another one
                raise error from None
        raise AssertionError("unreachable")

    def _spawn(self, port: int) -> None:
        command = [str(self.prism_bin), "mock", "-h", self.host, "-p", str(port)]
        if self.errors:
            command.append("--errors")
        command += [*self.extra_args, str(self.spec)]
        self._log = tempfile.TemporaryFile(prefix="prism-", suffix=".log")  # noqa: SIM115
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        self.port = port
        deadline = time.monotonic() + self.startup_timeout
        url = f"http://{self.host}:{port}/"
        while True:
            code = self._process.poll()
            if code is not None:
                raise PrismStartupError(
                    f"Prism exited with status {code} before answering on {url}.\n"
                    f"Command: {' '.join(command)}\nLog:\n{self.log()}"
                )
            with contextlib.suppress(httpx.TransportError):
                # Any HTTP answer (404 for "/") means Prism has loaded the document.
                httpx.get(url, timeout=1.0, trust_env=False)
                return
            if time.monotonic() > deadline:
                raise PrismStartupError(
                    f"Prism did not answer on {url} within {self.startup_timeout} s.\n"
                    f"Command: {' '.join(command)}\nLog:\n{self.log()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)  # Prism's own group, by its id
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        self.port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class Violation:
    """One problem with one request, as Prism (or the local content-type check) reported it."""

    location: tuple[str, ...]
    severity: str
    code: str
    message: str

    def __str__(self) -> str:
        return f"[{self.severity}] {'.'.join(self.location)}: {self.message} (code {self.code})"


def violations_of(response: httpx.Response) -> list[Violation]:
    """What is wrong with the request behind `response`, as far as we can tell; [] if nothing.

    Fails closed: a `sl-violations` header that cannot be parsed, and a Prism problem response
    (no route / no method), count as violations too.
    """
    found: list[Violation] = []
    for raw in response.headers.get_list(VIOLATIONS_HEADER):
        try:
            entries = json.loads(raw)
            if not isinstance(entries, list):
                raise ValueError("not a list")
            for entry in entries:
                found.append(
                    Violation(
                        location=tuple(str(part) for part in entry.get("location", [])),
                        severity=str(entry.get("severity", "?")),
                        code=str(entry.get("code", "?")),
                        message=str(entry.get("message", "")),
                    )
                )
        except (ValueError, AttributeError, TypeError):
            found.append(Violation(("response", "header"), "Error", "unparsable", raw))
    if response.headers.get("content-type", "").startswith("application/problem+json"):
        try:
            problem: Any = json.loads(response.content) if response.is_stream_consumed else None
        except ValueError:
            problem = None
        kind = problem.get("type", "") if isinstance(problem, dict) else ""
        if not isinstance(problem, dict) or str(kind).startswith(PRISM_PROBLEM_PREFIX):
            found.append(
                Violation(("request",), "Error", str(kind or "problem"), str(problem or "Prism"))
            )
    request = response.request
    if request.method in {"POST", "PUT", "PATCH"}:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != JSON_MEDIA_TYPE:
            # Prism 5.16 accepts `text/plain` bodies silently; the document only allows JSON.
            found.append(
                Violation(
                    ("request", "header", "content-type"),
                    "Error",
                    "content-type",
                    f"body sent as {media_type or 'no content type'!r}, not {JSON_MEDIA_TYPE}",
                )
            )
    return found


@dataclass
class Exchange:
    """One request the client sent and what came back."""

    method: str
    url: str
    status_code: int
    request_headers: httpx.Headers
    request_body: bytes
    violations: list[Violation]

    def json_body(self) -> Any:
        return json.loads(self.request_body)

    def __str__(self) -> str:
        lines = [f"{self.method} {self.url} -> {self.status_code}"]
        lines += [f"    {violation}" for violation in self.violations]
        return "\n".join(lines)


@dataclass
class ViolationRecorder:
    """Records every response of the httpx clients it is attached to, with its violations.

    Attach with ``httpx.Client(event_hooks=recorder.sync_hooks())`` or
    ``httpx.AsyncClient(event_hooks=recorder.async_hooks())`` (or through the generated
    client's ``httpx_args={"event_hooks": ...}``).
    """

    exchanges: list[Exchange] = field(default_factory=list)

    def record(self, response: httpx.Response) -> None:
        if response.headers.get("content-type", "").startswith("application/problem+json"):
            response.read()  # small; lets violations_of() look at the problem's type
        request = response.request
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = b""
        self.exchanges.append(
            Exchange(
                method=request.method,
                url=str(request.url),
                status_code=response.status_code,
                request_headers=request.headers,
                request_body=body,
                violations=violations_of(response),
            )
        )

    async def arecord(self, response: httpx.Response) -> None:
        if response.headers.get("content-type", "").startswith("application/problem+json"):
            await response.aread()
        self.record(response)

    def sync_hooks(self) -> dict[str, list[Any]]:
        return {"response": [self.record]}

    def async_hooks(self) -> dict[str, list[Any]]:
        return {"response": [self.arecord]}

    @property
    def violations(self) -> list[Violation]:
        return [violation for exchange in self.exchanges for violation in exchange.violations]

    def take_violations(self) -> list[Violation]:
        """Return the violations recorded so far and forget them (for expected violations)."""
        taken = self.violations
        for exchange in self.exchanges:
            exchange.violations = []
        return taken

    def assert_clean(self) -> None:
        """Raise AssertionError naming every request that Prism reported a violation for."""
        bad = [exchange for exchange in self.exchanges if exchange.violations]
        if bad:
            report = "\n".join(str(exchange) for exchange in bad)
            raise AssertionError(
                f"Prism reported violations for {len(bad)} of {len(self.exchanges)} "
                f"request(s):\n{report}"
            )
