"""``Client`` and ``AsyncClient``: validated, retried, rate-limited ingestion.

Both build on the generated ``togai_client.Client`` (its httpx configuration) and send JSON
that the generated models and the OpenAPI document define. ``send`` takes any iterable of
events, cuts it into batches of at most the document's ``maxItems`` and streams it: memory
does not grow with the input.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import weakref
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from importlib import metadata
from typing import Any, Self

import httpx
import togai_client

from .errors import (
    APIError,
    AuthenticationError,
    PayloadTooLargeError,
    TogaiError,
    ValidationError,
    error_from_response,
)
from .ratelimit import RateLimiter
from .request import (
    BearerAuth,
    PreparedBatch,
    check_transport,
    encode,
    prepare,
    read_batch,
    transport_error,
)
from .results import BatchOutcome, SendResult
from .retry import RetryPolicy, retry_async, retry_sync
from .spec import spec
from .validation import EventLike, to_wire

__all__ = ["DEFAULT_CONCURRENCY", "DEFAULT_TIMEOUT", "AsyncClient", "Client", "SendAbortedError"]

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
"""Connect within 5 s; read, write and pool waits within 30 s."""
DEFAULT_CONCURRENCY = 4
"""Requests in flight in ``AsyncClient.send``: enough to fill Togai's quota at ~80 ms a request."""

_DEFAULT = object()
_TOKEN_ENV = "TOGAI_API_TOKEN"
_URL_ENV = "TOGAI_BASE_URL"
OnBatch = Callable[[BatchOutcome], None]


class SendAbortedError(TogaiError):
    """``send`` stopped: the token was refused. ``result`` holds what was done until then;
    events after ``result.total`` were not read from the input."""

    def __init__(self, result: SendResult, cause: APIError) -> None:
        super().__init__(f"send stopped after {result.total} events: {cause}")
        self.result = result
        self.cause = cause


def _user_agent() -> str:
    try:
        version = metadata.version("togai-ingestion-client")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        version = "dev"
    return f"togai-ingestion-client/{version} httpx/{httpx.__version__}"


class _Base:
    """Settings and decisions shared by the sync and async clients."""

    def __init__(
        self,
        token: str | None = None,
        *,
        base_url: str | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        rate_limit: float | object | None = _DEFAULT,
        allow_insecure_http: bool = False,
        httpx_args: dict[str, Any] | None = None,
    ) -> None:
        token = token if token is not None else os.environ.get(_TOKEN_ENV)
        if not token:
            raise TogaiError(f"no API token: pass token=... or set {_TOKEN_ENV}")
        self.base_url = base_url or os.environ.get(_URL_ENV) or spec().default_server
        check_transport(httpx.URL(self.base_url), allow_insecure_http)
        self.retry = retry if retry is not None else RetryPolicy()
        per_second = spec().requests_per_second if rate_limit is _DEFAULT else rate_limit
        if per_second is not None and not isinstance(per_second, int | float):
            raise TypeError("rate_limit must be a number of requests per second, or None")
        self.rate_limiter = RateLimiter(per_second) if per_second else None
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.max_batch_size = spec().max_batch_size
        self.min_batch_size = spec().min_batch_size
        self._batch_path = spec().path_of("ingestBatch")
        self._event_path = spec().path_of("ingest")
        self._auth = BearerAuth(token, allow_insecure_http)
        self._httpx_args = httpx_args or {}
        self._api = self._generated_client()
        _live_clients.add(self)

    def _reset_after_fork(self) -> None:
        """A forked child must not share the parent's sockets or locks."""
        self._api = self._generated_client()
        if self.rate_limiter is not None:
            self.rate_limiter = RateLimiter(self.rate_limiter.per_second)

    def _generated_client(self) -> togai_client.Client:
        return togai_client.Client(
            base_url=self.base_url,
            timeout=self.timeout,
            headers={
                "Accept": "application/json",
                "Content-Type": "application/json",
                "User-Agent": _user_agent(),
            },
            httpx_args={"auth": self._auth, **self._httpx_args},
        )

    def _batch_size(self, batch_size: int | None) -> int:
        size = batch_size or self.max_batch_size
        if not 1 <= size <= self.max_batch_size:
            raise ValueError(f"batch_size must be 1 to {self.max_batch_size} (the API's maxItems)")
        return size

    def _one_batch(self, events: Iterable[EventLike]) -> tuple[PreparedBatch, BatchOutcome]:
        """``ingest_batch``'s batch: the size and every event checked before sending."""
        chunk = list(events)
        self._check_size(chunk)
        batch = prepare(chunk, 0)
        if batch.invalid:
            raise batch.invalid[0].error
        return batch, batch.outcome()

    def _check_size(self, events: list[Any]) -> None:
        if len(events) > self.max_batch_size:
            raise ValidationError(
                "events", f"more than {self.max_batch_size} items", self.max_batch_size
            )
        if len(events) < self.min_batch_size:
            raise ValidationError(
                "events", f"fewer than {self.min_batch_size} items", self.min_batch_size
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, retry={self.retry!r})"


_live_clients: weakref.WeakSet[_Base] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_live_clients):
        client._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _chunks(events: Iterable[EventLike], size: int) -> Iterator[tuple[int, list[EventLike]]]:
    iterator = iter(events)
    start = 0
    while chunk := list(itertools.islice(iterator, size)):
        yield start, chunk
        start += len(chunk)


def _fatal(error: APIError) -> bool:
    return isinstance(error, AuthenticationError)


def _splittable(error: APIError, batch: PreparedBatch) -> bool:
    """A batch too large for the server (422) is sent again as two halves."""
    return isinstance(error, PayloadTooLargeError) and len(batch.wire) > 1


class Client(_Base):
    """Synchronous ingestion client. Thread-safe; use one per process.

    ``token`` defaults to ``$TOGAI_API_TOKEN``, ``base_url`` to ``$TOGAI_BASE_URL`` and then
    to the sandbox (the document's first server). ``rate_limit`` defaults to Togai's quota
    (requests per second); ``None`` disables it.
    """

    def _generated_client(self) -> togai_client.Client:
        api = super()._generated_client()
        api.get_httpx_client()  # created now, so threads sharing the client share one pool
        return api

    def _http(self) -> httpx.Client:
        return self._api.get_httpx_client()

    def _post(self, path: str, body: bytes) -> httpx.Response:
        if self.rate_limiter is not None:
            self.rate_limiter.acquire()
        try:
            return self._http().post(path, content=body)
        except httpx.TransportError as exc:
            raise transport_error(exc, f"POST {path}") from exc

    def ingest(self, event: EventLike) -> None:
        """Send one event to ``/ingest``; raise ``ValidationError`` or an ``APIError``."""
        body = encode({"event": to_wire(event)})

        def attempt() -> None:
            response = self._post(self._event_path, body)
            if not response.is_success:
                raise error_from_response(response)

        retry_sync(self.retry, attempt, f"POST {self._event_path}")

    def ingest_batch(self, events: Iterable[EventLike]) -> BatchOutcome:
        """Send one batch (1 to maxItems events) as one request; every event must be valid.

        Returns the outcome (accepted count, rejected events); raises ``ValidationError``
        before sending, or the ``APIError`` of a request that failed after its retries.
        """
        batch, outcome = self._one_batch(events)
        self._deliver(batch, outcome, raise_errors=True)
        return outcome

    def send(
        self,
        events: Iterable[EventLike],
        *,
        batch_size: int | None = None,
        on_batch: OnBatch | None = None,
        collect: bool = True,
        validated: bool = False,
    ) -> SendResult:
        """Send any number of events in batches; never raises for a failed batch.

        Invalid events are reported (``result.invalid``) and not sent; events the server
        rejects are in ``result.rejected``; events whose request failed after its retries are
        in ``result.failed`` with the error. ``on_batch`` is called after every batch (it
        must not raise). ``collect=False`` keeps counts only, for callers that handle each
        outcome in ``on_batch``; ``validated=True`` skips validation of wire dicts that
        already went through ``to_wire``. Raises ``SendAbortedError`` when the token is
        refused (401); events after ``result.total`` were not read from the input.
        """
        result = SendResult()
        for start, chunk in _chunks(events, self._batch_size(batch_size)):
            outcome = self.send_prepared(prepare(chunk, start, validated))
            result.add(outcome, collect)
            if on_batch is not None:
                on_batch(outcome)
            fatal = next((f.error for f in outcome.failed if _fatal(f.error)), None)
            if fatal is not None:
                raise SendAbortedError(result, fatal)
        return result

    def send_prepared(self, batch: PreparedBatch) -> BatchOutcome:
        outcome = batch.outcome()
        if batch.wire:
            self._deliver(batch, outcome, raise_errors=False)
        return outcome

    def _deliver(self, batch: PreparedBatch, outcome: BatchOutcome, raise_errors: bool) -> None:
        body = batch.body()
        try:
            retry_sync(
                self.retry,
                lambda: read_batch(batch, self._post(self._batch_path, body), outcome),
                f"POST {self._batch_path} ({len(batch.wire)} events)",
            )
        except APIError as error:
            if _splittable(error, batch):
                for half in batch.halves():
                    self._deliver(half, outcome, raise_errors)
                return
            if raise_errors:
                raise
            batch.fail(outcome, error)

    def close(self) -> None:
        self._http().close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """Asynchronous ingestion client: the same API with ``await``, and a concurrent ``send``."""

    def _http(self) -> httpx.AsyncClient:
        return self._api.get_async_httpx_client()

    async def _post(self, path: str, body: bytes) -> httpx.Response:
        if self.rate_limiter is not None:
            await self.rate_limiter.acquire_async()
        try:
            return await self._http().post(path, content=body)
        except httpx.TransportError as exc:
            raise transport_error(exc, f"POST {path}") from exc

    async def ingest(self, event: EventLike) -> None:
        body = encode({"event": to_wire(event)})

        async def attempt() -> None:
            response = await self._post(self._event_path, body)
            if not response.is_success:
                raise error_from_response(response)

        await retry_async(self.retry, attempt, f"POST {self._event_path}")

    async def ingest_batch(self, events: Iterable[EventLike]) -> BatchOutcome:
        batch, outcome = self._one_batch(events)
        await self._deliver(batch, outcome, raise_errors=True)
        return outcome

    async def send(
        self,
        events: Iterable[EventLike] | AsyncIterable[EventLike],
        *,
        batch_size: int | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        on_batch: OnBatch | None = None,
        collect: bool = True,
        validated: bool = False,
    ) -> SendResult:
        """Like ``Client.send``, with up to ``concurrency`` requests in flight.

        Batches may finish out of order; ``on_batch`` gets each outcome with its ``start``.
        If the input or ``on_batch`` raises, the requests in flight are cancelled and the
        exception propagates (in an ``ExceptionGroup``).
        """
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        size = self._batch_size(batch_size)
        result = SendResult()
        queue: asyncio.Queue[PreparedBatch | None] = asyncio.Queue(maxsize=concurrency)
        fatal: list[APIError] = []

        async def worker() -> None:
            while (batch := await queue.get()) is not None:
                outcome = await self.send_prepared(batch)
                result.add(outcome, collect)
                if on_batch is not None:
                    on_batch(outcome)
                fatal.extend(f.error for f in outcome.failed if _fatal(f.error))

        async def produce() -> None:
            chunks = aiter(_achunks(events, size))
            while not fatal:  # checked before reading on: after a 401 nothing more is read
                try:
                    start, chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                await queue.put(prepare(chunk, start, validated))

        async with asyncio.TaskGroup() as tasks:
            for _ in range(concurrency):
                tasks.create_task(worker())
            await produce()
            for _ in range(concurrency):
                await queue.put(None)
        if fatal:
            raise SendAbortedError(result, fatal[0])
        return result

    async def send_prepared(self, batch: PreparedBatch) -> BatchOutcome:
        outcome = batch.outcome()
        if batch.wire:
            await self._deliver(batch, outcome, raise_errors=False)
        return outcome

    async def _deliver(
        self, batch: PreparedBatch, outcome: BatchOutcome, raise_errors: bool
    ) -> None:
        body = batch.body()

        async def attempt() -> None:
            read_batch(batch, await self._post(self._batch_path, body), outcome)

        try:
            await retry_async(
                self.retry, attempt, f"POST {self._batch_path} ({len(batch.wire)} events)"
            )
        except APIError as error:
            if _splittable(error, batch):
                for half in batch.halves():
                    await self._deliver(half, outcome, raise_errors)
                return
            if raise_errors:
                raise
            batch.fail(outcome, error)

    async def aclose(self) -> None:
        await self._http().aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _achunks(
    events: Iterable[EventLike] | AsyncIterable[EventLike], size: int
) -> AsyncIterable[tuple[int, list[EventLike]]]:
    if not isinstance(events, AsyncIterable):
        for item in _chunks(events, size):
            yield item
        return
    start = 0
    chunk: list[EventLike] = []
    async for event in events:
        chunk.append(event)
        if len(chunk) == size:
            yield start, chunk
            start += size
            chunk = []
    if chunk:
        yield start, chunk
