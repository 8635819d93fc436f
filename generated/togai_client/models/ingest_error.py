from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from attrs import define as _attrs_define

from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.event import Event


T = TypeVar("T", bound="IngestError")


@_attrs_define
class IngestError:
    """One rejected event as the server received it, and why.

    Attributes:
        message (str | Unset): Why the event was rejected.
        event_payload (Event | Unset): Contents of one event.
    """

    message: str | Unset = UNSET
    event_payload: Event | Unset = UNSET

    def to_dict(self) -> dict[str, Any]:
        message = self.message

        event_payload: dict[str, Any] | Unset = UNSET
        if not isinstance(self.event_payload, Unset):
            event_payload = self.event_payload.to_dict()

        field_dict: dict[str, Any] = {}

        field_dict.update({})
        if message is not UNSET:
            field_dict["message"] = message
        if event_payload is not UNSET:
            field_dict["eventPayload"] = event_payload

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.event import Event  # noqa: PLC0415

        d = dict(src_dict)
        message = d.pop("message", UNSET)

        _event_payload = d.pop("eventPayload", UNSET)
        event_payload: Event | Unset
        if isinstance(_event_payload, Unset):
            event_payload = UNSET
        else:
            event_payload = Event.from_dict(_event_payload)

        ingest_error = cls(
            message=message,
            event_payload=event_payload,
        )

        return ingest_error
