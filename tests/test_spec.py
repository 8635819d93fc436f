"""The OpenAPI document itself: valid OpenAPI 3.0, and every example valid against its schema."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import OpenAPIV30SpecValidator, validate

from tests import openapi
from tests.openapi import HTTP_METHODS, JSON_MEDIA_TYPE, SPEC_PATH, json_pointer

SPEC = openapi.document()


def media_types() -> Iterator[tuple[str, dict[str, Any]]]:
    """(pointer, media type object) of every request body and response, $refs followed once.

    A media type reached through a `$ref` is reported at its referenced location, so shared
    components/responses are checked once, with the pointer that names them.
    """
    seen: set[str] = set()

    def deref(pointer: str, node: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if "$ref" in node:
            ref: str = node["$ref"]
            return ref[1:], openapi.resolve(node)
        return pointer, node

    def content_of(pointer: str, node: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        pointer, node = deref(pointer, node)
        for media_name, media in node.get("content", {}).items():
            media_pointer = pointer + json_pointer("content", media_name)
            if media_pointer not in seen:
                seen.add(media_pointer)
                yield media_pointer, media

    for path, item in SPEC["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            base = json_pointer("paths", path, method)
            if "requestBody" in operation:
                yield from content_of(base + "/requestBody", operation["requestBody"])
            for status, response in operation["responses"].items():
                yield from content_of(base + json_pointer("responses", status), response)
    for section in ("requestBodies", "responses"):
        for name, node in SPEC["components"].get(section, {}).items():
            yield from content_of(json_pointer("components", section, name), node)


def example_cases() -> list[tuple[str, str, Any]]:
    """(id, schema pointer, example value) for every example the document gives."""
    cases: list[tuple[str, str, Any]] = []
    for pointer, media in media_types():
        schema_pointer = pointer + "/schema"
        if "example" in media:
            cases.append((f"{pointer}/example", schema_pointer, media["example"]))
        for name, example in media.get("examples", {}).items():
            if "$ref" in example:
                example = openapi.resolve(example)
            assert "value" in example, f"{pointer}/examples/{name}: only `value` is supported"
            cases.append((f"{pointer}/examples/{name}", schema_pointer, example["value"]))
    # Headers: components/headers and headers declared inline on responses.
    for name, header in SPEC["components"].get("headers", {}).items():
        if "example" in header:
            pointer = json_pointer("components", "headers", name)
            cases.append((f"{pointer}/example", f"{pointer}/schema", header["example"]))
    # `example` keywords inside schemas (property examples).
    for name, schema in SPEC["components"]["schemas"].items():
        cases.extend(schema_examples(json_pointer("components", "schemas", name), schema))
    return cases


def schema_examples(pointer: str, schema: Any) -> Iterator[tuple[str, str, Any]]:
    if not isinstance(schema, dict):
        return
    if "example" in schema:
        yield f"{pointer}/example", pointer, schema["example"]
    for key in ("properties",):
        for name, sub in schema.get(key, {}).items():
            yield from schema_examples(pointer + json_pointer(key, name), sub)
    for key in ("items", "additionalProperties"):
        yield from schema_examples(pointer + json_pointer(key), schema.get(key))
    for key in ("allOf", "anyOf", "oneOf"):
        for index, sub in enumerate(schema.get(key, [])):
            yield from schema_examples(pointer + json_pointer(key, index), sub)


CASES = example_cases()


def test_openapi_spec_validator_passes() -> None:
    validate(SPEC, base_uri=SPEC_PATH.as_uri())
    assert SPEC["openapi"].startswith("3.0.")
    errors = list(OpenAPIV30SpecValidator(SPEC, base_uri=SPEC_PATH.as_uri()).iter_errors())
    assert errors == []


def test_date_time_format_is_checked() -> None:
    assert "date-time" in OAS30Validator.FORMAT_CHECKER.checkers


@pytest.mark.parametrize(
    ("schema_pointer", "value"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_example_matches_its_schema(schema_pointer: str, value: Any) -> None:
    openapi.validator(schema_pointer).validate(value)


def test_every_kind_of_example_is_checked() -> None:
    ids = [case[0] for case in CASES]
    assert any("/requestBody/" in i and "/examples/" in i for i in ids)  # request examples
    assert any("/responses/202/" in i and "/examples/" in i for i in ids)  # 202 response
    assert any("/responses/207/" in i and "/examples/" in i for i in ids)  # 207 response
    assert any(i.startswith("/components/responses/") for i in ids)  # error responses
    assert any(i.startswith("/components/headers/") for i in ids)
    assert any(i.startswith("/components/schemas/") for i in ids)
    # Every named example is used by some media type, hence checked against its schema.
    used = {
        example["$ref"].rsplit("/", 1)[-1]
        for _, media in media_types()
        for example in media.get("examples", {}).values()
        if "$ref" in example
    }
    assert used == set(SPEC["components"].get("examples", {}))


def test_every_207_example_lists_rejected_events() -> None:
    response = SPEC["paths"]["/ingestBatch"]["post"]["responses"]["207"]
    examples = response["content"][JSON_MEDIA_TYPE]["examples"]
    assert examples
    for name, example in examples.items():
        errors = example["value"]["errors"]
        assert errors, f"207 example {name} lists no rejected event"
        for error in errors:
            assert error.get("message"), name
            assert error.get("eventPayload"), name
            openapi.validator("/components/schemas/Event").validate(error["eventPayload"])


def test_example_check_is_not_vacuous() -> None:
    """Broken copies of the examples fail: required field, date-time format, unknown key."""
    pointer = json_pointer("paths", "/ingestBatch", "post", "responses", "207")
    pointer += json_pointer("content", JSON_MEDIA_TYPE, "schema")
    validator = openapi.validator(pointer)
    media = SPEC["paths"]["/ingestBatch"]["post"]["responses"]["207"]["content"][JSON_MEDIA_TYPE]
    good = next(iter(media["examples"].values()))["value"]
    validator.validate(good)

    no_offset = copy.deepcopy(good)
    no_offset["errors"][0]["eventPayload"]["eventTimestamp"] = "2019-01-01T00:00:00"
    missing = copy.deepcopy(good)
    del missing["errors"][0]["eventPayload"]["accountId"]
    unknown = copy.deepcopy(good)
    unknown["errors"][0]["eventPayload"]["unknown"] = True
    for broken in (no_offset, missing, unknown):
        assert not validator.is_valid(broken)
        assert len(list(validator.iter_errors(broken))) == 1


def test_the_shared_helper_reads_any_copy_of_the_document(tmp_path: Path) -> None:
    """tests/openapi.py: limits, property lists and statuses as the document gives them."""
    event = SPEC["components"]["schemas"]["Event"]
    assert openapi.properties("Event") == list(event["properties"])
    assert openapi.required("Event") == event["required"]
    assert openapi.limit("Event", "id", "maxLength") == event["properties"]["id"]["maxLength"]
    items = openapi.schema("IngestBatchEventRequest")["properties"]["events"]["items"]
    assert items["properties"]["eventAttributes"]["items"]["required"] == [
        "attributeName",
        "attributeValue",
    ]  # references inlined, at every depth
    assert {202, 207} <= set(openapi.success_statuses("ingestBatch"))
    assert set(openapi.success_statuses("ingest")) < set(openapi.statuses("ingest"))
    assert "Retry-After" in openapi.load().response_headers("ingest", 429)
    with pytest.raises(KeyError, match="has no maxItems"):
        openapi.limit("Event", "id", "maxItems")

    limit = openapi.limit("Event", "id", "maxLength")
    modified = copy.deepcopy(SPEC)
    modified["components"]["schemas"]["Event"]["properties"]["id"]["maxLength"] = limit + 1
    copy_path = tmp_path / "copy.yaml"
    copy_path.write_text(yaml.safe_dump(modified))
    changed = openapi.load(copy_path)
    assert changed.limit("Event", "id", "maxLength") == limit + 1
    assert openapi.limit("Event", "id", "maxLength") == limit  # the checked-in one is untouched
    example = SPEC["components"]["examples"]["IngestEventRequestExample"]["value"]["event"]
    longer = {**example, "id": "x" * (limit + 1)}
    assert changed.validator("/components/schemas/Event").is_valid(longer)
    assert not openapi.validator("/components/schemas/Event").is_valid(longer)
