"""Where a resumed ``togai-ingest send`` starts: the watermark and its checkpoint file.

The watermark is the longest prefix of the input whose records are all done (accepted,
rejected, failed or invalid, and written to the rejected file). Batches complete out of
order, so it only moves when the oldest outstanding batch completes.

The rejected file is written in watermark order: the entries of records past the watermark
wait in the watermark (``note``, ``local``) until it passes them. So the rejected file's size
saved with the watermark covers exactly the records before it, and a resumed run, which
truncates the file to that size, writes no entry twice.

The checkpoint file is JSON, replaced atomically after every move: written to an exclusive
temporary file with an unpredictable name in the same directory (``mkstemp``: it never
follows a planted symlink), fsynced, then ``os.replace``d over the checkpoint (which
replaces a symlink, never its target). It is keyed by the inputs (absolute path, size,
modification time, format): it never resumes a different or changed file. Whatever a
checkpoint holds, loading it returns a valid ``Resume`` or raises ``CheckpointError``.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .readers import STDIN, Input, Position

__all__ = ["MAX_CHECKPOINT_BYTES", "Checkpoint", "CheckpointError", "Resume", "Watermark"]

_VERSION = 1
MAX_CHECKPOINT_BYTES = 1024 * 1024
"""A checkpoint is a few hundred bytes per input; a larger file is not one."""


class CheckpointError(Exception):
    """The checkpoint cannot be used (other inputs, unreadable, damaged, stdin)."""


Sink = Callable[[bytes], None]
"""Where the watermark hands the entries it passes (the rejected file)."""

_IN_MEMORY = 8 * 1024 * 1024
"""Bytes of waiting entries of invalid records kept in memory; more go to a temporary file."""
_HEAD = struct.Struct("<QI")


class _Queue:
    """The waiting entries of invalid records, first in first out, each with the index of
    the sent record it follows: in memory up to ``_IN_MEMORY`` bytes, then in an anonymous
    temporary file. (A valid record in a batch that is not full yet, followed by a million
    invalid lines, holds a million entries until its batch is sent.)"""

    def __init__(self) -> None:
        self._memory: deque[tuple[int, bytes]] = deque()
        self._bytes = 0
        self._file: IO[bytes] | None = None
        self._read = self._write = 0

    def append(self, index: int, entry: bytes) -> None:
        if self._file is None and self._bytes + len(entry) <= _IN_MEMORY:
            self._memory.append((index, entry))
            self._bytes += len(entry)
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed once drained
        self._file.seek(self._write)
        self._file.write(_HEAD.pack(index, len(entry)) + entry)
        self._write = self._file.tell()

    @property
    def empty(self) -> bool:
        return not self._memory and self._file is None

    def pop_through(self, index: int, sink: Sink) -> None:
        """Hand every entry up to ``index`` (inclusive) to ``sink``, in order."""
        while self._memory and self._memory[0][0] <= index:
            entry = self._memory.popleft()[1]
            self._bytes -= len(entry)
            sink(entry)
        if self._memory or self._file is None:
            return
        while self._read < self._write:
            self._file.seek(self._read)
            at, size = _HEAD.unpack(self._file.read(_HEAD.size))
            if at > index:
                return
            sink(self._file.read(size))
            self._read += _HEAD.size + size
        self._file.close()
        self._file = None
        self._read = self._write = 0


class Watermark:
    """The input position up to which everything is done, from the records read in order.

    Records are numbered as they are handed to ``send`` (``sent``) or handled on the spot
    (``local``, e.g. invalid ones). ``settle`` marks a slice of the sent ones as reported
    (its outcome is known); ``done`` lets the watermark pass it. Entries for the rejected
    file (``note`` for sent records, ``local`` for the others) are held until the watermark
    passes their record, then handed to the ``sink`` in input order. Memory is bounded by
    the number of outstanding records (the entries of invalid records beyond
    ``_IN_MEMORY`` bytes wait in a temporary file).
    """

    def __init__(self, start: Position) -> None:
        self.position = start
        self._next = 0
        self._acked = 0
        self._ends: dict[int, Position] = {}
        self._sources: dict[int, str] = {}
        self._unsettled: dict[int, Any] = {}
        self._completed: dict[int, int] = {}
        self._notes: dict[int, list[bytes]] = {}
        self._locals = _Queue()

    @property
    def outstanding(self) -> int:
        """Records handed to ``send`` and not yet below the watermark."""
        return self._next - self._acked

    @property
    def handed(self) -> int:
        """Records handed to ``send`` so far."""
        return self._next

    def sent(self, source: str, end: Position, event: Any) -> int:
        """Record handed to ``send``; returns its index there."""
        index = self._next
        self._next += 1
        self._ends[index] = end
        self._sources[index] = source
        self._unsettled[index] = event
        return index

    def local(self, end: Position, entry: bytes | None, sink: Sink) -> bool:
        """A record done without sending, with its rejected-file entry (if any): True if the
        watermark moved (the entry went to ``sink``); else it waits for the records before
        it."""
        if self._next == self._acked:
            self.position = end
            if entry is not None:
                sink(entry)
            return True
        self._ends[self._next - 1] = end
        if entry is not None:
            self._locals.append(self._next - 1, entry)
        return False

    def note(self, index: int, entry: bytes) -> None:
        """A rejected-file entry of sent record ``index``, handed out when the watermark
        passes it."""
        self._notes.setdefault(max(index, self._acked), []).append(entry)

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

    def done(self, start: int, count: int, sink: Sink) -> bool:
        """Records ``start`` to ``start + count - 1`` are done; True if the watermark moved
        (the entries it passed went to ``sink``, in input order)."""
        self.settle(start, count)
        self._completed[start] = count
        moved = False
        while self._acked in self._completed:
            end = self._acked + self._completed.pop(self._acked)
            self.position = self._ends[end - 1]
            waiting = bool(self._notes) or not self._locals.empty
            for index in range(self._acked, end):
                del self._ends[index], self._sources[index]
                if waiting:  # entries to hand out (none in a run where all is accepted)
                    self._hand(index, sink)
            self._acked = end
            moved = True
        return moved

    def pending(self, sink: Sink) -> None:
        """Hand the entries still waiting (records past the watermark) to ``sink``, in input
        order, once. At the end of a run that stopped early: a resumed run reads those
        records again, and cuts the rejected file back to the watermark first."""
        for index in range(self._acked, self._next):
            self._hand(index, sink)

    def _hand(self, index: int, sink: Sink) -> None:
        for entry in self._notes.pop(index, ()):
            sink(entry)
        self._locals.pop_through(index, sink)


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


def _count(value: object) -> int | None:
    """``value`` if it is a non-negative int (not a bool), else None."""
    return value if type(value) is int and value >= 0 else None


def _paths(inputs: object) -> str:
    """The input paths a checkpoint names, for a message (whatever its shape)."""
    if not isinstance(inputs, list):
        return "?"
    paths = [i.get("path") for i in inputs if isinstance(i, dict)]
    return ", ".join(p for p in paths if isinstance(p, str)) or "?"


class Checkpoint:
    """The checkpoint file of one set of inputs."""

    def __init__(self, path: Path, inputs: Sequence[Input]) -> None:
        self.path = path
        self._key = _key(inputs)

    def load(self) -> Resume | None:
        """The saved state, None if there is no file; raises ``CheckpointError`` if the file
        belongs to other inputs, cannot be read or does not have the checkpoint's shape."""
        try:
            with self.path.open("rb") as stream:
                data = stream.read(MAX_CHECKPOINT_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise CheckpointError(f"cannot read checkpoint {self.path}: {error}") from None
        if len(data) > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"{self.path} is not a togai-ingest checkpoint (too large)")
        try:
            document = json.loads(data)
        except (ValueError, RecursionError) as error:
            raise CheckpointError(f"cannot read checkpoint {self.path}: {error}") from None
        if not isinstance(document, dict) or document.get("version") != _VERSION:
            raise CheckpointError(f"{self.path} is not a togai-ingest checkpoint")
        if document.get("inputs") != self._key:
            raise CheckpointError(
                f"checkpoint {self.path} was written for other or changed input files "
                f"({_paths(document.get('inputs'))}); "
                "delete it to start over, or pass another --checkpoint path"
            )
        resume = self._resume(document)
        if resume is None:
            raise CheckpointError(f"checkpoint {self.path} is damaged; delete it to start over")
        return resume

    def _resume(self, document: dict[str, Any]) -> Resume | None:
        """The checkpoint's state, None unless every part has the right type and range."""
        saved = document.get("position")
        if not isinstance(saved, dict) or set(saved) != set(Position._fields):
            return None
        numbers = [_count(saved[name]) for name in Position._fields]
        if None in numbers:
            return None
        position = Position(*(n for n in numbers if n is not None))
        if position.file >= len(self._key) or position.offset > self._key[position.file]["size"]:
            return None
        rejected = document.get("rejected")
        if rejected is None:
            return Resume(position, None, None)
        if not isinstance(rejected, dict) or not isinstance(rejected.get("path"), str):
            return None
        size = _count(rejected.get("size"))
        if size is None:
            return None
        return Resume(position, rejected["path"], size)

    def save(self, position: Position, rejected: str | None, rejected_size: int | None) -> None:
        """Replace the file atomically with ``position`` (raises ``OSError``): an exclusive
        temporary file in the same directory, fsynced, then renamed over the checkpoint."""
        document = {
            "version": _VERSION,
            "inputs": self._key,
            "position": position._asdict(),
            "rejected": None if rejected is None else {"path": rejected, "size": rejected_size},
        }
        data = (json.dumps(document, indent=1) + "\n").encode("utf-8")
        directory = self.path.parent
        descriptor, temporary = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=directory
        )
        try:
            with os.fdopen(descriptor, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
