"""Building typed events with less ceremony than the generated constructors."""

from __future__ import annotations

import decimal
import math
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from togai_client.models import Event, EventAttribute, EventDimensions
from togai_client.types import UNSET

from .errors import ValidationError

__all__ = ["attribute_value", "new_event"]

Number = int | float | decimal.Decimal
AttributeValue = str | Number | tuple[str | Number, str]


def attribute_value(value: object, where: str = "attribute") -> str:
    """What the API means by an attribute value: a string as it is, a finite number written
    out in full (``12.5``, ``1e-07`` -> ``0.0000001``, never ``nan`` or an exponent).
    Anything else (None, a bool, bytes, a container) is refused with ``ValidationError``."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | decimal.Decimal):
        raise ValidationError(
            where, f"must be a string or a finite number, not {type(value).__name__}"
        )
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(where, f"must be a finite number, not {value!r}")
        text = repr(value)  # the shortest form that reads back as the same float
        if "e" not in text:
            return text
        value = decimal.Decimal(text)
    if not value.is_finite():
        raise ValidationError(where, f"must be a finite number, not {value!r}")
    return format(value, "f")


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
    to now in UTC. An attribute is ``value`` or ``(value, unit)``; a value is a string or a
    finite number (written as a plain decimal string, as the API wants it); anything else
    raises ``ValidationError`` naming the attribute. Limits are checked when it is sent.

    >>> new_event("apiCall", "acct-1", {"requests": 1, "latency": (12.5, "Milliseconds")})
    """
    attrs = []
    for attr_name, spec_value in attributes.items():
        value, unit = spec_value if isinstance(spec_value, tuple) else (spec_value, None)
        if type(value) is not str or (unit is not None and type(unit) is not str):
            value = _checked(attr_name, value, unit)  # numbers written out; others refused
        attrs.append(
            EventAttribute(
                attribute_name=attr_name,
                attribute_value=value,
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


def _checked(name: str, value: object, unit: object) -> str:
    where = f"attributes[{name!r}]"
    if unit is not None and not isinstance(unit, str):
        raise ValidationError(f"{where}.unit", f"must be a string, not {type(unit).__name__}")
    return attribute_value(value, where)
