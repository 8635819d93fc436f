"""The upgrade path: Togai changes its document, the user regenerates.

An additive change (a new optional ``Event.schemaName`` with maxLength 50 and ``Event.id``'s
maxLength 255 -> 512, as Togai's document went; a new error response; a new optional response
header) must need no hand edit: the generator succeeds, the hand-written layer type-checks
against the new package, validates by the new limits, names them in its messages, and
``make spec-diff`` calls the change additive. A breaking change (``accountId`` renamed
``customerId``) must fail loudly and in the right place: mypy names the hand-written line that
uses the old name, the wire-name check names the field and the code that sends it, and
``make spec-diff`` calls it breaking.

Each document is a modified copy in a temporary folder, generated with the pinned recipe
(``scripts/generate.sh OUT SPEC``) into a temporary package. The layer runs in a subprocess
against that package, from a copy of ``src/togai_ingest`` whose packaged ``openapi.yaml`` is the
modified document (that is where ``togai_ingest.spec`` reads it from).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts import spec_diff
from tests import openapi
from tests.openapi import OpenAPI
from togai_ingest import events, readers
from togai_ingest.events import new_event

VENV_BIN = Path(sys.executable).parent
LAYER = openapi.REPO_ROOT / "src" / "togai_ingest"
# The additive change (other names once the document has these): a new optional Event
# property with maxLength 50, ...
NEW = next(
    p for p in ("schemaName", "schemaRef", "sourceName") if p not in openapi.properties("Event")
)
NEW_SNAKE = re.sub(r"(?<!^)(?=[A-Z])", "_", NEW).lower()  # its name in the generated model
NEW_MAX = 50
OLD_ID_MAX = openapi.limit("Event", "id", "maxLength")
ID_MAX = 512 if OLD_ID_MAX < 512 else 2 * OLD_ID_MAX  # and Event.id's maxLength raised
NEW_STATUS = next(  # a new error response, and a new optional response header
    s for s in ("409", "410", "413", "418") if int(s) not in openapi.statuses("ingest")
)
NEW_HEADER = "X-Togai-Request-Id"


def additive_change(text: str) -> str:
    document = yaml.safe_load(text)
    event = document["components"]["schemas"]["Event"]
    event["properties"]["id"]["maxLength"] = ID_MAX
    event["properties"][NEW] = {
        "type": "string",
        "maxLength": NEW_MAX,
        "description": "Schema the event follows.",
    }
    for item in document["paths"].values():  # a new error response ...
        item["post"]["responses"][NEW_STATUS] = {"$ref": "#/components/responses/Error"}
    accepted = document["paths"]["/ingestBatch"]["post"]["responses"]["202"]
    accepted.setdefault("headers", {})[NEW_HEADER] = {  # ... and a new optional header
        "description": "Id of the request, for support.",
        "schema": {"type": "string"},
    }
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)


def breaking_change(text: str) -> str:
    """``accountId`` renamed ``customerId`` everywhere (schema, required, examples)."""
    assert "accountId" in text
    return text.replace("accountId", "customerId")


@dataclass(frozen=True)
class Upgrade:
    """A modified document, the package generated from it and the layer that reads it."""

    root: Path
    document: OpenAPI
    generation: subprocess.CompletedProcess[str]

    @property
    def package(self) -> Path:
        return self.root / "generated"

    @property
    def layer(self) -> Path:
        return self.root / "src"

    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        env["PYTHONPATH"] = os.pathsep.join([str(self.layer), str(self.package)])
        return env

    def python(self, code: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``code`` with this layer and this package ahead of the installed ones."""
        return subprocess.run(
            [sys.executable, "-c", code, *args],
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def mypy(self) -> subprocess.CompletedProcess[str]:
        """mypy --strict over the layer, with the generated package of this document. The
        project's configuration applies: its ``mypy_path`` (``generated``, ``src``) names the
        folders of this upgrade, as mypy runs here."""
        return subprocess.run(
            [
                str(VENV_BIN / "mypy"),
                "--strict",
                "--config-file",
                str(openapi.REPO_ROOT / "pyproject.toml"),
                "--cache-dir",
                str(self.root.parent / ".mypy_cache"),  # shared by the two upgrades
                "src/togai_ingest",
            ],
            cwd=self.root,
            env={**self.env(), "MYPYPATH": str(self.package)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def upgrade(root: Path, change: Any) -> Upgrade:
    root.mkdir()
    spec = root / "togai-ingestion.yaml"
    spec.write_text(change(openapi.SPEC_PATH.read_text(encoding="utf-8")), encoding="utf-8")
    generation = subprocess.run(
        ["scripts/generate.sh", str(root / "generated" / "togai_client"), str(spec)],
        cwd=openapi.REPO_ROOT,
        env={**os.environ, "VENV_BIN": str(VENV_BIN)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    ignore = shutil.ignore_patterns("__pycache__", "openapi.yaml")
    shutil.copytree(LAYER, root / "src" / "togai_ingest", ignore=ignore)
    shutil.copy(spec, root / "src" / "togai_ingest" / "openapi.yaml")
    return Upgrade(root, openapi.load(spec), generation)


@pytest.fixture(scope="module")
def additive(tmp_path_factory: pytest.TempPathFactory) -> Upgrade:
    return upgrade(tmp_path_factory.mktemp("upgrade") / "additive", additive_change)


@pytest.fixture(scope="module")
def breaking(tmp_path_factory: pytest.TempPathFactory) -> Upgrade:
    return upgrade(tmp_path_factory.mktemp("upgrade") / "breaking", breaking_change)


# --- Which wire names the hand-written code uses, and whether a document still has them.


def _wire(record: readers.Record) -> dict[str, Any]:
    assert record.event is not None, record.problem
    event: Any = record.event
    wire: dict[str, Any] = event.wire() if hasattr(event, "wire") else dict(event)
    return wire


def built_events(tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(who built it, an event in wire form) for each way the hand-written code builds one."""
    typed = new_event("apiCall", "acct-1", {"calls": (1, "Count")}, {"region": "eu"})
    yield f"{events.__name__}.new_event", typed.to_dict()
    header = [*readers._FIXED_COLUMNS, "attr.calls", "unit.calls", "dim.region"]
    row = {"eventName": "apiCall", "id": "e-1", "eventTimestamp": "2024-03-01T12:00:00Z"}
    cells = [row.get(column, "acct-1") for column in readers._FIXED_COLUMNS]
    csv = tmp_path / "wire-names.csv"
    csv.write_text(",".join(header) + "\n" + ",".join([*cells, "1", "Count", "eu"]) + "\n")
    (record,) = readers.read_records([readers.Input(str(csv), "csv")])
    yield f"{readers.__name__}.read_records (a CSV row)", _wire(record)


def _unknown(wire: Any, schema: dict[str, Any], path: str) -> Iterator[str]:
    """Paths of ``wire`` that ``schema`` does not declare (free-form objects not looked in)."""
    if isinstance(wire, dict) and "properties" in schema:
        for key, value in wire.items():
            if key in schema["properties"]:
                yield from _unknown(value, schema["properties"][key], f"{path}.{key}")
            else:
                yield f"{path}.{key}"
    elif isinstance(wire, list) and "items" in schema:
        for item in wire:
            yield from _unknown(item, schema["items"], f"{path}[]")


def missing_wire_names(document: OpenAPI, tmp_path: Path) -> dict[str, list[str]]:
    """Each wire name the hand-written code uses that ``document`` lacks -> the code using it."""
    users: dict[str, list[str]] = {}
    declared = document.properties("Event")
    for columns in ("_FIXED_COLUMNS", "_REQUIRED_COLUMNS"):
        for column in getattr(readers, columns):
            if column not in declared:
                users.setdefault(f"Event.{column}", []).append(f"{readers.__name__}.{columns}")
    for who, wire in built_events(tmp_path):
        for name in _unknown(wire, document.schema("Event"), "Event"):
            users.setdefault(name, []).append(who)
    return users


def explain(missing: dict[str, list[str]], document: OpenAPI) -> str:
    return "\n".join(
        f"{name} is not in {document.path.name}; the hand-written code that uses it: "
        + ", ".join(users)
        for name, users in missing.items()
    )


def test_every_wire_name_the_hand_written_code_uses_is_in_the_document(tmp_path: Path) -> None:
    document = openapi.load()
    missing = missing_wire_names(document, tmp_path)
    assert missing == {}, explain(missing, document)
    # The names are really looked at: the events have every level the check walks through.
    built = dict(built_events(tmp_path))
    assert len(built) == 2
    validator = document.validator("/components/schemas/Event")
    for who, wire in built.items():
        assert {"eventAttributes", "dimensions", *readers._REQUIRED_COLUMNS} <= set(wire), who
        assert wire["eventAttributes"][0]["attributeValueUnit"] == "Count", who
        validator.validate(wire)  # types and required properties too, not only names


# --- The additive change: no hand edit needed.


def test_additive_change_generates_and_type_checks(additive: Upgrade) -> None:
    assert additive.generation.returncode == 0, additive.generation.stderr
    model = (additive.package / "togai_client" / "models" / "event.py").read_text()
    assert f"{NEW_SNAKE}: str | Unset = UNSET" in model
    result = additive.mypy()
    assert result.returncode == 0, result.stdout + result.stderr


def test_additive_change_is_followed_by_validation_and_its_messages(additive: Upgrade) -> None:
    document = additive.document
    assert document.limit("Event", NEW, "maxLength") == NEW_MAX
    assert document.limit("Event", "id", "maxLength") == ID_MAX
    event = {
        "eventName": "apiCall",
        "id": "x" * 400,  # over the old limit, under the new one
        "eventTimestamp": "2024-03-01T12:00:00Z",
        "accountId": "acct-1",
        NEW: "orders-v2",
        "eventAttributes": [{"attributeName": "calls", "attributeValue": "1"}],
        "dimensions": {},
    }
    lines = [
        event,
        {**event, NEW: "s" * (NEW_MAX + 1)},
        {**event, "id": "x" * (ID_MAX + 1)},
        {**event, "userId": "u-1"},
    ]
    path = additive.root / "events.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))

    cli = "import sys; from togai_ingest.cli import main; sys.argv[0] = 'togai-ingest'; main()"
    result = additive.python(cli, "validate", str(path))

    allowed = ", ".join(document.properties("Event"))
    assert NEW in allowed
    assert result.stdout.splitlines() == [
        f"{path}:2: event.{NEW}: longer than {NEW_MAX} characters",
        f"{path}:3: event.id: longer than {ID_MAX} characters",
        f"{path}:4: event.userId: unknown property (allowed: {allowed})",
        "4 records: 1 valid, 3 invalid",
    ], result.stderr
    assert result.returncode == 1

    typed = """
import togai_client, togai_ingest
from togai_ingest import Client, Event, ValidationError
for module in (togai_client, togai_ingest):
    assert module.__file__.startswith(sys.argv[1]), module.__file__
wire = json.loads(sys.argv[2])
model = Event.from_dict(wire)
name, attribute, limit = sys.argv[3], sys.argv[4], int(sys.argv[5])
assert getattr(model, attribute) == model.to_dict()[name] == wire[name]
setattr(model, attribute, "s" * (limit + 1))
with Client("t0k3n", base_url="https://127.0.0.1:9") as client:
    try:
        client.ingest(model)
    except ValidationError as error:
        print(error)
"""
    result = additive.python(
        "import json, sys\n" + typed,
        str(additive.root),
        json.dumps(event),
        NEW,
        NEW_SNAKE,
        str(NEW_MAX),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"event.{NEW}: longer than {NEW_MAX} characters"


def test_additive_change_is_additive_for_spec_diff(additive: Upgrade) -> None:
    changes = spec_diff.diff(openapi.document(), additive.document.data)
    assert [str(change) for change in changes] == [
        f"additive  POST /ingest: response {NEW_STATUS} added",
        f"additive  POST /ingestBatch: response {NEW_STATUS} added",
        f"additive  POST /ingestBatch 202: response header {NEW_HEADER} added",
        f"additive  schema Event: property {NEW} added (optional; string, maxLength {NEW_MAX})",
        f"additive  schema Event.id: maxLength raised {OLD_ID_MAX} -> {ID_MAX}",
    ]


def test_additive_change_keeps_every_wire_name(additive: Upgrade, tmp_path: Path) -> None:
    assert missing_wire_names(additive.document, tmp_path) == {}


# --- The breaking change: loud, naming what changed and the code that depends on it.


def test_breaking_change_fails_mypy_at_the_hand_written_line(breaking: Upgrade) -> None:
    assert breaking.generation.returncode == 0, breaking.generation.stderr  # it generates...
    result = breaking.mypy()  # ... but the layer no longer type-checks against it
    assert result.returncode == 1, result.stdout
    line = next(line for line in result.stdout.splitlines() if "account_id" in line)
    assert line.startswith("src/togai_ingest/events.py:")
    assert 'Unexpected keyword argument "account_id" for "Event"' in line


def test_breaking_change_fails_the_wire_name_check(breaking: Upgrade, tmp_path: Path) -> None:
    missing = missing_wire_names(breaking.document, tmp_path)
    assert set(missing) == {"Event.accountId"}
    message = explain(missing, breaking.document)
    assert message == (
        "Event.accountId is not in togai-ingestion.yaml; the hand-written code that uses it: "
        "togai_ingest.readers._FIXED_COLUMNS, togai_ingest.readers._REQUIRED_COLUMNS, "
        "togai_ingest.events.new_event, togai_ingest.readers.read_records (a CSV row)"
    )


def test_breaking_change_is_breaking_for_spec_diff(breaking: Upgrade) -> None:
    changes = spec_diff.diff(openapi.document(), breaking.document.data)
    removed = "property accountId removed (renamed customerId?)"
    assert f"BREAKING  schema Event: {removed}" in map(str, changes)
    assert (
        "BREAKING  schema Event: property customerId added (required; string, maxLength 255)"
        in (map(str, changes))
    )
    assert all(change.breaking for change in changes)
