"""`make spec-diff` (scripts/spec_diff.py): each kind of change, marked additive or breaking."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts import spec_diff
from scripts.spec_diff import Change, diff
from tests import openapi

Doc = dict[str, Any]


def base() -> Doc:
    """A small document shaped like Togai's: ``Item`` is sent (and echoed in ``Result``),
    ``Note`` only sent, ``Result`` only received."""
    error = {"description": "Error", "content": {"application/json": {"schema": _ref("Error")}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "t", "version": "1"},
        "paths": {
            "/items": {
                "post": {
                    "operationId": "addItems",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("Batch")}},
                    },
                    "responses": {
                        "202": {
                            "description": "ok",
                            "content": {"application/json": {"schema": _ref("Result")}},
                        },
                        "429": {
                            "description": "slow down",
                            "headers": {"Retry-After": {"schema": {"type": "string"}}},
                            "content": error["content"],
                        },
                    },
                }
            }
        },
        "components": {
            "schemas": {
                "Batch": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["items"],
                    "properties": {
                        "items": {"type": "array", "minItems": 1, "items": _ref("Item")},
                        "note": _ref("Note"),
                    },
                },
                "Item": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["id", "name"],
                    "properties": {
                        "id": {"type": "string", "maxLength": 255},
                        "name": {"type": "string", "minLength": 1},
                        "at": {"type": "string", "format": "date-time"},
                    },
                },
                "Note": {
                    "type": "object",
                    "properties": {
                        "text": {"type": "string", "maxLength": 10},
                        "kind": {"type": "string", "enum": ["a", "b"]},
                    },
                },
                "Result": {
                    "type": "object",
                    "required": ["errors"],
                    "properties": {
                        "errors": {"type": "array", "maxItems": 100, "items": _ref("Item")},
                        "count": {"type": "integer"},
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["message"],
                    "properties": {"message": {"type": "string", "maxLength": 500}},
                },
            }
        },
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def schemas(doc: Doc) -> dict[str, Any]:
    found: dict[str, Any] = doc["components"]["schemas"]
    return found


def operation(doc: Doc) -> dict[str, Any]:
    found: dict[str, Any] = doc["paths"]["/items"]["post"]
    return found


def changed(edit: Callable[[Doc], object]) -> list[Change]:
    new = base()
    edit(new)
    return diff(base(), new)


# (edit, the change's text as reported); each edit makes exactly one change.
ADDITIVE: dict[str, tuple[Callable[[Doc], object], str]] = {
    "optional request property": (
        lambda d: schemas(d)["Item"]["properties"].update(tag={"type": "string", "maxLength": 50}),
        "schema Item: property tag added (optional; string, maxLength 50)",
    ),
    "raised request maxLength": (
        lambda d: schemas(d)["Item"]["properties"]["id"].update(maxLength=512),
        "schema Item.id: maxLength raised 255 -> 512",
    ),
    "dropped request minLength": (
        lambda d: schemas(d)["Item"]["properties"]["name"].pop("minLength"),
        "schema Item.name: minLength 1 dropped",
    ),
    "lowered request minItems": (
        lambda d: schemas(d)["Batch"]["properties"]["items"].update(minItems=0),
        "schema Batch.items: minItems lowered 1 -> 0",
    ),
    "required made optional in a request": (
        lambda d: schemas(d)["Batch"].update(required=[]),
        "schema Batch.items: now optional (was required)",
    ),
    "enum value added in a request": (
        lambda d: schemas(d)["Note"]["properties"]["kind"].update(enum=["a", "b", "c"]),
        "schema Note.kind: enum values added: c",
    ),
    "additional properties allowed in a request": (
        lambda d: schemas(d)["Batch"].pop("additionalProperties"),
        "schema Batch: additional properties now allowed",
    ),
    "additional properties refused in a response": (
        lambda d: schemas(d)["Result"].update(additionalProperties=False),
        "schema Result: additional properties no longer allowed",
    ),
    "response property added, even required": (
        lambda d: (
            schemas(d)["Result"]["properties"].update(total={"type": "integer"}),
            schemas(d)["Result"]["required"].append("total"),
        ),
        "schema Result: property total added (required; integer)",
    ),
    "response limit lowered": (
        lambda d: schemas(d)["Error"]["properties"]["message"].update(maxLength=100),
        "schema Error.message: maxLength lowered 500 -> 100",
    ),
    "new response status": (
        lambda d: operation(d)["responses"].update({"503": {"description": "later"}}),
        "POST /items: response 503 added",
    ),
    "new response header": (
        lambda d: operation(d)["responses"]["202"].update(
            headers={"X-Request-Id": {"schema": {"type": "string"}}}
        ),
        "POST /items 202: response header X-Request-Id added",
    ),
    "new operation": (
        lambda d: d["paths"].update(
            {"/other": {"get": {"responses": {"200": {"description": "."}}}}}
        ),
        "GET /other: operation added",
    ),
    "new optional parameter": (
        lambda d: operation(d).update(
            parameters=[{"in": "query", "name": "dryRun", "schema": {"type": "boolean"}}]
        ),
        "POST /items: query parameter dryRun added (optional)",
    ),
    "new schema": (
        lambda d: schemas(d).update(Spare={"type": "string"}),
        "schema Spare: schema added",
    ),
}

BREAKING: dict[str, tuple[Callable[[Doc], object], str]] = {
    "required request property": (
        lambda d: (
            schemas(d)["Item"]["properties"].update(tag={"type": "string"}),
            schemas(d)["Item"]["required"].append("tag"),
        ),
        "schema Item: property tag added (required; string)",
    ),
    "removed property": (
        lambda d: schemas(d)["Item"]["properties"].pop("at"),
        "schema Item: property at removed",
    ),
    "renamed property": (
        lambda d: schemas(d)["Item"]["properties"].update(
            when=schemas(d)["Item"]["properties"].pop("at")
        ),
        "schema Item: property at removed (renamed when?)",
    ),
    "lowered request maxLength (the schema is also in responses)": (
        lambda d: schemas(d)["Item"]["properties"]["id"].update(maxLength=36),
        "schema Item.id: maxLength lowered 255 -> 36",
    ),
    "new request limit": (
        lambda d: schemas(d)["Batch"]["properties"]["items"].update(maxItems=10),
        "schema Batch.items: maxItems 10 added",
    ),
    "raised request minLength": (
        lambda d: schemas(d)["Item"]["properties"]["name"].update(minLength=3),
        "schema Item.name: minLength raised 1 -> 3",
    ),
    "optional made required in a request": (
        lambda d: schemas(d)["Note"].update(required=["text"]),
        "schema Note.text: now required (was optional)",
    ),
    "required made optional in a response": (
        lambda d: schemas(d)["Error"].update(required=[]),
        "schema Error.message: now optional (was required)",
    ),
    "enum value removed in a request": (
        lambda d: schemas(d)["Note"]["properties"]["kind"].update(enum=["a"]),
        "schema Note.kind: enum values removed: b",
    ),
    "additional properties refused": (
        lambda d: schemas(d)["Note"].update(additionalProperties=False),
        "schema Note: additional properties no longer allowed",
    ),
    "type changed": (
        lambda d: schemas(d)["Item"]["properties"]["id"].update(type="integer"),
        "schema Item.id: type string -> integer",
    ),
    "format changed": (
        lambda d: schemas(d)["Item"]["properties"]["at"].update(format="date"),
        "schema Item.at: format date-time -> date",
    ),
    "reference changed": (
        lambda d: schemas(d)["Batch"]["properties"].update(note=_ref("Error")),
        "schema Batch.note: now Error (was Note)",
    ),
    "response status removed": (
        lambda d: operation(d)["responses"].pop("429"),
        "POST /items: response 429 removed",
    ),
    "response header removed": (
        lambda d: operation(d)["responses"]["429"].pop("headers"),
        "POST /items 429: response header Retry-After removed",
    ),
    "operation removed": (lambda d: d["paths"].clear(), "POST /items: operation removed"),
    "operationId changed": (
        lambda d: operation(d).update(operationId="putItems"),
        "POST /items: operationId addItems -> putItems (the generated function is renamed)",
    ),
    "new required parameter": (
        lambda d: operation(d).update(
            parameters=[{"in": "header", "name": "X-Org", "required": True, "schema": {}}]
        ),
        "POST /items: header parameter X-Org added (required)",
    ),
    "media type removed": (
        lambda d: operation(d)["requestBody"]["content"].update(
            {"application/x-ndjson": operation(d)["requestBody"]["content"].pop("application/json")}
        ),
        "POST /items request: media type application/json removed",
    ),
    "schema removed": (
        lambda d: (schemas(d).pop("Note"), schemas(d)["Batch"]["properties"].pop("note")),
        "schema Note: schema removed (its model goes)",
    ),
}


@pytest.mark.parametrize("case", list(ADDITIVE))
def test_additive_change(case: str) -> None:
    edit, expected = ADDITIVE[case]
    changes = changed(edit)
    assert [str(change) for change in changes] == [f"additive  {expected}"]


@pytest.mark.parametrize("case", list(BREAKING))
def test_breaking_change(case: str) -> None:
    edit, expected = BREAKING[case]
    changes = changed(edit)
    assert f"BREAKING  {expected}" in [str(change) for change in changes], changes


def test_no_change_is_reported_as_none() -> None:
    new = base()
    schemas(new)["Item"]["description"] = "descriptions and examples are not compared"
    assert diff(base(), new) == []
    assert diff(openapi.document(), copy.deepcopy(openapi.document())) == []


def test_a_schema_used_nowhere_gets_both_rules() -> None:
    old = base()
    schemas(old)["Spare"] = {"type": "object", "properties": {"a": {"type": "string"}}}
    new = copy.deepcopy(old)
    schemas(new)["Spare"]["required"] = ["a"]
    assert [c.breaking for c in diff(old, new)] == [True]  # a request would break
    new = copy.deepcopy(old)
    schemas(old)["Spare"]["required"] = ["a"]
    assert [c.breaking for c in diff(old, new)] == [True]  # a response would break


def write(path: Path, doc: Doc) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def test_main_exits_0_for_additive_1_for_breaking_2_for_unreadable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = write(tmp_path / "old.yaml", base())
    additive, breaking = base(), base()
    schemas(additive)["Item"]["properties"]["id"]["maxLength"] = 512
    schemas(breaking)["Item"]["properties"].pop("name")
    schemas(breaking)["Item"]["required"].remove("name")

    assert spec_diff.main([str(old), str(write(tmp_path / "a.yaml", additive))]) == 0
    out = capsys.readouterr().out
    assert "additive  schema Item.id: maxLength raised 255 -> 512" in out
    assert out.rstrip().endswith("1 change(s): 1 additive, 0 breaking")

    assert spec_diff.main([str(old), str(write(tmp_path / "b.yaml", breaking))]) == 1
    out = capsys.readouterr().out
    assert "BREAKING  schema Item: property name removed" in out
    assert "1 change(s): 0 additive, 1 breaking" in out

    assert spec_diff.main([str(old), str(old)]) == 0
    assert "no change in operations" in capsys.readouterr().out

    (tmp_path / "bad.yaml").write_text("openapi: [unclosed\n")
    assert spec_diff.main([str(old), str(tmp_path / "bad.yaml")]) == 2
    assert "is not YAML" in capsys.readouterr().err
    assert spec_diff.main([str(old), str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_the_committed_document_is_read_from_git(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "openapi").mkdir()
    write(tmp_path / spec_diff.SPEC, base())
    git("add", ".")
    identity = ("-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false")
    git(*identity, "commit", "-q", "-m", "spec")
    write(tmp_path / spec_diff.SPEC, {**base(), "paths": {}})  # the working copy differs

    assert spec_diff.load_revision("HEAD", repo=tmp_path) == base()
    with pytest.raises(spec_diff.DocumentError, match="git show no-such-revision"):
        spec_diff.load_revision("no-such-revision", repo=tmp_path)
