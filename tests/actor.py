"""Which test process sent a request: a header the fault server records (``RequestRecord.actor``).

A crash test tells the killed process's requests from the survivors' by this tag, not by the
time a request reached the server's log (under load, a request written just before a SIGKILL
can be logged long after it). Kept apart from ``tests.faultserver`` so that the crash tests'
child process can import it without pulling in the server.
"""

from __future__ import annotations

from typing import Any

import httpx

ACTOR_HEADER = "X-Test-Actor"


def tagged(actor: str) -> dict[str, Any]:
    """``httpx_args`` for a ``Client`` whose every request carries ``ACTOR_HEADER: actor``."""

    def tag(request: httpx.Request) -> None:
        request.headers[ACTOR_HEADER] = actor

    return {"event_hooks": {"request": [tag]}}
