"""The fast paths give exactly what the slow paths give: the typed model's wire form without
``to_dict``, ``new_event``'s number formatting, orjson in the JSON Lines reader, and the
batch encoder's lazy names. Each is compared with the code it stands in for."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from togai_client.models import Event, EventAttribute, EventDimensions

from togai_ingest import ValidationError, encode_event, new_event, validation
from togai_ingest.events import attribute_value
from togai_ingest.readers import _UNSURE, Input, _quick_json, read_records
from togai_ingest.request import Batch
from togai_ingest.spec import spec

FAST = settings(max_examples=150, deadline=None, derandomize=True)

utc_datetimes = st.datetimes(
    min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59, 999999)
).map(lambda d: d.replace(tzinfo=dt.UTC))


def model(stamp: dt.datetime, units: tuple[str | None, ...] = ("Count", None)) -> Event:
    return new_event(
        "apiCall",
        "acct-1",
        {f"a{i}": (i, unit) if unit is not None else i for i, unit in enumerate(units)},
        {"region": "eu", "plan": "pro"},
        timestamp=stamp,
        id="evt-1",
    )


@FAST
@given(utc_datetimes)
def test_the_utc_timestamp_text_is_isoformat(stamp: dt.datetime) -> None:
    assert validation._utc_text(stamp) == stamp.isoformat()


@FAST
@given(utc_datetimes, st.lists(st.one_of(st.none(), st.text(max_size=5)), max_size=3))
def test_a_typed_event_is_encoded_as_its_to_dict(stamp: dt.datetime, units: list[Any]) -> None:
    event = model(stamp, tuple(units))
    assert encode_event(event).json == orjson.dumps(event.to_dict())


@pytest.mark.parametrize(
    "zone",
    [dt.timezone(dt.timedelta(hours=2)), dt.timezone(dt.timedelta(hours=-5, minutes=-30))],
)
def test_other_offsets_take_to_dict(zone: dt.tzinfo) -> None:
    event = model(dt.datetime(2024, 6, 1, 12, 0, 0, 5, tzinfo=zone))
    assert validation._event_to_wire(event) is None
    assert encode_event(event).json == orjson.dumps(event.to_dict())


def test_models_in_unusual_states_take_to_dict_and_its_errors() -> None:
    event = model(dt.datetime(2024, 6, 1, tzinfo=dt.UTC))
    event.event_attributes = [{"attributeName": "a", "attributeValue": "1"}]  # type: ignore[list-item]
    assert validation._event_to_wire(event) is None
    with pytest.raises(ValidationError, match="cannot be converted"):
        encode_event(event)
    naive = model(dt.datetime(2024, 6, 1))
    with pytest.raises(ValidationError, match="naive datetime"):
        encode_event(naive)


def test_a_subclass_of_event_takes_its_own_to_dict() -> None:
    class Tagged(Event):
        def to_dict(self) -> dict[str, Any]:
            wire = super().to_dict()
            wire["eventName"] = "tagged"
            return wire

    base = model(dt.datetime(2024, 6, 1, tzinfo=dt.UTC))
    tagged = Tagged(
        event_name=base.event_name,
        id=base.id,
        event_timestamp=base.event_timestamp,
        account_id=base.account_id,
        event_attributes=base.event_attributes,
        dimensions=base.dimensions,
    )
    assert encode_event(tagged).wire()["eventName"] == "tagged"


def test_a_model_changed_before_it_is_read_is_sent_as_changed() -> None:
    event = model(dt.datetime(2024, 6, 1, tzinfo=dt.UTC))
    event.event_attributes.append(EventAttribute(attribute_name="late", attribute_value="9"))
    event.dimensions.additional_properties["plan"] = "free"
    wire = encode_event(event).wire()
    assert wire["eventAttributes"][-1] == {"attributeName": "late", "attributeValue": "9"}
    assert wire["dimensions"]["plan"] == "free"
    event.dimensions.additional_properties["plan"] = "after"  # after encoding: no change
    assert wire["dimensions"]["plan"] == "free"


def test_the_fast_path_steps_aside_for_models_of_another_shape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A field the document does not name (a model generated from another document): no plan.
    monkeypatch.setattr(validation, "_wire_names", lambda: {"event_name": "eventName"})
    monkeypatch.setattr(validation, "_plans", {})
    monkeypatch.setattr(validation, "_event_to_wire", validation._choose_event_to_wire)
    event = model(dt.datetime(2024, 6, 1, tzinfo=dt.UTC))
    assert encode_event(event).json == orjson.dumps(event.to_dict())
    assert validation._event_to_wire is validation._no_fast_path


@pytest.mark.parametrize("cls", [Event, EventAttribute])
def test_the_plans_wire_names_are_the_documents_properties(cls: type) -> None:
    plan = validation._plan(cls)
    assert plan is not None
    assert {name for _, name in plan} == set(spec().schemas[cls.__name__]["properties"])


def test_the_probe_agrees_with_to_dict() -> None:
    assert validation._fast_event_to_wire() is not None
    dimensions = EventDimensions()
    assert dimensions.to_dict() == {}


@FAST
@given(
    st.one_of(
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=False, allow_infinity=False),
    )
)
def test_new_event_writes_numbers_as_attribute_value_does(value: float) -> None:
    text = new_event("a", "b", {"n": value}).event_attributes[0].attribute_value
    assert text == attribute_value(value)
    assert "e" not in text.lower() and float(text) == float(value)


@pytest.mark.parametrize(
    "value",
    [math.nan, -math.inf, True, None, 10**5000],
    ids=["nan", "-inf", "bool", "none", "huge"],
)
def test_new_event_refuses_with_a_named_error(value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        new_event("a", "b", {"n": value})
    assert "'n'" in info.value.path


@pytest.mark.parametrize("spec_value", [(1,), (1, "u", "v")])
def test_a_tuple_that_is_not_a_pair_is_a_named_error(spec_value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        new_event("a", "b", {"n": spec_value})
    assert "'n'" in info.value.path


def test_a_bad_unit_is_named_before_the_value() -> None:
    with pytest.raises(ValidationError) as info:
        new_event("a", "b", {"n": (None, 5)})  # type: ignore[dict-item]
    assert info.value.path.endswith(".unit")


def test_an_invalid_event_in_a_batch_is_named_by_its_index() -> None:
    batch = Batch(40, 0)
    batch.add({"id": "x"})
    assert batch.invalid[0].index == 40
    assert batch.invalid[0].error.path.startswith("events[40]")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**25), max_value=10**25)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@FAST
@given(json_values)
def test_the_quick_parse_is_what_json_reads(value: Any) -> None:
    line = json.dumps(value, ensure_ascii=False).encode() + b"\n"
    quick = _quick_json(line)
    if quick is not _UNSURE:
        assert quick == json.loads(line)
        assert repr(quick) == repr(json.loads(line))  # int stays int, -0.0 stays -0.0


@pytest.mark.parametrize(
    "line",
    [
        b'{"accountId": 123456789012345678901234567890}\n',
        b'{"a": -9223372036854775809}\n',
        b'{"a": NaN}\n',
        b'"\\ud800"\n',
        b"\x1c{}\n",
        b"[" * 600 + b"]" * 600 + b"\n",
    ],
)
def test_what_orjson_would_read_otherwise_is_left_to_json(line: bytes) -> None:
    assert _quick_json(line) is _UNSURE


def test_a_long_integer_reaches_the_rejected_record_as_it_was_written(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(
        b'{"eventName": "a", "id": "x", "eventTimestamp": "2024-06-01T00:00:00Z", '
        b'"accountId": 123456789012345678901234567890, "eventAttributes": [], '
        b'"dimensions": {}}\n'
    )
    (record,) = read_records([Input(str(path), "jsonl")])
    assert record.event is None and record.raw["accountId"] == 123456789012345678901234567890


def test_a_valid_jsonl_record_is_what_it_was_before(tmp_path: Path) -> None:
    wire = {
        "eventName": "apiCall",
        "id": "evt-9",
        "eventTimestamp": "2024-06-01T09:30:35+02:00",
        "accountId": "acct-1",
        "eventAttributes": [{"attributeName": "n", "attributeValue": "1"}],
        "dimensions": {"region": "eu"},
    }
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(wire) + "\n", encoding="utf-8")
    (record,) = read_records([Input(str(path), "jsonl")])
    assert record.event is not None and record.event.wire() == wire
    assert record.event.json == encode_event(wire).json


def test_a_field_name_two_properties_share_gets_no_wire_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    document: dict[str, Any] = {
        "a": {"properties": {"accountId": {}}},
        "b": {"properties": {"accountID": {}}},
    }
    monkeypatch.setattr(validation, "spec", lambda: type("S", (), {"document": document})())
    validation._wire_names.cache_clear()
    try:
        assert "account_id" not in validation._wire_names()
    finally:
        validation._wire_names.cache_clear()
