"""Validation of events against the OpenAPI document, before any byte is sent.

The ``Event`` schema is taken from the document and compiled once with jsonschema-rs, a Rust
validator (about 0.5 µs for a valid event, eight times faster than fastjsonschema here; see
``make bench``), whose errors carry the path and the limit. They become messages that name the
event, the path inside it and the limit the document sets, e.g.
``events[3].eventAttributes[1].attributeValue: longer than 50 characters``.
"""

from __future__ import annotations

import datetime
import functools
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import attrs
import jsonschema_rs
import orjson
from togai_client.models import Event
from togai_client.types import UNSET

from .errors import ValidationError
from .spec import spec

__all__ = ["EncodedEvent", "EventLike", "encode_event", "to_wire", "validate_wire"]


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """An event validated against the document and encoded as JSON: an immutable snapshot of
    what the caller passed. What is sent is ``json``; what is reported is ``wire()``, decoded
    from the same bytes, so changing the caller's object afterwards changes neither."""

    id: str
    json: bytes

    def wire(self) -> dict[str, Any]:
        """A fresh dict of the event in wire form (camelCase)."""
        wire: dict[str, Any] = orjson.loads(self.json)
        return wire


EventLike = Event | Mapping[str, Any] | EncodedEvent
"""A typed ``togai_client.models.Event``, a plain dict in wire form (camelCase), or an
``EncodedEvent`` (validated and encoded already: sent as it is)."""

_UNREADABLE = (ValueError, TypeError, OverflowError, RecursionError)
"""What the validator and the encoder raise for input that is not JSON-like at all (a key that
is not a string, bytes, a lone surrogate, nesting too deep for the encoder)."""

_TYPE_NAMES = {
    "string": "a string",
    "object": "an object",
    "array": "an array",
    "integer": "an integer",
    "number": "a number",
}
_Kind = jsonschema_rs.ValidationErrorKind


def _json_schema(node: Any, schemas: dict[str, Any]) -> Any:
    """OpenAPI 3.0 schema object -> JSON Schema with every ``$ref`` inlined (the document's
    schemas are not recursive)."""
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
def _event_schema() -> dict[str, Any]:
    """The document's ``Event`` schema as JSON Schema (a new tree: the document is untouched)."""
    schema: dict[str, Any] = _json_schema(spec().schemas["Event"], spec().schemas)
    return schema


@functools.cache
def _event_validator() -> jsonschema_rs.Draft7Validator:
    # format: date-time is RFC 3339: a date, a time and a UTC offset (hh:mm or Z).
    return jsonschema_rs.Draft7Validator(_event_schema(), validate_formats=True)


def _at(where: str, path: list[str | int]) -> str:
    return where + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _value_at(wire: Any, path: list[str | int]) -> Any:
    """The caller's value at ``path`` (the validator's copy turns NaN into null)."""
    try:
        for part in path:
            wire = wire[part]
    except (KeyError, IndexError, TypeError):
        return None
    return wire


def _explain(where: str, error: jsonschema_rs.ValidationError, wire: Any) -> ValidationError:
    at = _at(where, error.instance_path)
    value = _value_at(wire, error.instance_path)
    match error.kind:
        case _Kind.MaxLength(limit):
            return ValidationError(at, f"longer than {limit} characters", limit)
        case _Kind.MaxItems(limit):
            return ValidationError(at, f"more than {limit} items", limit)
        case _Kind.MinItems(limit):
            return ValidationError(at, f"fewer than {limit} items", limit)
        case _Kind.Required(name):
            return ValidationError(f"{at}.{name}", "required property is missing")
        case _Kind.AdditionalProperties(unexpected):
            allowed = ", ".join(_allowed(error.instance_path))
            return ValidationError(
                f"{at}.{unexpected[0]}", f"unknown property (allowed: {allowed})"
            )
        case _Kind.Type(types):
            expected = " or ".join(_TYPE_NAMES.get(t, t) for t in types)
            return ValidationError(at, f"must be {expected}, not {type(value).__name__}")
        case _Kind.Format():
            return ValidationError(
                at,
                f"not an ISO 8601 date-time with a UTC offset (got {value!r}; "
                "e.g. 2022-06-15T07:30:35Z or 2022-06-15T09:30:35+02:00)",
            )
    return ValidationError(at, error.message)


def _allowed(path: list[str | int]) -> list[str]:
    """Property names the schema allows for the object at ``path`` of an event."""
    schema: Any = _event_schema()
    for part in path:
        schema = schema["items"] if isinstance(part, int) else schema["properties"][part]
    return list(schema.get("properties", {}))


def validate_wire(wire: Any, where: str = "event") -> None:
    """Raise ``ValidationError`` unless ``wire`` is an ``Event`` as the document defines it."""
    validator = _event_validator()
    try:
        if validator.is_valid(wire):
            return
        error = next(iter(validator.iter_errors(wire)))
    except _UNREADABLE as exc:
        raise ValidationError(where, f"not JSON-like data: {_reason(exc)}") from None
    raise _explain(where, error, wire) from None


def encode_event(event: EventLike, where: str = "event") -> EncodedEvent:
    """Validate ``event`` against the document and encode it: the snapshot that is sent.

    Raises ``ValidationError`` (naming the field and the limit) for an invalid event, and for
    one that cannot be encoded as UTF-8 JSON (a lone surrogate, a key that is not a string,
    bytes). Whatever this accepts can be sent.
    """
    return encode_at(event, where)


def encode_at(event: EventLike, where: str | int) -> EncodedEvent:
    """``encode_event``, with ``where`` either the name of the event or its index in a batch
    (``events[index]``, written out only for an error: the common case builds no string)."""
    kind = type(event)
    if kind is dict:  # the common cases first, by exact type: no isinstance chain
        wire: Any = event
    elif kind is Event:
        wire = _event_to_wire(event)  # type: ignore[arg-type]
        if wire is None:
            wire = _model_to_wire(event, _name(where))  # type: ignore[arg-type]
    elif kind is EncodedEvent or isinstance(event, EncodedEvent):
        return event  # type: ignore[return-value]
    elif isinstance(event, Event):
        wire = _model_to_wire(event, _name(where))
    elif isinstance(event, Mapping):
        wire = event
    else:
        raise ValidationError(
            _name(where),
            f"must be a togai_client.models.Event or a dict, not {type(event).__name__}",
        )
    readable = True
    try:
        valid = (_is_valid or _validity())(wire)
    except _UNREADABLE:
        valid = readable = False
    if not valid:
        where = _name(where)
        if type(wire) is not dict or not readable:
            # A Mapping that is not a dict, or subclasses of str, dict or list inside: what
            # would be sent is what the encoder makes of it, so validate that.
            wire = _plain(wire, where)
        validate_wire(wire, where)
    try:
        data = orjson.dumps(wire)
    except _UNREADABLE as exc:
        at = _at(_name(where), _unencodable_path(wire, [], 0) or [])
        raise ValidationError(at, f"cannot be encoded as JSON: {_reason(exc)}") from None
    event_id = wire["id"]
    return _encoded(event_id if type(event_id) is str else str(event_id), data)


def revalidate(event: EncodedEvent, where: str) -> ValidationError | None:
    """Why the stored bytes of ``event`` are no valid event any more (a damaged spool file:
    a flipped bit, a page cut short), or None. Sending them would fail the whole batch."""
    try:
        wire = orjson.loads(event.json)
    except orjson.JSONDecodeError as exc:
        return ValidationError(where, f"not JSON (a damaged row): {exc}")
    if type(wire) is not dict:
        return ValidationError(where, "not a JSON object (a damaged row)")
    if not (_is_valid or _validity())(wire):
        try:
            encode_event(wire, where)
        except ValidationError as exc:
            return exc
    if (found := wire.get("id")) != event.id:
        why = f"the row's id {event.id!r} is not the event's id {found!r} (a damaged row)"
        return ValidationError(where, why)
    return None


def checksum(event_id: str, body: bytes) -> int:
    """The CRC-32 of an event's id and bytes, stored beside them in a spool: any change of up
    to 32 bits in a row (a flipped bit, a torn page) makes it differ. zlib's, in C: about
    0.2 us for an event, against 2 us to parse and validate one again."""
    return zlib.crc32(body, zlib.crc32(event_id.encode("utf-8", "surrogatepass")))


def damage(event: EncodedEvent, crc: int | None, where: str) -> ValidationError | None:
    """Why the stored ``event`` must not be sent, or None. A row whose ``crc`` (its
    ``checksum`` when it was stored) matches is intact; a row without one (stored by an
    older version) is validated again. A mismatch is damage even when the bytes still make
    a valid event with the same id (a digit flipped in a value would bill the wrong
    amount); ``revalidate`` then names what it finds, if anything."""
    if crc is not None and checksum(event.id, event.json) == crc:
        return None
    error = revalidate(event, where)
    if error is None and crc is not None:
        why = "its bytes are not those it was stored with (the checksum differs: a damaged row)"
        return ValidationError(where, why)
    return error


def damaged_view(event: EncodedEvent) -> object:
    """What a report shows of a damaged event: its JSON, else its text."""
    try:
        return orjson.loads(event.json)
    except orjson.JSONDecodeError:
        return event.json.decode("utf-8", "replace")


def _name(where: str | int) -> str:
    return where if isinstance(where, str) else f"events[{where}]"


_is_valid: Callable[[Any], bool] | None = None
"""The compiled validator's ``is_valid``, once it is made (the first event compiles it)."""


def _validity() -> Callable[[Any], bool]:
    global _is_valid
    _is_valid = _event_validator().is_valid
    return _is_valid


_new = object.__new__
_set_id = EncodedEvent.__dict__["id"].__set__
_set_json = EncodedEvent.__dict__["json"].__set__


def _encoded(event_id: str, data: bytes) -> EncodedEvent:
    """``EncodedEvent(event_id, data)`` without the frozen dataclass's ``__init__`` (which
    costs as much as validating the event); the same object, as immutable as ever."""
    encoded: EncodedEvent = _new(EncodedEvent)
    _set_id(encoded, event_id)
    _set_json(encoded, data)
    return encoded


def _plain(wire: Any, where: str) -> Any:
    """``wire`` as plain JSON types (dict, list, str), by a round trip through the encoder."""
    try:
        return orjson.loads(orjson.dumps(dict(wire)))
    except _UNREADABLE as exc:
        at = _at(where, _unencodable_path(wire, [], 0) or [])
        raise ValidationError(at, f"cannot be encoded as JSON: {_reason(exc)}") from None


def _unencodable_path(value: Any, path: list[str | int], depth: int) -> list[str | int] | None:
    """Where in ``value`` the encoder fails (best effort, for the message)."""
    if depth > 64:
        return path
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return path
            found = _unencodable_path(item, [*path, key], depth + 1)
            if found is not None:
                return found
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _unencodable_path(item, [*path, index], depth + 1)
            if found is not None:
                return found
        return None
    try:
        orjson.dumps(value)
    except _UNREADABLE:
        return path
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deep"
    return str(exc) or type(exc).__name__


def to_wire(event: EventLike, where: str = "event") -> dict[str, Any]:
    """The wire form (camelCase dict) of ``event``, validated against the document: a new
    dict, so changing ``event`` afterwards changes nothing here."""
    return encode_event(event, where).wire()


def _model_to_wire(event: Event, where: str) -> dict[str, Any]:
    """``Event.to_dict()``, with the mistakes attrs does not catch named (attrs models do not
    check types: a string timestamp or a plain dict of dimensions reach ``to_dict``)."""
    stamp = event.event_timestamp
    if not isinstance(stamp, datetime.datetime):
        raise ValidationError(
            f"{where}.eventTimestamp", f"must be a datetime, not {type(stamp).__name__}"
        )
    if stamp.tzinfo is None:
        raise ValidationError(
            f"{where}.eventTimestamp",
            "naive datetime without a UTC offset; use an aware datetime, "
            "e.g. datetime.now(timezone.utc)",
        )
    try:
        return event.to_dict()
    except (AttributeError, TypeError) as exc:
        raise ValidationError(where, f"the model cannot be converted to JSON: {exc}") from None


# --- The typed model's fast path.
#
# ``Event.to_dict()`` is generated code that spends most of its time on ``isoformat`` and on
# calls. The fast path builds the same dict from a plan per generated model class: its attrs
# fields, each with its wire name taken from the document (the generator names a field
# ``snake_case(property)``), compiled to straight-line code for the value types a probe event
# (made by ``new_event``) holds: a str or a number as it is, an aware UTC datetime as orjson's
# text of it, a list of models or a model by its own plan, UNSET left out. A value of another
# type returns None and takes ``to_dict`` and its named errors. Nothing is named twice: a
# property the document adds is in the plan after ``make generate``. The path is used only
# if, on the probe, it gives byte for byte what ``to_dict`` gives.

_UTC = datetime.UTC
_DATETIME = datetime.datetime
_PLAIN = frozenset({str, int, float, bool})
_EXTRA = "additional_properties"  # the generator's field for additionalProperties
_SKIP = object()  # a value the fast path does not know: to_dict it is


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


@functools.cache
def _wire_names() -> dict[str, str]:
    """``snake_case(property)`` -> property, over every property the document names; a
    field name two properties share (``accountId``, ``accountID``) is left out: no plan."""
    names: dict[str, str] = {}
    shared: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for prop in node.get("properties") or {}:
                if isinstance(prop, str) and names.setdefault(_snake(prop), prop) != prop:
                    shared.add(_snake(prop))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec().document)
    return {field: prop for field, prop in names.items() if field not in shared}


_plans: dict[type, tuple[tuple[str, str], ...] | None] = {}


def _plan(cls: type) -> tuple[tuple[str, str], ...] | None:
    """(attribute, wire name) for each field of a generated model class, or None."""
    if cls in _plans:
        return _plans[cls]
    plan: tuple[tuple[str, str], ...] | None = None
    if attrs.has(cls) and cls.__module__.startswith("togai_client.models."):
        names = _wire_names()
        fields = [f.name for f in attrs.fields(cls) if f.name != _EXTRA]
        if all(f in names for f in fields):
            plan = tuple((f, names[f]) for f in fields)
    _plans[cls] = plan
    return plan


def _utc_text(stamp: datetime.datetime) -> str:
    """``stamp.isoformat()`` of an aware UTC ``datetime`` (orjson writes the same text,
    ``2024-06-01T00:00:00.007000+00:00``, several times faster)."""
    return orjson.dumps(stamp)[1:-1].decode()


def _value(value: Any) -> Any:
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is _DATETIME:
        return _utc_text(value) if value.tzinfo is _UTC else _SKIP
    if kind is list:
        items = [_value(item) for item in value]
        return _SKIP if any(item is _SKIP for item in items) else items
    wire = _model_wire(value)
    return _SKIP if wire is None else wire


def _model_wire(model: Any) -> dict[str, Any] | None:
    """``model.to_dict()`` for a generated model in its usual state, or None."""
    plan = _plan(type(model))
    if plan is None:
        return None
    extra = getattr(model, _EXTRA, None)
    if not plan:  # only additionalProperties: the dict itself (read, encoded, never kept)
        return extra if type(extra) is dict else None
    wire: dict[str, Any] = {} if extra is None else dict(extra)
    for attribute, name in plan:
        value = getattr(model, attribute)
        if value is UNSET:
            continue
        value = _value(value)
        if value is _SKIP:
            return None
        wire[name] = value
    return wire


def _no_fast_path(event: Event) -> None:
    return None


def _compiled(cls: type, sample: Any, made: dict[type, Any]) -> Callable[[Any], Any] | None:
    """``_model_wire`` for ``cls``, compiled to straight-line code (as attrs and dataclasses
    make their methods) for field values of the types ``sample`` holds; other values take
    ``_value``. None if ``cls`` has no plan."""
    if cls in made:
        return made[cls]  # type: ignore[no-any-return]
    plan = _plan(cls)
    if plan is None or not all(attribute.isidentifier() for attribute, _ in plan):
        return None
    made[cls] = None  # a model that contains itself takes the generic path inside
    scope: dict[str, Any] = {"UNSET": UNSET, "SKIP": _SKIP, "value": _value, "DT": _DATETIME}
    scope.update(UTC=_UTC, utc=_utc_text)
    lines = ["def convert(m):"]
    if any(f.name == _EXTRA for f in attrs.fields(cls)):
        lines += ["    e = m.additional_properties", "    if type(e) is not dict: return None"]
        lines += ["    w = dict(e)" if plan else "    return e"]
    else:
        lines += ["    w = {}"]
    for k, (attribute, name) in enumerate(plan):
        seen, fast = getattr(sample, attribute, UNSET), ""
        if type(seen) in _PLAIN:
            fast = f"type(v) is {type(seen).__name__}: w[{name!r}] = v"
        elif type(seen) is _DATETIME:
            fast = f"type(v) is DT and v.tzinfo is UTC: w[{name!r}] = utc(v)"
        elif type(seen) is list and seen and (item := _compiled(type(seen[0]), seen[0], made)):
            scope[f"c{k}"], scope[f"t{k}"] = item, type(seen[0])
            fast = (
                f"type(v) is list:\n        v = [c{k}(x) if type(x) is t{k} else None for x in v]"
                f"\n        if None in v: return None\n        w[{name!r}] = v"
            )
        elif (nested := _compiled(type(seen), seen, made)) is not None:
            scope[f"c{k}"], scope[f"t{k}"] = nested, type(seen)
            fast = (
                f"type(v) is t{k}:\n        v = c{k}(v)\n        if v is None: return None"
                f"\n        w[{name!r}] = v"
            )
        lines.append(f"    v = m.{attribute}")
        if fast:  # a value of another type: to_dict, and its errors (a str for a datetime)
            lines += [f"    if {fast}", "    elif v is not UNSET: return None"]
        else:  # unset in the sample (an optional property): any value ``_value`` knows
            lines += ["    if v is not UNSET:", "        v = value(v)"]
            lines += ["        if v is SKIP: return None", f"        w[{name!r}] = v"]
    if plan:
        lines.append("    return w")
    exec("\n".join(lines), scope)  # the source is built here, from attrs names
    made[cls] = scope["convert"]
    return made[cls]  # type: ignore[no-any-return]


def _choose_event_to_wire(event: Event) -> dict[str, Any] | None:
    """Decide once whether the fast path agrees with ``to_dict``, then use the choice."""
    global _event_to_wire
    _event_to_wire = _fast_event_to_wire() or _no_fast_path
    return _event_to_wire(event)


def _fast_event_to_wire() -> Callable[[Event], dict[str, Any] | None] | None:
    """The compiled ``Event`` converter, if it agrees with ``to_dict`` on a probe event."""
    from .events import new_event  # events imports nothing from here; late all the same

    try:
        probe = new_event("probe", "acct", {"a": ("1.5", "u"), "b": 2}, {"region": "eu"})
        convert = _compiled(Event, probe, {})
        fast = None if convert is None else convert(probe)
        agrees = fast is not None and orjson.dumps(fast) == orjson.dumps(probe.to_dict())
    except Exception:  # a model of another shape: to_dict it is
        return None
    return convert if agrees else None


_event_to_wire: Callable[[Event], dict[str, Any] | None] = _choose_event_to_wire
"""``Event`` -> its wire dict on the fast path, or None (then ``_model_to_wire``)."""
