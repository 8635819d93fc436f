"""Building typed events with less ceremony than the generated constructors."""

from __future__ import annotations

import decimal
import math
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from attrs import fields as attrs_fields
from togai_client.models import Event, EventAttribute, EventDimensions
from togai_client.types import UNSET, Unset

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
        try:
            return str(value)
        except ValueError:  # more digits than Python writes out (sys.int_info)
            raise ValidationError(where, "too many digits to write out") from None
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(where, f"must be a finite number, not {value!r}")
        text = float.__repr__(value)  # the shortest form that reads back as the same float
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
    value: Any
    unit: Any
    text: str
    for attr_name, spec_value in attributes.items():
        if type(spec_value) is tuple and len(spec_value) == 2:
            value, unit = spec_value
        elif isinstance(spec_value, tuple):
            value, unit = _pair(attr_name, spec_value)
        else:
            value, unit = spec_value, None
        if unit is not None and type(unit) is not str:
            _checked(attr_name, value, unit)  # a unit that is not a str is refused first
        # Exact types first (a str as it is, an int or float written out); anything else
        # is checked by ``_checked``, which names the field.
        kind = type(value)
        if kind is str:
            text = value
        elif kind is int and -_INT_TEXT < value < _INT_TEXT:
            text = int.__repr__(value)
        elif kind is float:
            text = float.__repr__(value)
            if "e" in text or "n" in text:  # an exponent, or inf and nan: the careful way
                text = _checked(attr_name, value, None)
        else:
            text = _checked(attr_name, value, None)
        if unit is None:
            attrs.append(_attribute(attr_name, text, UNSET))
        else:
            attrs.append(_attribute(attr_name, text, unit))
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


def _by_keyword(name: str, value: str, unit: str | Unset) -> EventAttribute:
    return EventAttribute(attribute_name=name, attribute_value=value, attribute_value_unit=unit)


_attribute: Callable[[str, str, str | Unset], EventAttribute] = (
    EventAttribute  # positional: a third cheaper than by keyword, in the generated order
    if tuple(f.name for f in attrs_fields(EventAttribute))
    == ("attribute_name", "attribute_value", "attribute_value_unit")
    else _by_keyword
)
"""``EventAttribute(name, value, unit)``; by keyword if a regenerated model has other fields."""

_INT_TEXT = 10**18
"""Ints below this (in magnitude) are written out on the fast path; larger ones are checked
by ``attribute_value`` (Python refuses to write out ints of more than 4,300 digits)."""


def _pair(name: str, spec_value: tuple[object, ...]) -> tuple[object, object]:
    """``(value, unit)`` from a tuple (a subclass of tuple, e.g. a named tuple, too)."""
    if len(spec_value) != 2:
        raise ValidationError(
            f"attributes[{name!r}]",
            f"must be a value or a (value, unit) pair, not a tuple of {len(spec_value)}",
        )
    value, unit = spec_value
    return value, unit


def _checked(name: str, value: object, unit: object) -> str:
    where = f"attributes[{name!r}]"
    if unit is not None and not isinstance(unit, str):
        raise ValidationError(f"{where}.unit", f"must be a string, not {type(unit).__name__}")
    return attribute_value(value, where)
