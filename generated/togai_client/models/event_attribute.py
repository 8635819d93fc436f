from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define

from ..types import UNSET, Unset

T = TypeVar("T", bound="EventAttribute")


@_attrs_define
class EventAttribute:
    """A metric to be recorded.

    Attributes:
        attribute_name (str): Name of the attribute. Example: distanceTravelled.
        attribute_value (str): Value of the attribute, as a string even when numeric. Example: 50.
        attribute_value_unit (str | Unset): Unit of the value. Natively supported: Meters, Miles, Kilometers, Grams,
            Kilograms, ounces, Pounds, Minutes, Hours, Seconds, Milliseconds, Microseconds, None. Custom units are allowed.
            Example: Miles.
    """

    attribute_name: str
    attribute_value: str
    attribute_value_unit: str | Unset = UNSET

    def to_dict(self) -> dict[str, Any]:
        attribute_name = self.attribute_name

        attribute_value = self.attribute_value

        attribute_value_unit = self.attribute_value_unit

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "attributeName": attribute_name,
                "attributeValue": attribute_value,
            }
        )
        if attribute_value_unit is not UNSET:
            field_dict["attributeValueUnit"] = attribute_value_unit

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        attribute_name = d.pop("attributeName")

        attribute_value = d.pop("attributeValue")

        attribute_value_unit = d.pop("attributeValueUnit", UNSET)

        event_attribute = cls(
            attribute_name=attribute_name,
            attribute_value=attribute_value,
            attribute_value_unit=attribute_value_unit,
        )

        return event_attribute
