"""Building typed events with less ceremony than the generated constructors."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from togai_client.models import Event, EventAttribute, EventDimensions
from togai_client.types import UNSET

__all__ = ["new_event"]

AttributeValue = str | int | float | tuple[str | int | float, str]


def new_event(
    name: str,
    account_id: str,
    attributes: Mapping[str, AttributeValue],
    dimensions: Mapping[str, str] | None = None,
    *,
    timestamp: datetime | None = None,
    id: str | None = None,
) -> Event:
    """A typed ``Event``: ``id`` defaults to a new UUIDv4 (the idempotency key), ``timestamp``
    to now in UTC. An attribute is ``value`` or ``(value, unit)``; numbers become strings, as
    the API wants them.

    >>> new_event("apiCall", "acct-1", {"requests": 1, "latency": (12.5, "Milliseconds")})
    """
    attrs = []
    for attr_name, spec_value in attributes.items():
        value, unit = spec_value if isinstance(spec_value, tuple) else (spec_value, None)
        attrs.append(
            EventAttribute(
                attribute_name=attr_name,
                attribute_value=str(value),
                attribute_value_unit=UNSET if unit is None else unit,
            )
        )
    dims = EventDimensions()
    dims.additional_properties = dict(dimensions or {})
    return Event(
        event_name=name,
        id=id or str(uuid.uuid4()),
        event_timestamp=timestamp or datetime.now(UTC),
        account_id=account_id,
        event_attributes=attrs,
        dimensions=dims,
    )
