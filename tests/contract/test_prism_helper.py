"""tests/prism.py outside the happy path: clear errors, usable without pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.prism import PrismNotInstalledError, PrismServer, ViolationRecorder


def test_missing_node_modules_says_to_run_make_node(tmp_path: Path) -> None:
    server = PrismServer(prism_bin=tmp_path / "node_modules" / ".bin" / "prism")
    with pytest.raises(PrismNotInstalledError, match="make node"), server:
        pass
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.url
    server.stop()  # idempotent


def test_session_server_serves_the_document(prism: PrismServer) -> None:
    assert prism.url.startswith("http://127.0.0.1:")
    assert "Prism is listening on" in prism.log()
    recorder = ViolationRecorder()
    with httpx.Client(base_url=prism.url, event_hooks=recorder.sync_hooks()) as client:
        assert client.get("/ingest").status_code == 405  # routes come from the document
    assert [v.code for v in recorder.take_violations()] == [
        "https://stoplight.io/prism/errors#NO_METHOD_MATCHED_ERROR"
    ]
