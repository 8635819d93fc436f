"""``Client`` and ``AsyncClient``: validated, retried, rate-limited ingestion.

Both build on the generated ``togai_client.Client`` (its httpx configuration) and send JSON
that the generated models and the OpenAPI document define. ``send`` takes any iterable of
events, cuts it into batches of at most the document's ``maxItems`` and streams it: memory
does not grow with the input. Every event read ends in exactly one outcome at its own index.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from importlib import metadata
from typing import Any, Self

import httpx
import togai_client

from . import metrics
from ._logging import protect
from .errors import (
    APIError,
    ClosedError,
    ConfigurationError,
    TogaiError,
    ValidationError,
    error_from_answer,
)
from .ratelimit import Limiter, limiter_from
from .request import (
    Answer,
    Batch,
    BearerAuth,
    BodyReader,
    check_token,
    encoded_batch,
    read_batch,
    redact_error,
    transport_error,
)
from .results import BatchOutcome, SendResult
from .retry import (
    RetryPolicy,
    after_final_attempt,
    is_fatal,
    parse_retry_after,
    retry_async,
    retry_sync,
)
from .spec import spec
from .transport import (
    TRANSPORT_OPTIONS,
    attempt_deadline,
    build_async_transport,
    build_transport,
    check_route,
    environment_proxy,
    parse_base_url,
    redacted_url,
)
from .validation import EncodedEvent, EventLike, encode_event

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_TIMEOUT",
    "TOKEN_ENV",
    "URL_ENV",
    "AsyncClient",
    "Client",
    "SendAbortedError",
]

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
"""Connect within 5 s; each read, write and pool wait within 30 s; one whole attempt (connect,
send, the full answer) within connect + read = 35 s."""
DEFAULT_CONCURRENCY = 4
"""Requests in flight in ``AsyncClient.send``: enough to fill Togai's quota at ~80 ms a request."""
TOKEN_ENV = "TOGAI_API_TOKEN"
URL_ENV = "TOGAI_BASE_URL"

_DEFAULT: Any = object()
OnBatch = Callable[[BatchOutcome], None]


class SendAbortedError(TogaiError):
    """``send`` stopped before the end of its input: the token was refused (``cause`` is the
    ``AuthenticationError``), or the input itself raised (``cause`` is that exception, also
    chained as ``__cause__``). ``result`` accounts for every event read until then; events
    after ``result.total`` were not read."""

    def __init__(self, result: SendResult, cause: BaseException) -> None:
        super().__init__(f"send stopped after {result.total} events: {cause!r}")
        self.result = result
        self.cause = cause


def _user_agent() -> str:
    try:
        version = metadata.version("togai-ingestion-client")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        version = "dev"
    return f"togai-ingestion-client/{version} httpx/{httpx.__version__}"


def _seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be a finite number of seconds above 0")
    return float(value)


def _timeout(value: object) -> httpx.Timeout:
    """A timeout whose every part is finite and positive: every wait is bounded."""
    if isinstance(value, httpx.Timeout):
        parts = {
            "connect": value.connect,
            "read": value.read,
            "write": value.write,
            "pool": value.pool,
        }
        checked = {k: _seconds(v, f"timeout.{k}") for k, v in parts.items()}
        return httpx.Timeout(**checked)
    return httpx.Timeout(_seconds(value, "timeout"))


class _Base:
    """Settings and decisions shared by the sync and async clients."""

    def __init__(
        self,
        token: str | None = None,
        *,
        base_url: str | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        rate_limit: float | Limiter | None = _DEFAULT,
        allow_insecure_http: bool = False,
        httpx_args: dict[str, Any] | None = None,
    ) -> None:
        if token is None:
            token = os.environ.get(TOKEN_ENV)
            if not token:
                raise ConfigurationError(f"no API token: pass token=... or set {TOKEN_ENV}")
        token = check_token(token)
        if base_url is not None:
            url = parse_base_url(base_url, "base_url")
        elif os.environ.get(URL_ENV):
            url = parse_base_url(os.environ[URL_ENV], URL_ENV)
        else:
            url = parse_base_url(spec().default_server)
        self.base_url = str(url).rstrip("/")
        self.timeout = _timeout(timeout)
        self.attempt_timeout = (self.timeout.connect or 0.0) + (self.timeout.read or 0.0)
        """Seconds one attempt may take in all (connect, send, the full answer)."""
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
        self.retry = retry if retry is not None else RetryPolicy()
        quota = spec().requests_per_second
        self.rate_limiter: Limiter | None = limiter_from(
            quota if rate_limit is _DEFAULT else rate_limit,
            quota=quota,
        )
        self.max_batch_size = spec().max_batch_size
        self.min_batch_size = spec().min_batch_size
        self._batch_path = spec().path_of("ingestBatch")
        self._event_path = spec().path_of("ingest")
        self._batch_success = spec().success_statuses("ingestBatch").__contains__
        self._event_success = spec().success_statuses("ingest").__contains__
        self._httpx_args = dict(httpx_args or {})
        self._own_transport = not ({"transport", "mounts"} & self._httpx_args.keys())
        self._proxy = self._route_proxy(url)
        check_route(url, self._proxy, allow_insecure_http)
        self._auth = BearerAuth(token, self._proxy, allow_insecure_http)
        protect(token)
        self._closed = False
        self._api = self._generated_client()
        _live_clients.add(self)

    def _route_proxy(self, url: httpx.URL) -> str | None:
        """The proxy requests to ``url`` go through: ``httpx_args["proxy"]``, else the
        environment's (as httpx would read it), else none."""
        if not self._own_transport:
            return None
        if "proxy" in self._httpx_args:
            proxy = self._httpx_args["proxy"]
            return None if proxy is None else str(proxy)
        if not self._httpx_args.get("trust_env", True):
            return None
        return environment_proxy(url)

    def _httpx_options(self) -> dict[str, Any]:
        options = {"auth": self._auth, **self._httpx_args}
        if self._own_transport:
            transport_args = {k: options.pop(k) for k in TRANSPORT_OPTIONS if k in options}
            options["transport"] = self._transport(self._proxy, transport_args)
        return options

    def _transport(self, proxy: str | None, options: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _reset_after_fork(self) -> None:
        """A forked child must not share the parent's sockets or locks."""
        self._api = self._generated_client()
        if self.rate_limiter is not None:
            self.rate_limiter = self.rate_limiter.after_fork()

    def _generated_client(self) -> togai_client.Client:
        """The generated client with its httpx client made now (threads sharing the client
        share one pool, and a bad ``httpx_args`` entry is found here)."""
        try:
            api = self._new_generated_client()
            self._httpx_client_of(api)
        except (TypeError, ValueError, OSError, AttributeError) as error:
            raise ConfigurationError(f"bad httpx_args: {type(error).__name__}: {error}") from None
        return api

    def _httpx_client_of(self, api: togai_client.Client) -> object:
        raise NotImplementedError

    def _new_generated_client(self) -> togai_client.Client:
        return togai_client.Client(
            base_url=self.base_url,
            timeout=self.timeout,
            headers={
                "Accept": "application/json",
                "Accept-Encoding": "identity",  # the body cap counts what the server sends
                "Content-Type": "application/json",
                "User-Agent": _user_agent(),
            },
            httpx_args=self._httpx_options(),
        )

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"this {type(self).__name__} is closed")

    def check_batch_size(self, batch_size: object) -> int:
        """The batch size ``batch_size=`` asks for: the document's maxItems when None; a
        ``ConfigurationError`` for anything but an int from 1 to maxItems (0 is no default)."""
        if batch_size is None:
            return self.max_batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise ConfigurationError(f"batch_size must be an int, not {type(batch_size).__name__}")
        if not 1 <= batch_size <= self.max_batch_size:
            raise ConfigurationError(
                f"batch_size must be 1 to {self.max_batch_size} (the API's maxItems), "
                f"not {batch_size}"
            )
        return batch_size

    def _one_batch(self, events: Iterable[EventLike]) -> tuple[Batch, BatchOutcome]:
        """``ingest_batch``'s batch: the size and every event checked before sending."""
        batch = Batch(0, 0)
        try:
            for event in events:  # each event encoded as it is read: a snapshot
                batch.add(event)
                if batch.count > self.max_batch_size:
                    break
        except TypeError as error:
            raise ValidationError("events", f"must be an iterable of events ({error})") from None
        self._check_size(batch.count)
        if batch.invalid:
            raise batch.invalid[0].error
        return batch, batch.outcome()

    def _encoded_batch(
        self, events: Sequence[EncodedEvent], indexes: Sequence[int] | None
    ) -> Batch:
        self._check_size(len(events))
        for position, event in enumerate(events):
            if not isinstance(event, EncodedEvent):
                raise ValidationError(
                    f"events[{position}]", f"must be an EncodedEvent, not {type(event).__name__}"
                )
        try:
            return encoded_batch(events, indexes)
        except ValueError as error:
            raise ValidationError("indexes", str(error)) from None

    def _check_size(self, size: int) -> None:
        if size > self.max_batch_size:
            raise ValidationError(
                "events", f"more than {self.max_batch_size} items", self.max_batch_size
            )
        if size < self.min_batch_size:
            raise ValidationError(
                "events", f"fewer than {self.min_batch_size} items", self.min_batch_size
            )

    def _answer_error(self, exc: Exception, what: str) -> APIError:
        return transport_error(exc, what)

    def _observe(self, answer: Answer | None) -> None:
        """Tell the limiter how the attempt went (None: no answer); it adapts to 429s."""
        if self.rate_limiter is not None:
            if answer is None:
                self.rate_limiter.observe(None, None)
            else:
                retry_after = parse_retry_after(answer.headers.get("retry-after"))
                self.rate_limiter.observe(answer.status, retry_after)

    def _check_answer(self, answer: Answer, success: Callable[[int], bool]) -> None:
        if not success(answer.status):
            raise redact_error(error_from_answer(answer))

    def _read_batch(self, batch: Batch, answer: Answer, outcome: BatchOutcome) -> None:
        try:
            read_batch(batch, answer, outcome, self._batch_success)
        except APIError as error:
            raise redact_error(error) from None

    def _settle(
        self, batch: Batch, outcome: BatchOutcome, error: APIError, raise_errors: bool
    ) -> list[Batch]:
        """After the last attempt of ``batch`` failed: the halves to send, or none (failed)."""
        if after_final_attempt(error, len(batch.events)) == "split":
            return batch.halves()
        if raise_errors:
            raise error
        batch.fail(outcome, error)
        return []

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(base_url={redacted_url(self.base_url)!r}, retry={self.retry!r})"
        )


_live_clients: weakref.WeakSet[_Base] = weakref.WeakSet()


def _reset_clients_after_fork() -> None:
    for client in list(_live_clients):
        client._reset_after_fork()


os.register_at_fork(after_in_child=_reset_clients_after_fork)


class _Source:
    """The caller's events, read into batches; each event is validated and encoded (a
    snapshot) the moment it is read. If reading raises, the events read before are still
    handed out (to be sent and reported) and the exception is kept in ``error``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.error: Exception | None = None

    def batches(self, events: Iterable[EventLike]) -> Iterator[Batch]:
        iterator = iter(events)
        start = 0
        while True:
            batch = Batch(start, 0)
            try:
                while batch.count < self.size:
                    batch.add(next(iterator))
            except StopIteration:
                pass
            except Exception as error:  # the caller's input: kept, re-raised after
                self.error = error
            if batch.count:
                yield batch
                start += batch.count
            if self.error is not None or batch.count < self.size:
                return

    async def abatches(
        self, events: Iterable[EventLike] | AsyncIterable[EventLike]
    ) -> AsyncIterator[Batch]:
        if not isinstance(events, AsyncIterable):
            for item in self.batches(events):
                yield item
            return
        iterator = aiter(events)
        start = 0
        while True:
            batch = Batch(start, 0)
            try:
                while batch.count < self.size:
                    batch.add(await anext(iterator))
            except StopAsyncIteration:
                pass
            except Exception as error:  # the caller's input: kept, re-raised after
                self.error = error
            if batch.count:
                yield batch
                start += batch.count
            if self.error is not None or batch.count < self.size:
                return

    def raise_error(self, result: SendResult) -> None:
        if self.error is not None:
            raise SendAbortedError(result, self.error) from self.error


def _fatal_of(outcome: BatchOutcome) -> APIError | None:
    return next((f.error for f in outcome.failed if is_fatal(f.error)), None)


class Client(_Base):
    """Synchronous ingestion client. Thread-safe; use one per process.

    ``token`` defaults to ``$TOGAI_API_TOKEN``, ``base_url`` to ``$TOGAI_BASE_URL`` and then
    to the sandbox (the document's first server). ``rate_limit`` defaults to Togai's quota
    (requests per second); ``None`` disables it. Bad settings raise ``ConfigurationError``
    here, before anything is sent.
    """

    def _transport(self, proxy: str | None, options: dict[str, Any]) -> Any:
        return build_transport(proxy, options)

    def _httpx_client_of(self, api: togai_client.Client) -> object:
        return api.get_httpx_client()

    def _http(self) -> httpx.Client:
        return self._api.get_httpx_client()

    def _post(self, path: str, body: bytes, deadline: float) -> Answer:
        """One attempt, bounded by ``deadline`` as a whole, its answer read up to the cap."""
        self._check_open()
        if self.rate_limiter is not None:
            self.rate_limiter.acquire()
        started = time.monotonic()
        failure: APIError | None = None
        try:
            with attempt_deadline(deadline), self._http().stream("POST", path, content=body) as r:
                reader = BodyReader()
                for chunk in r.iter_bytes():
                    if not reader.feed(chunk):
                        break
                answer = reader.answer(r.status_code, r.headers)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            failure = self._answer_error(exc, f"POST {path}")
        metrics.record_request(None if failure else answer.status, time.monotonic() - started)
        if failure is not None:
            self._observe(None)
            raise failure
        self._observe(answer)
        return answer

    def ingest(self, event: EventLike) -> None:
        """Send one event to ``/ingest``; raise ``ValidationError`` or an ``APIError``."""
        self._check_open()
        body = b'{"event":' + encode_event(event).json + b"}"

        def attempt(deadline: float) -> None:
            self._check_answer(self._post(self._event_path, body, deadline), self._event_success)

        try:
            retry_sync(self.retry, attempt, f"POST {self._event_path}", self.attempt_timeout)
        except APIError:
            metrics.record_events("failed")
            raise
        metrics.record_events("accepted")

    def ingest_batch(self, events: Iterable[EventLike]) -> BatchOutcome:
        """Send one batch (1 to maxItems events) as one request; every event must be valid.

        Returns the outcome (accepted count, rejected events); raises ``ValidationError``
        before sending, or the ``APIError`` of a request that failed after its retries.
        """
        self._check_open()
        batch, outcome = self._one_batch(events)
        self._deliver(batch, outcome, raise_errors=True)
        metrics.record_outcome(outcome)
        return outcome

    def send_encoded(
        self, events: Sequence[EncodedEvent], indexes: Sequence[int] | None = None
    ) -> BatchOutcome:
        """Send one batch of events encoded already (``encode_event``), reported at
        ``indexes`` (default 0, 1, ...). Never raises an ``APIError``: every event ends in
        ``accepted``, ``rejected`` or ``failed`` of the outcome."""
        self._check_open()
        batch = self._encoded_batch(events, indexes)
        outcome = batch.outcome()
        if batch.events:
            self._deliver(batch, outcome, raise_errors=False)
        metrics.record_outcome(outcome)
        return outcome

    def send(
        self,
        events: Iterable[EventLike],
        *,
        batch_size: int | None = None,
        on_batch: OnBatch | None = None,
        collect: bool = True,
    ) -> SendResult:
        """Send any number of events in batches; never raises for a failed batch.

        Invalid events are reported (``result.invalid``) and not sent; events the server
        rejects are in ``result.rejected``; events whose request failed after its retries are
        in ``result.failed`` with the error. ``on_batch`` is called after every batch (it
        must not raise). ``collect=False`` keeps counts only. Raises ``SendAbortedError``
        when the token is refused (401) or the input raises; its ``result`` accounts for
        every event read.
        """
        self._check_open()
        source = _Source(self.check_batch_size(batch_size))
        result = SendResult()
        for batch in source.batches(events):
            outcome = batch.outcome()
            if batch.events:
                self._deliver(batch, outcome, raise_errors=False)
            metrics.record_outcome(outcome)
            result.add(outcome, collect)
            if on_batch is not None:
                on_batch(outcome)
            fatal = _fatal_of(outcome)
            if fatal is not None:
                raise SendAbortedError(result, fatal)
        source.raise_error(result)
        return result

    def _deliver(self, batch: Batch, outcome: BatchOutcome, raise_errors: bool) -> None:
        body = batch.body()
        try:
            retry_sync(
                self.retry,
                lambda deadline: self._read_batch(
                    batch, self._post(self._batch_path, body, deadline), outcome
                ),
                f"POST {self._batch_path} ({len(batch.events)} events)",
                self.attempt_timeout,
            )
        except APIError as error:
            for half in self._settle(batch, outcome, error, raise_errors):
                self._deliver(half, outcome, raise_errors)

    def close(self) -> None:
        self._closed = True
        self._http().close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """Asynchronous ingestion client: the same API with ``await``, and a concurrent ``send``.
    Bound to the event loop it first sends from (like httpx); another loop gets a
    ``ClosedError``."""

    _loop: asyncio.AbstractEventLoop | None = None

    def _transport(self, proxy: str | None, options: dict[str, Any]) -> Any:
        return build_async_transport(proxy, options)

    def _reset_after_fork(self) -> None:
        super()._reset_after_fork()
        self._loop = None

    def _httpx_client_of(self, api: togai_client.Client) -> object:
        return api.get_async_httpx_client()

    def _http(self) -> httpx.AsyncClient:
        return self._api.get_async_httpx_client()

    def _check_loop(self) -> None:
        self._check_open()
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise ClosedError(
                "this AsyncClient was first used from another event loop; create one client "
                "per event loop (asyncio.run starts a new loop each time)"
            )

    async def _post(self, path: str, body: bytes, deadline: float) -> Answer:
        self._check_loop()
        if self.rate_limiter is not None:
            await self.rate_limiter.acquire_async()
        started = time.monotonic()
        failure: APIError | None = None
        try:
            with attempt_deadline(deadline):
                async with self._http().stream("POST", path, content=body) as r:
                    reader = BodyReader()
                    async for chunk in r.aiter_bytes():
                        if not reader.feed(chunk):
                            break
                    answer = reader.answer(r.status_code, r.headers)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            failure = self._answer_error(exc, f"POST {path}")
        metrics.record_request(None if failure else answer.status, time.monotonic() - started)
        if failure is not None:
            self._observe(None)
            raise failure
        self._observe(answer)
        return answer

    async def ingest(self, event: EventLike) -> None:
        self._check_loop()
        body = b'{"event":' + encode_event(event).json + b"}"

        async def attempt(deadline: float) -> None:
            answer = await self._post(self._event_path, body, deadline)
            self._check_answer(answer, self._event_success)

        try:
            await retry_async(self.retry, attempt, f"POST {self._event_path}", self.attempt_timeout)
        except APIError:
            metrics.record_events("failed")
            raise
        metrics.record_events("accepted")

    async def ingest_batch(self, events: Iterable[EventLike]) -> BatchOutcome:
        self._check_loop()
        batch, outcome = self._one_batch(events)
        await self._deliver(batch, outcome, raise_errors=True)
        metrics.record_outcome(outcome)
        return outcome

    async def send_encoded(
        self, events: Sequence[EncodedEvent], indexes: Sequence[int] | None = None
    ) -> BatchOutcome:
        """Like ``Client.send_encoded``."""
        self._check_loop()
        batch = self._encoded_batch(events, indexes)
        outcome = batch.outcome()
        if batch.events:
            await self._deliver(batch, outcome, raise_errors=False)
        metrics.record_outcome(outcome)
        return outcome

    async def send(
        self,
        events: Iterable[EventLike] | AsyncIterable[EventLike],
        *,
        batch_size: int | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        on_batch: OnBatch | None = None,
        collect: bool = True,
    ) -> SendResult:
        """Like ``Client.send``, with up to ``concurrency`` requests in flight.

        Batches may finish out of order; ``on_batch`` gets each outcome with its ``start``.
        If ``on_batch`` raises, the requests in flight are cancelled and the exception
        propagates (in an ``ExceptionGroup``).
        """
        self._check_loop()
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError("concurrency must be an int of at least 1")
        source = _Source(self.check_batch_size(batch_size))
        result = SendResult()
        queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=concurrency)
        fatal: list[APIError] = []

        async def worker() -> None:
            while (batch := await queue.get()) is not None:
                outcome = batch.outcome()
                if batch.events:
                    await self._deliver(batch, outcome, raise_errors=False)
                metrics.record_outcome(outcome)
                result.add(outcome, collect)
                if on_batch is not None:
                    on_batch(outcome)
                error = _fatal_of(outcome)
                if error is not None:
                    fatal.append(error)

        async def produce() -> None:
            batches = aiter(source.abatches(events))
            while not fatal:  # checked before reading on: after a 401 nothing more is read
                try:
                    batch = await anext(batches)
                except StopAsyncIteration:
                    break
                await queue.put(batch)

        async with asyncio.TaskGroup() as tasks:
            for _ in range(concurrency):
                tasks.create_task(worker())
            await produce()
            for _ in range(concurrency):
                await queue.put(None)
        if fatal:
            raise SendAbortedError(result, fatal[0])
        source.raise_error(result)
        return result

    async def _deliver(self, batch: Batch, outcome: BatchOutcome, raise_errors: bool) -> None:
        body = batch.body()

        async def attempt(deadline: float) -> None:
            self._read_batch(batch, await self._post(self._batch_path, body, deadline), outcome)

        try:
            await retry_async(
                self.retry,
                attempt,
                f"POST {self._batch_path} ({len(batch.events)} events)",
                self.attempt_timeout,
            )
        except APIError as error:
            for half in self._settle(batch, outcome, error, raise_errors):
                await self._deliver(half, outcome, raise_errors)

    async def aclose(self) -> None:
        self._closed = True
        await self._http().aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
