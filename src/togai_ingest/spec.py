"""The OpenAPI document, read once, as the one source of names, limits and statuses.

The package ships the document itself (``togai_ingest/openapi.yaml`` is the checked-in
``openapi/togai-ingestion.yaml``); nothing here repeats a number from it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

__all__ = ["Spec", "spec"]


@dataclass(frozen=True)
class Spec:
    document: dict[str, Any]

    @property
    def schemas(self) -> dict[str, Any]:
        schemas: dict[str, Any] = self.document["components"]["schemas"]
        return schemas

    def schema_property(self, schema: str, prop: str) -> dict[str, Any]:
        found: dict[str, Any] = self.schemas[schema]["properties"][prop]
        return found

    @property
    def max_batch_size(self) -> int:
        """``maxItems`` of ``IngestBatchEventRequest.events``."""
        return int(self.schema_property("IngestBatchEventRequest", "events")["maxItems"])

    @property
    def min_batch_size(self) -> int:
        """``minItems`` of ``IngestBatchEventRequest.events``."""
        return int(self.schema_property("IngestBatchEventRequest", "events")["minItems"])

    @property
    def default_server(self) -> str:
        """The first server of the document: the sandbox."""
        return str(self.document["servers"][0]["url"])

    @property
    def requests_per_second(self) -> float:
        """Togai's request quota per operation (``info.x-togai-rate-limit``)."""
        return float(self.document["info"]["x-togai-rate-limit"]["requestsPerSecond"])

    def path_of(self, operation_id: str) -> str:
        for path, item in self.document["paths"].items():
            for operation in item.values():
                if isinstance(operation, dict) and operation.get("operationId") == operation_id:
                    return str(path)
        raise KeyError(operation_id)

    def responses(self, operation_id: str) -> dict[str, Any]:
        """The ``responses`` of an operation, by status (``"202"``, ..., ``"default"``)."""
        path = self.path_of(operation_id)
        for operation in self.document["paths"][path].values():
            if isinstance(operation, dict) and operation.get("operationId") == operation_id:
                responses: dict[str, Any] = operation["responses"]
                return responses
        raise KeyError(operation_id)  # pragma: no cover - path_of found it

    def success_statuses(self, operation_id: str) -> frozenset[int]:
        """The 2xx statuses the document gives an operation: the only answers that count as
        success (``ingestBatch``: 202 and 207)."""
        return frozenset(
            int(status)
            for status in self.responses(operation_id)
            if status.isdigit() and 200 <= int(status) < 300
        )

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            target: Any = self.document
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    def statuses_with_header(self, header: str) -> frozenset[int]:
        """Statuses that the document says carry ``header`` (e.g. ``Retry-After``)."""
        found: set[int] = set()
        for item in self.document["paths"].values():
            for operation in item.values():
                if not isinstance(operation, dict):
                    continue
                for status, response in operation.get("responses", {}).items():
                    if status.isdigit() and header in self._resolve(response).get("headers", {}):
                        found.add(int(status))
        return frozenset(found)


@functools.cache
def spec() -> Spec:
    """The packaged OpenAPI document (parsed once per process)."""
    text = resources.files("togai_ingest").joinpath("openapi.yaml").read_text(encoding="utf-8")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return Spec(yaml.load(text, Loader=loader))
