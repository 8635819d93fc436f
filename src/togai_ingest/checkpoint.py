"""Where a resumed ``togai-ingest send`` starts: the watermark and its checkpoint file.

The watermark is the longest prefix of the input whose records are all done (accepted,
rejected, failed or invalid, and written to the rejected file). Batches complete out of
order, so it only moves when the oldest outstanding batch completes.

The checkpoint file is JSON, replaced atomically (temporary file + ``os.replace``) after
every move, and keyed by the inputs (absolute path, size, modification time, format): it
never resumes a different or changed file. It survives a killed process; after a power
loss the last moves may be lost, which only means that a few events are sent again (their
ids make that safe).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .readers import STDIN, Input, Position

__all__ = ["Checkpoint", "CheckpointError", "Resume", "Watermark"]

_VERSION = 1


class CheckpointError(Exception):
    """The checkpoint cannot be used (other inputs, unreadable, stdin)."""


class Watermark:
    """The input position up to which everything is done, from the records read in order.

    Records are numbered as they are handed to ``send`` (``sent``) or handled on the spot
    (``local``, e.g. invalid ones). ``settle`` marks a slice of the sent ones as reported
    (its outcome is known); ``done`` lets the watermark pass it. Memory is bounded by the
    number of outstanding records.
    """

    def __init__(self, start: Position) -> None:
        self.position = start
        self._next = 0
        self._acked = 0
        self._ends: dict[int, Position] = {}
        self._sources: dict[int, str] = {}
        self._unsettled: dict[int, Any] = {}
        self._completed: dict[int, int] = {}

    @property
    def outstanding(self) -> int:
        """Records handed to ``send`` and not yet below the watermark."""
        return self._next - self._acked

    def sent(self, source: str, end: Position, event: Any) -> int:
        """Record handed to ``send``; returns its index there."""
        index = self._next
        self._next += 1
        self._ends[index] = end
        self._sources[index] = source
        self._unsettled[index] = event
        return index

    def local(self, end: Position) -> bool:
        """A record done without sending; True if the watermark moved."""
        if self._next == self._acked:
            self.position = end
            return True
        self._ends[self._next - 1] = end
        return False

    def source(self, index: int) -> str:
        """``file:line`` of an outstanding record."""
        return self._sources.get(index, f"input record {index}")

    def settle(self, start: int, count: int) -> None:
        """The outcome of records ``start`` to ``start + count - 1`` is known and reported."""
        for index in range(start, start + count):
            self._unsettled.pop(index, None)

    def unsettled(self) -> list[tuple[str, Any]]:
        """Source and event of every record handed to ``send`` whose outcome is unknown."""
        return [(self.source(index), event) for index, event in self._unsettled.items()]

    def done(self, start: int, count: int) -> bool:
        """Records ``start`` to ``start + count - 1`` are done; True if the watermark moved."""
        self.settle(start, count)
        self._completed[start] = count
        moved = False
        while self._acked in self._completed:
            end = self._acked + self._completed.pop(self._acked)
            self.position = self._ends[end - 1]
            for index in range(self._acked, end):
                del self._ends[index], self._sources[index]
            self._acked = end
            moved = True
        return moved


@dataclass(frozen=True)
class Resume:
    """What a checkpoint says: where to start, and the rejected file's size at that point."""

    position: Position
    rejected: str | None
    rejected_size: int | None


def _key(inputs: Sequence[Input]) -> list[dict[str, Any]]:
    key = []
    for item in inputs:
        if item.path == STDIN:
            raise CheckpointError("--checkpoint needs files: standard input cannot be resumed")
        try:
            stat = os.stat(item.path)
        except OSError as error:
            raise CheckpointError(f"{item.name}: {error.strerror or error}") from None
        key.append(
            {
                "path": os.path.abspath(item.path),
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "format": item.format,
            }
        )
    return key


class Checkpoint:
    """The checkpoint file of one set of inputs."""

    def __init__(self, path: Path, inputs: Sequence[Input]) -> None:
        self.path = path
        self._key = _key(inputs)
        self._temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")

    def load(self) -> Resume | None:
        """The saved state, None if there is no file; raises ``CheckpointError`` if the file
        belongs to other inputs or cannot be read."""
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise CheckpointError(f"cannot read checkpoint {self.path}: {error}") from None
        if not isinstance(document, dict) or document.get("version") != _VERSION:
            raise CheckpointError(f"{self.path} is not a togai-ingest checkpoint")
        if document.get("inputs") != self._key:
            raise CheckpointError(
                f"checkpoint {self.path} was written for other or changed input files "
                f"({', '.join(i['path'] for i in document.get('inputs', []))}); "
                "delete it to start over, or pass another --checkpoint path"
            )
        try:
            position = Position(*(int(document["position"][k]) for k in Position._fields))
            rejected = document.get("rejected") or {}
            path, size = rejected.get("path"), rejected.get("size")
            return Resume(position, path, int(size) if size is not None else None)
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"checkpoint {self.path} is damaged") from None

    def save(self, position: Position, rejected: str | None, rejected_size: int | None) -> None:
        """Replace the file atomically with ``position`` (raises ``OSError``)."""
        document = {
            "version": _VERSION,
            "inputs": self._key,
            "position": position._asdict(),
            "rejected": None if rejected is None else {"path": rejected, "size": rejected_size},
        }
        self._temporary.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        os.replace(self._temporary, self.path)
