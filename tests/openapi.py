"""The OpenAPI document for the tests: read once per file, references resolved in one place.

Tests read names, limits, property lists and statuses from here instead of repeating them, so
that an additive change of the document (a new optional property, a raised limit, a new error
response) needs no hand edit of a test::

    from tests import openapi

    openapi.limit("Event", "id", "maxLength")          # 255 today
    openapi.properties("Event")                        # ["eventName", "id", ...], in order
    openapi.success_statuses("ingestBatch")            # [202, 207]

The module-level functions read the checked-in ``openapi/togai-ingestion.yaml``; ``load(path)``
gives the same methods for another copy (the upgrade test points it at a modified one). The
parsed data is shared: copy it (``copy.deepcopy``) before changing it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

REPO_ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = REPO_ROOT / "openapi" / "togai-ingestion.yaml"
JSON_MEDIA_TYPE = "application/json"
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
SPEC_URI = "urn:togai-ingestion-openapi"


class SchemaValidator(Protocol):
    """What tests use of a jsonschema validator (jsonschema ships no type information)."""

    def validate(self, instance: Any) -> None: ...

    def is_valid(self, instance: Any) -> bool: ...

    def iter_errors(self, instance: Any) -> Iterator[Any]: ...


def json_pointer(*parts: str | int) -> str:
    """An RFC 6901 pointer: json_pointer("paths", "/ingest") == "/paths/~1ingest"."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)


def resolve_in(data: dict[str, Any], node: Any) -> Any:
    """Follow a local ``$ref`` (and chains of them) within the document ``data``."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise ValueError(f"only local references are supported: {ref}")
        node = data
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def validator_for(data: dict[str, Any], pointer: str) -> SchemaValidator:
    """An OpenAPI 3.0 schema validator (formats such as date-time checked) for the schema at
    JSON ``pointer`` of ``data``; ``$ref``s resolve within the document."""
    resource = Resource.from_contents(data, default_specification=DRAFT4)
    registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
    validator: SchemaValidator = OAS30Validator(
        {"$ref": f"{SPEC_URI}#{pointer}"},
        registry=registry,
        format_checker=OAS30Validator.FORMAT_CHECKER,
    )
    return validator


@dataclass(frozen=True, eq=False)
class OpenAPI:
    """One parsed document (``data``) read from ``path``."""

    path: Path
    data: dict[str, Any]

    def resolve(self, node: Any) -> Any:
        """``node`` with its ``$ref`` chain followed (only the top level)."""
        return resolve_in(self.data, node)

    def inline(self, node: Any) -> Any:
        """A copy of ``node`` with every ``$ref`` inlined (the document is not recursive)."""
        node = self.resolve(node)
        if isinstance(node, dict):
            return {key: self.inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [self.inline(value) for value in node]
        return node

    def schema(self, name: str) -> dict[str, Any]:
        """``components/schemas/<name>`` with its references inlined."""
        found: dict[str, Any] = self.inline(self.data["components"]["schemas"][name])
        return found

    def property(self, schema: str, prop: str) -> dict[str, Any]:
        """The (inlined) schema of property ``prop`` of component schema ``schema``."""
        properties = self.schema(schema).get("properties", {})
        if prop not in properties:
            raise KeyError(f"components/schemas/{schema} has no property {prop!r}")
        found: dict[str, Any] = properties[prop]
        return found

    def limit(self, schema: str, prop: str, keyword: str) -> int:
        """A numeric keyword of a property, e.g. ``limit("Event", "id", "maxLength")``."""
        node = self.property(schema, prop)
        if keyword not in node:
            raise KeyError(f"components/schemas/{schema}/properties/{prop} has no {keyword}")
        return int(node[keyword])

    def properties(self, schema: str) -> list[str]:
        """The property names of a component schema, in the document's order."""
        return list(self.schema(schema).get("properties", {}))

    def required(self, schema: str) -> list[str]:
        """The required property names of a component schema, in the document's order."""
        return list(self.schema(schema).get("required", []))

    def operations(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """(path, method, operation) of every operation."""
        for path, item in self.data["paths"].items():
            for method, operation in item.items():
                if method in HTTP_METHODS:
                    yield path, method, operation

    def operation(self, operation_id: str) -> tuple[str, str, dict[str, Any]]:
        """(path, method, operation) of the operation with ``operationId`` ``operation_id``."""
        for path, method, operation in self.operations():
            if operation.get("operationId") == operation_id:
                return path, method, operation
        raise KeyError(f"no operation {operation_id!r} in {self.path}")

    def responses(self, operation_id: str) -> dict[str, dict[str, Any]]:
        """The operation's responses by status ("202", ..., "default"), references followed."""
        operation = self.operation(operation_id)[2]
        return {status: self.resolve(node) for status, node in operation["responses"].items()}

    def statuses(self, operation_id: str) -> list[int]:
        """The numeric statuses the operation declares, ascending (``default`` left out)."""
        return sorted(int(status) for status in self.responses(operation_id) if status.isdigit())

    def success_statuses(self, operation_id: str) -> list[int]:
        """The declared 2xx statuses of the operation, ascending."""
        return [status for status in self.statuses(operation_id) if 200 <= status < 300]

    def response_headers(self, operation_id: str, status: int | str) -> list[str]:
        """The header names the document declares for one response of the operation."""
        return list(self.responses(operation_id)[str(status)].get("headers", {}))

    def request_schema_pointer(self, path: str, method: str = "post") -> str:
        """JSON pointer of the ``application/json`` request body schema of an operation."""
        parts = ("paths", path, method, "requestBody", "content", JSON_MEDIA_TYPE, "schema")
        return json_pointer(*parts)

    def validator(self, pointer: str) -> SchemaValidator:
        """A validator for the schema at JSON ``pointer`` (cached per pointer)."""
        return _validator(self.path, pointer)


@functools.cache
def load(path: Path = SPEC_PATH) -> OpenAPI:
    """The document at ``path``, parsed once per process."""
    path = Path(path).resolve()
    with path.open(encoding="utf-8") as file:
        data: dict[str, Any] = yaml.safe_load(file)
    return OpenAPI(path, data)


@functools.cache
def _validator(path: Path, pointer: str) -> SchemaValidator:
    return validator_for(load(path).data, pointer)


# The checked-in document, for the common case.


def document() -> dict[str, Any]:
    """The checked-in document as plain data (shared: copy before changing it)."""
    return load().data


def resolve(node: Any) -> Any:
    return load().resolve(node)


def schema(name: str) -> dict[str, Any]:
    return load().schema(name)


def limit(schema: str, prop: str, keyword: str) -> int:
    return load().limit(schema, prop, keyword)


def properties(schema: str) -> list[str]:
    return load().properties(schema)


def required(schema: str) -> list[str]:
    return load().required(schema)


def statuses(operation_id: str) -> list[int]:
    return load().statuses(operation_id)


def success_statuses(operation_id: str) -> list[int]:
    return load().success_statuses(operation_id)


def validator(pointer: str) -> SchemaValidator:
    return load().validator(pointer)
