from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from attrs import define as _attrs_define

if TYPE_CHECKING:
    from ..models.ingest_error import IngestError


T = TypeVar("T", bound="IngestBatchEventResponse")


@_attrs_define
class IngestBatchEventResponse:
    """Result of a batch ingestion; `errors` lists the events that were not accepted.

    Attributes:
        errors (list[IngestError]):
    """

    errors: list[IngestError]

    def to_dict(self) -> dict[str, Any]:
        errors = []
        for errors_item_data in self.errors:
            errors_item = errors_item_data.to_dict()
            errors.append(errors_item)

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "errors": errors,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.ingest_error import IngestError  # noqa: PLC0415

        d = dict(src_dict)
        errors = []
        _errors = d.pop("errors")
        for errors_item_data in _errors:
            errors_item = IngestError.from_dict(errors_item_data)

            errors.append(errors_item)

        ingest_batch_event_response = cls(
            errors=errors,
        )

        return ingest_batch_event_response
