"""The way to the server: which route a request takes, whether the token may take it, and a
deadline for one whole attempt.

- **Route.** httpx reads ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY``/``NO_PROXY`` only when it
  builds its own transport; this module builds the transport, so it resolves the proxy for the
  base URL itself (the standard library's reading of the same variables) and judges the route
  the token really takes: plain http is allowed only when every hop is loopback (the server
  and, if any, the proxy), or when the caller allows it.
- **Deadline.** httpx's timeouts are per read: a server that trickles one byte a second never
  trips a 30 s read timeout. The transport's network streams therefore also honour a deadline
  for the whole attempt (connect, send, and the full answer), set by the client around each
  attempt through a context variable. httpx has no hook for this, so the network backend of
  the transport's httpcore pool is wrapped (httpx is pinned below 0.29, and
  ``tests/hardening/test_bounded.py`` fails if the wrapping stops taking effect).
"""

from __future__ import annotations

import contextlib
import ipaddress
import time
import urllib.request
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

from .errors import ConfigurationError, InsecureTransportError

__all__ = [
    "attempt_deadline",
    "build_async_transport",
    "build_transport",
    "check_route",
    "environment_proxy",
    "is_loopback",
    "parse_base_url",
    "redacted_url",
]

_deadline: ContextVar[float | None] = ContextVar("togai_attempt_deadline", default=None)

TRANSPORT_OPTIONS = ("verify", "cert", "http1", "http2", "limits", "trust_env", "proxy")
"""``httpx_args`` keys that configure the transport this module builds."""


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def redacted_url(url: str | httpx.URL) -> str:
    """``url`` without a password (``https://user:***@host``), for messages and reprs."""
    try:
        parsed = httpx.URL(url) if isinstance(url, str) else url
    except (httpx.InvalidURL, TypeError, ValueError):
        return "<unparseable URL>"
    if parsed.password:
        parsed = parsed.copy_with(password="***")
    return str(parsed)


def parse_base_url(value: str, name: str = "base_url") -> httpx.URL:
    """The base URL, checked at construction: http or https, a host, no whitespace."""
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string, not {type(value).__name__}")
    if value != value.strip() or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        raise ConfigurationError(
            f"{name} contains whitespace or a control character (a trailing newline from "
            f"the environment?): {redacted_url(value.strip())!r}"
        )
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError, ValueError) as error:
        raise ConfigurationError(f"{name} is not a valid URL: {error}") from None
    if url.scheme not in ("http", "https"):
        shown = redacted_url(url)
        raise ConfigurationError(
            f"{name} must start with https:// (or http:// for a local server), not {shown!r}"
        )
    if not url.host:
        raise ConfigurationError(f"{name} has no host: {redacted_url(url)!r}")
    if url.port is not None and not 1 <= url.port <= 65535:
        raise ConfigurationError(f"{name} has a port out of range: {url.port}")
    if url.query or url.fragment:
        raise ConfigurationError(f"{name} must not have a query or fragment")
    return url


def environment_proxy(url: httpx.URL) -> str | None:
    """The proxy the environment names for ``url`` (None when ``NO_PROXY`` covers it)."""
    proxies = urllib.request.getproxies_environment()
    if not proxies:
        return None
    if urllib.request.proxy_bypass_environment(url.host, proxies):  # type: ignore[attr-defined]
        return None
    return proxies.get(url.scheme) or proxies.get("all")


def check_route(url: httpx.URL, proxy: str | None, allow_insecure_http: bool) -> None:
    """Refuse a route on which the token would travel in clear text.

    Over https the token is encrypted end to end (through a proxy too: CONNECT tunnels it).
    Over plain http, every hop sees it: allowed only to a loopback server through no proxy or
    a loopback proxy, or with ``allow_insecure_http=True``.
    """
    proxy_url = _proxy_url(proxy)
    if url.scheme != "http" or allow_insecure_http:
        return
    if not is_loopback(url.host):
        raise InsecureTransportError(
            f"refusing to send the API token over plain http to {url.host}; use https, "
            "or pass allow_insecure_http=True"
        )
    if proxy_url is not None and not is_loopback(proxy_url.host):
        raise InsecureTransportError(
            f"refusing to send the API token over plain http through the proxy "
            f"{proxy_url.host} (from the environment's *_PROXY variables); add "
            f"{url.host} to NO_PROXY, use https, or pass allow_insecure_http=True"
        )


def _proxy_url(proxy: str | None) -> httpx.URL | None:
    if proxy is None:
        return None
    try:
        url = httpx.URL(proxy)
    except (httpx.InvalidURL, TypeError, ValueError) as error:
        raise ConfigurationError(f"the proxy URL is not valid: {error}") from None
    if url.scheme not in ("http", "https", "socks5", "socks5h") or not url.host:
        raise ConfigurationError(
            f"unsupported proxy {redacted_url(url)!r}: use http://, https:// or socks5://"
        )
    return url


def _transport_options(options: dict[str, Any]) -> dict[str, Any]:
    return {key: options[key] for key in TRANSPORT_OPTIONS if key in options}


def _bounded(timeout: float | None, timeout_error: type[Exception]) -> float | None:
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise timeout_error("the attempt took longer than its deadline")
    return remaining if timeout is None else min(timeout, remaining)


@contextlib.contextmanager
def attempt_deadline(deadline: float) -> Iterator[None]:
    """Every network operation inside ends by ``deadline`` (``time.monotonic()``)."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


class _Stream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _Stream(self._stream.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _Stream(
            self._backend.connect_tcp(host, port, bounded, local_address, socket_options)
        )

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _Stream(self._backend.connect_unix_socket(path, bounded, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _AsyncStream(httpcore.AsyncNetworkStream):
    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _AsyncStream(await self._stream.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._backend = backend

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        stream = await self._backend.connect_tcp(host, port, bounded, local_address, socket_options)
        return _AsyncStream(stream)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _AsyncStream(await self._backend.connect_unix_socket(path, bounded, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def _pool(transport: httpx.HTTPTransport | httpx.AsyncHTTPTransport) -> Any:
    pool = getattr(transport, "_pool", None)
    if pool is None or not hasattr(pool, "_network_backend"):  # pragma: no cover - httpx changed
        raise RuntimeError("httpx's transport has no httpcore pool to bound; check the pin")
    return pool


def _make(cls: type[Any], proxy: str | None, options: dict[str, Any]) -> Any:
    try:
        return cls(proxy=proxy, **_transport_options(options))
    except ImportError as error:
        raise ConfigurationError(
            f"a transport setting needs an extra package: {error} (a SOCKS proxy, from "
            "ALL_PROXY/HTTPS_PROXY or proxy=, needs httpx[socks]; http2=True needs httpx[http2])"
        ) from None
    except (TypeError, ValueError, OSError, AttributeError) as error:  # e.g. a missing cert file
        raise ConfigurationError(f"bad transport option: {type(error).__name__}: {error}") from None


def build_transport(proxy: str | None, options: dict[str, Any]) -> httpx.HTTPTransport:
    """An httpx transport through ``proxy`` whose network operations honour the deadline."""
    transport: httpx.HTTPTransport = _make(httpx.HTTPTransport, proxy, options)
    pool = _pool(transport)
    pool._network_backend = _Backend(pool._network_backend)
    return transport


def build_async_transport(proxy: str | None, options: dict[str, Any]) -> httpx.AsyncHTTPTransport:
    transport: httpx.AsyncHTTPTransport = _make(httpx.AsyncHTTPTransport, proxy, options)
    pool = _pool(transport)
    pool._network_backend = _AsyncBackend(pool._network_backend)
    return transport
