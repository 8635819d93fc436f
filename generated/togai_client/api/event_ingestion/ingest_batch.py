from http import HTTPStatus
from typing import Any

import httpx

from ...client import AuthenticatedClient, Client
from ...models.error_response import ErrorResponse
from ...models.ingest_batch_event_request import IngestBatchEventRequest
from ...models.ingest_batch_event_response import IngestBatchEventResponse
from ...types import Response


def _get_kwargs(
    *,
    body: IngestBatchEventRequest,
) -> dict[str, Any]:
    headers: dict[str, Any] = {}

    _kwargs: dict[str, Any] = {
        "method": "post",
        "url": "/ingestBatch",
    }

    _kwargs["json"] = body.to_dict()

    headers["Content-Type"] = "application/json"

    _kwargs["headers"] = headers
    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> ErrorResponse | IngestBatchEventResponse:
    if response.status_code == 202:
        response_202 = IngestBatchEventResponse.from_dict(response.json())

        return response_202

    if response.status_code == 207:
        response_207 = IngestBatchEventResponse.from_dict(response.json())

        return response_207

    if response.status_code == 400:
        response_400 = ErrorResponse.from_dict(response.json())

        return response_400

    if response.status_code == 401:
        response_401 = ErrorResponse.from_dict(response.json())

        return response_401

    if response.status_code == 422:
        response_422 = ErrorResponse.from_dict(response.json())

        return response_422

    if response.status_code == 429:
        response_429 = ErrorResponse.from_dict(response.json())

        return response_429

    if response.status_code == 503:
        response_503 = ErrorResponse.from_dict(response.json())

        return response_503

    response_default = ErrorResponse.from_dict(response.json())

    return response_default


def _build_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Response[ErrorResponse | IngestBatchEventResponse]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    *,
    client: AuthenticatedClient,
    body: IngestBatchEventRequest,
) -> Response[ErrorResponse | IngestBatchEventResponse]:
    """Ingest events to Togai in batch

     API to ingest your application event in batch to Togai for billing and usage analytics. To know the
    limits on the ingestion api, check our docs - https://togai.com/docs/limits.

    Args:
        body (IngestBatchEventRequest): Request body to ingest events in batch.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[ErrorResponse | IngestBatchEventResponse]
    """

    kwargs = _get_kwargs(
        body=body,
    )

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    *,
    client: AuthenticatedClient,
    body: IngestBatchEventRequest,
) -> ErrorResponse | IngestBatchEventResponse | None:
    """Ingest events to Togai in batch

     API to ingest your application event in batch to Togai for billing and usage analytics. To know the
    limits on the ingestion api, check our docs - https://togai.com/docs/limits.

    Args:
        body (IngestBatchEventRequest): Request body to ingest events in batch.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        ErrorResponse | IngestBatchEventResponse
    """

    return sync_detailed(
        client=client,
        body=body,
    ).parsed


async def asyncio_detailed(
    *,
    client: AuthenticatedClient,
    body: IngestBatchEventRequest,
) -> Response[ErrorResponse | IngestBatchEventResponse]:
    """Ingest events to Togai in batch

     API to ingest your application event in batch to Togai for billing and usage analytics. To know the
    limits on the ingestion api, check our docs - https://togai.com/docs/limits.

    Args:
        body (IngestBatchEventRequest): Request body to ingest events in batch.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[ErrorResponse | IngestBatchEventResponse]
    """

    kwargs = _get_kwargs(
        body=body,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    *,
    client: AuthenticatedClient,
    body: IngestBatchEventRequest,
) -> ErrorResponse | IngestBatchEventResponse | None:
    """Ingest events to Togai in batch

     API to ingest your application event in batch to Togai for billing and usage analytics. To know the
    limits on the ingestion api, check our docs - https://togai.com/docs/limits.

    Args:
        body (IngestBatchEventRequest): Request body to ingest events in batch.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        ErrorResponse | IngestBatchEventResponse
    """

    return (
        await asyncio_detailed(
            client=client,
            body=body,
        )
    ).parsed
