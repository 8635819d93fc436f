"""Contains all the data models used in inputs/outputs"""

from .error_response import ErrorResponse
from .event import Event
from .event_attribute import EventAttribute
from .event_dimensions import EventDimensions
from .ingest_batch_event_request import IngestBatchEventRequest
from .ingest_batch_event_response import IngestBatchEventResponse
from .ingest_error import IngestError
from .ingest_event_request import IngestEventRequest

__all__ = (
    "ErrorResponse",
    "Event",
    "EventAttribute",
    "EventDimensions",
    "IngestBatchEventRequest",
    "IngestBatchEventResponse",
    "IngestError",
    "IngestEventRequest",
)
