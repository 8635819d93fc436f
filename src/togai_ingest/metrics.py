"""Metrics for operators, through the OpenTelemetry API (``pip install '...[metrics]'``).

Without ``opentelemetry-api`` every function here is a no-op. With it, the instruments come
from the global ``MeterProvider`` (or the one given to ``use_meter_provider``), meter
``togai_ingest``:

=============================  ==============  ================================================
instrument                     kind            what (attributes)
=============================  ==============  ================================================
togai_ingest.events            counter         events by ``outcome``: accepted, rejected,
                                               failed, invalid, queue_full, spooled
togai_ingest.requests          counter         HTTP requests by ``status`` (``none``: no answer)
togai_ingest.request.duration  histogram, s    request latency, by ``status``
togai_ingest.retries           counter         retries by ``cause``: the status (429, 503, ...),
                                               ``timeout``, ``connection``, ``malformed``
togai_ingest.throttle.wait     histogram, s    time a request waited for the rate limit
togai_ingest.queue.depth       gauge           events queued in background senders
togai_ingest.spool.size        gauge           events in the spool (once there is one)
togai_ingest.send_rate         gauge, 1/s      requests/s the adaptive rate limits allow now
=============================  ==============  ================================================
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .results import BatchOutcome

try:
    from opentelemetry import metrics as _otel
    from opentelemetry.metrics import CallbackOptions, Observation
except ImportError:  # pragma: no cover - exercised by installs without the extra
    _otel = None  # type: ignore[assignment]

__all__ = [
    "ENABLED",
    "observe_queue_depth",
    "observe_send_rate",
    "observe_spool_size",
    "record_events",
    "record_outcome",
    "record_request",
    "record_retry",
    "record_throttle_wait",
    "retry_cause",
    "use_meter_provider",
]

ENABLED = _otel is not None
"""True when ``opentelemetry-api`` is installed."""
METER = "togai_ingest"

Gauge = Callable[[], Iterable[float]]
_lock = threading.Lock()
_queue_depths: list[Callable[[], int | None]] = []
_spool_sizes: list[Callable[[], int | None]] = []
_send_rates: list[Gauge] = []


@dataclass(frozen=True)
class _Instruments:
    events: Any
    requests: Any
    duration: Any
    retries: Any
    throttle_wait: Any
    gauges: tuple[Any, ...]


_instruments: _Instruments | None = None
_provider: Any = None


def use_meter_provider(provider: Any = None) -> None:
    """Record to ``provider`` (an OpenTelemetry ``MeterProvider``) from now on; ``None``: the
    global one. For applications that do not set a global provider, and for tests."""
    global _instruments, _provider
    with _lock:
        _provider = provider
        _instruments = None


def _get() -> _Instruments | None:
    global _instruments
    if _otel is None:
        return None
    found = _instruments
    if found is not None:
        return found
    with _lock:
        if _instruments is None:
            _instruments = _create(_otel, _provider)
        return _instruments


def _create(otel: Any, provider: Any) -> _Instruments:
    meter = (provider or otel.get_meter_provider()).get_meter(METER)
    return _Instruments(
        events=meter.create_counter(
            "togai_ingest.events", unit="{event}", description="Events by outcome"
        ),
        requests=meter.create_counter(
            "togai_ingest.requests", unit="{request}", description="HTTP requests by status"
        ),
        duration=meter.create_histogram(
            "togai_ingest.request.duration", unit="s", description="HTTP request latency"
        ),
        retries=meter.create_counter(
            "togai_ingest.retries", unit="{retry}", description="Retries by cause"
        ),
        throttle_wait=meter.create_histogram(
            "togai_ingest.throttle.wait",
            unit="s",
            description="Time a request waited for the client-side rate limit",
        ),
        gauges=(
            meter.create_observable_gauge(
                "togai_ingest.queue.depth",
                callbacks=[_observer(_queue_depths)],
                unit="{event}",
                description="Events queued in background senders",
            ),
            meter.create_observable_gauge(
                "togai_ingest.spool.size",
                callbacks=[_observer(_spool_sizes)],
                unit="{event}",
                description="Events in the spool",
            ),
            meter.create_observable_gauge(
                "togai_ingest.send_rate",
                callbacks=[_rates],
                unit="{request}/s",
                description="Requests per second the adaptive rate limits allow now",
            ),
        ),
    )


def _observer(sources: list[Callable[[], int | None]]) -> Callable[[Any], Iterable[Any]]:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        total = 0
        for source in list(sources):
            value = source()
            if value is None:  # its owner is gone
                with _lock, contextlib.suppress(ValueError):
                    sources.remove(source)
                continue
            total += value
        return [Observation(total)]

    return observe


def _rates(options: CallbackOptions) -> Iterable[Observation]:
    rates = [rate for source in list(_send_rates) for rate in source()]
    return [Observation(sum(rates))] if rates else []


def _weak(callback: Callable[[], int]) -> Callable[[], int | None]:
    """A bound method is held weakly: a gauge does not keep a sender alive."""
    if hasattr(callback, "__self__") and hasattr(callback, "__func__"):
        method = weakref.WeakMethod(callback)

        def call() -> int | None:
            bound = method()
            return None if bound is None else bound()

        return call
    return callback


# -- the recording API (cheap no-ops without opentelemetry) --------------------------------


def record_request(status: int | None, seconds: float) -> None:
    """One HTTP attempt: its status (None: no answer) and how long it took."""
    found = _get()
    if found is None:
        return
    attributes = {"status": "none" if status is None else str(status)}
    found.requests.add(1, attributes)
    found.duration.record(seconds, attributes)


def retry_cause(error: BaseException) -> str:
    """``"429"``, ``"503"``, ... for a status; ``timeout``, ``connection``, ``malformed``."""
    from .errors import APIConnectionError, APIStatusError, APITimeoutError, MalformedResponseError

    if isinstance(error, APIStatusError):
        return str(error.status)
    if isinstance(error, APITimeoutError):
        return "timeout"
    if isinstance(error, APIConnectionError):
        return "connection"
    if isinstance(error, MalformedResponseError):
        return "malformed"
    return type(error).__name__


def record_retry(cause: str | BaseException) -> None:
    """One retry, by cause (an error is turned into its cause by ``retry_cause``)."""
    found = _get()
    if found is None:
        return
    name = cause if isinstance(cause, str) else retry_cause(cause)
    found.retries.add(1, {"cause": name})


def record_events(outcome: str, count: int = 1) -> None:
    """``count`` events that ended as ``outcome`` (e.g. ``queue_full``, ``spooled``)."""
    found = _get()
    if found is None or count <= 0:
        return
    found.events.add(count, {"outcome": outcome})


def record_outcome(outcome: BatchOutcome) -> None:
    """Every event of one batch's outcome: accepted, rejected, failed, invalid."""
    if _otel is None:
        return
    record_events("accepted", outcome.accepted)
    record_events("rejected", len(outcome.rejected))
    record_events("failed", len(outcome.failed))
    record_events("invalid", len(outcome.invalid))


def record_throttle_wait(seconds: float) -> None:
    """Time one request waited for the client-side rate limit (nothing when it did not)."""
    if seconds <= 0.0005 or _otel is None:
        return
    found = _get()
    if found is not None:
        found.throttle_wait.record(seconds)


def observe_queue_depth(callback: Callable[[], int]) -> None:
    """Report ``callback()`` (summed over all registered) as the queue depth."""
    with _lock:
        _queue_depths.append(_weak(callback))
    _get()  # the gauges exist from now on


def observe_spool_size(callback: Callable[[], int]) -> None:
    """Report ``callback()`` (summed over all registered) as the spool size."""
    with _lock:
        _spool_sizes.append(_weak(callback))
    _get()  # the gauges exist from now on


def observe_send_rate(callback: Gauge) -> None:
    """Report the sum of ``callback()``'s rates as the current send rate."""
    with _lock:
        _send_rates.append(callback)
