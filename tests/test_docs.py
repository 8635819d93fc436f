"""What is retried is decided in one place (``RetryPolicy``) and said in one sentence that the
policy itself writes (``RetryPolicy.describe``): the README and the command line's help must
say exactly that, so the three cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from togai_ingest.cli import main
from togai_ingest.retry import RetryPolicy

README = Path(__file__).resolve().parent.parent / "README.md"


def _words(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_the_readme_says_what_the_policy_retries() -> None:
    assert RetryPolicy().describe() in _words(README.read_text(encoding="utf-8"))


def test_the_help_of_every_command_with_retries_says_what_the_policy_retries() -> None:
    runner = CliRunner()
    commands = [
        name
        for name, command in main.commands.items()
        if any(p.name == "retries" for p in command.params)
    ]
    assert commands, "no command has --retries"
    for name in commands:
        result = runner.invoke(main, [name, "--help"], terminal_width=1000)
        assert result.exit_code == 0, result.output
        assert RetryPolicy().describe() in _words(result.output), name


def test_the_readme_table_names_every_retried_status() -> None:
    text = README.read_text(encoding="utf-8")
    table = text[text.index("| exception | when | retried |") :]
    for status in RetryPolicy().retry_statuses:
        assert str(status) in table, status
