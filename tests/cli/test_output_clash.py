"""An output (``--rejected``, ``--checkpoint``) that is an input, however named, is refused.

The check compares files (device and inode), not names: standard input redirected from the
file, a symlink, a hard link, a relative path, ``/dev/stdin``. It happens before anything
is opened for writing, so the input is left as it was, and nothing is sent.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli import CLI, environment, event, invoke, write_jsonl
from tests.faultserver import FaultServer

FAST = ("--rate-limit", "0")


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv


@pytest.fixture
def dead(tmp_path: Path) -> Path:
    """A rejected file from an earlier run: what a user sends again once fixed."""
    return write_jsonl(
        tmp_path / "dead.jsonl",
        [{"kind": "invalid", "source": "x:1", "reason": "r", "event": event(n)} for n in range(3)],
    )


def _send(
    *args: str | Path, stdin: Path | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    with open(stdin if stdin is not None else os.devnull, "rb") as source:
        return subprocess.run(
            [str(CLI), "send", *map(str, args)],
            env=environment(),
            stdin=source,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=cwd,
        )


def _assert_refused(
    run: subprocess.CompletedProcess[str], kept: Path, before: bytes, server: FaultServer
) -> None:
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "is the same file as" in run.stderr and "choose another path" in run.stderr
    assert "Traceback" not in run.stderr
    assert kept.read_bytes() == before, "the input was changed"
    assert server.requests == []


def test_stdin_redirected_from_the_rejected_file(
    tmp_path: Path, dead: Path, server: FaultServer
) -> None:
    before = dead.read_bytes()
    run = _send("-", "--rejected", dead, "--base-url", server.url, *FAST, stdin=dead)
    _assert_refused(run, dead, before, server)
    assert "standard input" in run.stderr


def test_stdin_from_the_file_through_another_name(
    tmp_path: Path, dead: Path, server: FaultServer
) -> None:
    link = tmp_path / "link.jsonl"
    link.symlink_to(dead)
    before = dead.read_bytes()
    for output in (link, Path("dead.jsonl")):
        run = _send(
            "-", "--rejected", output, "--base-url", server.url, *FAST, stdin=dead, cwd=tmp_path
        )
        _assert_refused(run, dead, before, server)


@pytest.mark.parametrize("option", ["--rejected", "--checkpoint"])
def test_an_output_naming_an_input_file_differently(
    tmp_path: Path, dead: Path, server: FaultServer, option: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    symlink = tmp_path / "symlink.jsonl"
    symlink.symlink_to(dead)
    hardlink = tmp_path / "hard.jsonl"
    os.link(dead, hardlink)
    before = dead.read_bytes()
    for given, output in [
        (dead, symlink),
        (dead, hardlink),
        (dead, Path("sub/../dead.jsonl")),
        (Path("dead.jsonl"), dead),
        (symlink, dead),
        (hardlink, symlink),
    ]:
        result = invoke("send", given, option, output, "--base-url", server.url, *FAST)
        assert result.exit_code == 2, result.output
        assert "is the same file as input" in result.stderr, result.stderr
        assert dead.read_bytes() == before
    assert server.requests == []


def test_dev_stdin_as_output(tmp_path: Path, dead: Path, server: FaultServer) -> None:
    before = dead.read_bytes()
    run = _send(dead, "--rejected", "/dev/stdin", "--base-url", server.url, *FAST, stdin=dead)
    _assert_refused(run, dead, before, server)


def test_the_second_input_and_rejected_equal_to_checkpoint(
    tmp_path: Path, dead: Path, server: FaultServer
) -> None:
    first = write_jsonl(tmp_path / "first.jsonl", [event(10)])
    before = dead.read_bytes()
    result = invoke("send", first, dead, "--rejected", dead, "--base-url", server.url, *FAST)
    assert result.exit_code == 2 and f"is the same file as input {dead}" in result.stderr
    assert dead.read_bytes() == before
    outputs = tmp_path / "outputs.jsonl"
    outputs.write_text("keep\n", encoding="utf-8")
    link = tmp_path / "outputs-link"
    link.symlink_to(outputs)
    args = ("--rejected", outputs, "--checkpoint", link, "--base-url", server.url)
    result = invoke("send", first, *args)
    assert result.exit_code == 2 and "is the same file as --rejected" in result.stderr
    assert outputs.read_text(encoding="utf-8") == "keep\n"
    assert server.requests == []


def test_in_process_runs_refuse_too(tmp_path: Path, dead: Path) -> None:
    before = dead.read_bytes()
    result = invoke("send", dead, "--rejected", tmp_path / ".." / tmp_path.name / "dead.jsonl")
    assert result.exit_code == 2 and "is the same file as input" in result.stderr
    assert dead.read_bytes() == before


def test_distinct_files_are_not_a_clash(tmp_path: Path, dead: Path, server: FaultServer) -> None:
    """Stdin from one file, the rejected file another one of the same content: no clash."""
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(dead.read_bytes())
    run = _send("-", "--rejected", copy, "--base-url", server.url, *FAST, stdin=dead)
    assert run.returncode == 0, run.stderr
    assert len(server.ledger) == 3
    assert copy.read_bytes() == b""  # written afresh: nothing was rejected
