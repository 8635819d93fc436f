"""Invariant 3, only documented success is success: the statuses come from the document
(``ingestBatch``: 202 and 207; ``ingest``: 202). Any other answer — a proxy's 200 page, a
201, a 204, a redirect — is never counted as accepted: it is retried (a re-send is safe) and
then failed."""

from __future__ import annotations

import pytest

from tests.hardening.conftest import FAST, client_for, event
from tests.hostile import Reply, batch_errors, replies, serving
from togai_ingest import APIError, UnexpectedStatusError
from togai_ingest.spec import spec

PROXY_PAGE = Reply(200, b"<html>Welcome to the hotel wifi</html>", (("Content-Type", "text/html"),))


@pytest.mark.parametrize(
    "reply",
    [
        PROXY_PAGE,
        Reply(200, b'{"errors": []}'),
        Reply(201, b'{"errors": []}'),
        Reply(204, b""),
        Reply(203, b'{"errors": []}'),
        Reply(301, b"", (("Location", "https://elsewhere.example/"),)),
        Reply(304, b""),
    ],
    ids=["proxy-200-html", "200-json", "201", "204", "203", "301", "304"],
)
def test_an_undocumented_answer_is_never_accepted(reply: Reply) -> None:
    assert reply.status not in spec().success_statuses("ingestBatch")
    with serving(replies([], then=reply)) as server, client_for(server.url) as client:
        result = client.send([event(i) for i in range(3)])
        with pytest.raises(UnexpectedStatusError):
            client.ingest(event("single"))
    assert result.accepted == 0 and result.n_failed == 3
    assert all(isinstance(f.error, UnexpectedStatusError) for f in result.failed)
    batch_requests = [r for r in server.requests if r.path.endswith("/ingestBatch")]
    assert len(batch_requests) == 1 + FAST.max_retries  # retried: nothing was refused


def test_an_undocumented_answer_then_a_real_one_is_accepted_once() -> None:
    with serving(replies([PROXY_PAGE, Reply(204)])) as server, client_for(server.url) as client:
        result = client.send([event(i) for i in range(3)])
    assert (result.accepted, result.total) == (3, 3)
    assert len(server.requests) == 3


@pytest.mark.parametrize("status", sorted(spec().success_statuses("ingestBatch")))
def test_documented_success_statuses_count(status: int) -> None:
    body = batch_errors(["evt-0"]) if status == 207 else b'{"errors": []}'
    with serving(replies([Reply(status, body)])) as server, client_for(server.url) as client:
        result = client.send([event(i) for i in range(2)])
    assert result.accepted + result.n_rejected == 2 and result.n_failed == 0


def test_a_207_whose_body_is_not_the_documented_shape_is_not_accepted() -> None:
    for body in (b"", b"garbage", b'{"errors": "none"}', b'{"errors": [1, 2]}', b"[]"):
        with serving(replies([], then=Reply(207, body))) as server:
            with client_for(server.url) as client:
                result = client.send([event(1)])
        assert result.accepted == 0 and result.n_failed == 1, body
        assert isinstance(result.failed[0].error, APIError)


def test_ingest_has_its_own_success_statuses_from_the_document() -> None:
    assert spec().success_statuses("ingest") <= spec().success_statuses("ingestBatch")
    with serving(replies([Reply(207, batch_errors([]))], then=Reply(202))) as server:
        with client_for(server.url, retry=FAST) as client:
            client.ingest(event("single"))  # 207 is not a success of /ingest: retried
    assert len(server.requests) == 2
