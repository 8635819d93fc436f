"""Validation of events against the OpenAPI document, before any byte is sent.

The ``Event`` schema is taken from the document and compiled once with fastjsonschema (chosen
because it compiles a schema to plain Python: a few microseconds an event, see ``make bench``).
Errors name the event, the path inside it and the limit the document sets, e.g.
``events[3].eventAttributes[1].attributeValue: longer than 50 characters``.
"""

from __future__ import annotations

import copy
import datetime
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import fastjsonschema
from togai_client.models import Event

from .errors import ValidationError
from .spec import spec

__all__ = ["EventLike", "to_wire", "validate_wire"]

EventLike = Event | Mapping[str, Any]
"""A typed ``togai_client.models.Event``, or a plain dict in wire form (camelCase)."""

_TYPE_NAMES = {
    "string": "a string",
    "object": "an object",
    "array": "an array",
    "integer": "an integer",
    "number": "a number",
}


_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)")


def _is_offset_datetime(value: object) -> bool:
    """``format: date-time`` is RFC 3339: a date, a time and a UTC offset in hh:mm."""
    if not isinstance(value, str):
        return True  # the type rule reports it
    if not _RFC3339.fullmatch(value):
        return False
    try:
        datetime.datetime.fromisoformat(value)  # month 13, hour 25, ...
    except ValueError:
        return False
    return True


def _json_schema(node: Any, schemas: dict[str, Any]) -> Any:
    """OpenAPI 3.0 schema object -> JSON Schema with every ``$ref`` inlined.

    Inlined refs validate twice as fast in fastjsonschema as ``definitions`` lookups; the
    document's schemas are not recursive.
    """
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            return _json_schema(schemas[ref.removeprefix("#/components/schemas/")], schemas)
        return {
            k: _json_schema(v, schemas)
            for k, v in node.items()
            if k not in ("example", "examples", "description")
        }
    if isinstance(node, list):
        return [_json_schema(v, schemas) for v in node]
    return node


@functools.cache
def _event_validator() -> Callable[[Any], Any]:
    schemas = copy.deepcopy(spec().schemas)
    schema = _json_schema(schemas["Event"], schemas)
    return fastjsonschema.compile(schema, formats={"date-time": _is_offset_datetime})


def _explain(where: str, exc: fastjsonschema.JsonSchemaValueException) -> ValidationError:
    # exc.name is e.g. "data.eventAttributes[1].attributeValue"
    at = where + (exc.name or "data").removeprefix("data")
    rule, limit, value = exc.rule, exc.rule_definition, exc.value
    if rule == "maxLength":
        return ValidationError(at, f"longer than {limit} characters", limit)
    if rule == "maxItems":
        return ValidationError(at, f"more than {limit} items", limit)
    if rule == "minItems":
        return ValidationError(at, f"fewer than {limit} items", limit)
    if rule == "required" and isinstance(value, Mapping):
        missing = next(name for name in limit if name not in value)
        return ValidationError(f"{at}.{missing}", "required property is missing")
    if rule == "additionalProperties" and isinstance(value, Mapping):
        allowed = list(exc.definition.get("properties", {}))
        extra = next(name for name in value if name not in allowed)
        return ValidationError(
            f"{at}.{extra}",
            f"unknown property (allowed: {', '.join(allowed)})",
        )
    if rule == "type":
        expected = _TYPE_NAMES.get(str(limit), str(limit))
        return ValidationError(at, f"must be {expected}, not {type(value).__name__}")
    if rule == "format":
        return ValidationError(
            at,
            f"not an ISO 8601 date-time with a UTC offset (got {value!r}; "
            "e.g. 2022-06-15T07:30:35Z or 2022-06-15T09:30:35+02:00)",
        )
    return ValidationError(at, f"breaks the schema rule {rule}={limit!r}")


def validate_wire(wire: Any, where: str = "event") -> None:
    """Raise ``ValidationError`` unless ``wire`` is an ``Event`` as the document defines it."""
    try:
        _event_validator()(wire)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise _explain(where, exc) from None


def to_wire(event: EventLike, where: str = "event") -> dict[str, Any]:
    """The wire form (camelCase dict) of ``event``, validated against the document."""
    if isinstance(event, Event):
        if event.event_timestamp.tzinfo is None:
            raise ValidationError(
                f"{where}.eventTimestamp",
                "naive datetime without a UTC offset; use an aware datetime, "
                "e.g. datetime.now(timezone.utc)",
            )
        wire = event.to_dict()
    elif isinstance(event, Mapping):
        wire = event if isinstance(event, dict) else dict(event)
    else:
        raise ValidationError(
            where, f"must be a togai_client.models.Event or a dict, not {type(event).__name__}"
        )
    validate_wire(wire, where)
    return wire
