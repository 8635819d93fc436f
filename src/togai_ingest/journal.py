"""The spool's journal: where a ``put`` of durability ``"process"`` writes its event before it
returns, and the SQLite spool imports it from.

A journal is one file beside the spool, ``PATH.journal-<owner>-<n>``, of a fixed size allocated
up front and mapped into memory (``MAP_SHARED``), locked (``flock``) by the one process that
writes it. A put copies one frame into the mapping under the spool's put lock: no system call,
and the GIL is held throughout (a ``write(2)`` releases it, and four threads taking turns at it
cost a p99 of 300-400 us). The mapped pages are the kernel's page cache: they outlive the
process (kill -9, the OOM killer) like a ``write(2)`` without fsync, and like SQLite's WAL with
``synchronous=NORMAL``; a power loss may lose them. The file is allocated with
``posix_fallocate`` when it is made, so a full disk is an error there (``SpoolFullError``), never
a SIGBUS at the first write to a page.

A frame is ``FRAME`` (magic, id length, body length, ``validation.checksum`` of id and body),
the id (UTF-8) and the body. Reading stops at the first frame that is not whole and intact: the
zeros after the last one, or a frame cut short because its process died while copying it (its
``put`` never returned).

Which journal may be imported is decided by its lock: a journal whose ``flock`` can be taken
belongs to a process that is gone (``open_orphan``). How far it was imported is kept in the
spool, in the same transaction as its rows (see ``SpoolQueue``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from .validation import checksum

__all__ = [
    "FRAME",
    "SIZE",
    "Journal",
    "frame",
    "journal_path",
    "journal_paths",
    "open_orphan",
    "pid_alive",
    "read_frames",
    "remove_unfinished",
]

log = logging.getLogger("togai_ingest")

FRAME = struct.Struct("<IIII")  # magic, id length, body length, checksum of id and body
_MAGIC = 0x4A474F54  # b"TOGJ"
SIZE = 4 << 20  # bytes of one journal: about 9,000 events of 450 bytes
_CHUNK = 1 << 20  # bytes read at once when a journal is imported
_Frame = tuple[int, str, bytes, int]  # where it ends in the file, id, body, checksum


def frame(event_id: str, body: bytes, crc: int) -> bytes:
    ident = event_id.encode("utf-8", "surrogatepass")
    return FRAME.pack(_MAGIC, len(ident), len(body), crc) + ident + body


def journal_path(spool: Path, token: str, number: int) -> Path:
    """The ``number``-th journal of this process (``token``: its own, random) for ``spool``.
    The process id in the name tells ``remove_unfinished`` whose it is."""
    return spool.with_name(f"{spool.name}.journal-{os.getpid()}-{token}-{number:06d}")


def journal_paths(spool: Path) -> list[Path]:
    """The journals of the spool ``spool`` there are, in name order."""
    prefix = f"{spool.name}.journal-"
    try:
        names = sorted(n for n in os.listdir(spool.parent) if n.startswith(prefix))
    except OSError:
        return []
    return [spool.parent / n for n in names]


def remove_unfinished(spool: Path) -> None:
    """Delete the journals of the spool ``spool`` that a process that is gone was making
    (they hold nothing yet). Told by the process id in the name, not by the lock: the maker
    opens the file before it locks it."""
    prefix = f".{spool.name}.journal-"
    with contextlib.suppress(OSError):
        for name in os.listdir(spool.parent):
            pid = name[len(prefix) :].partition("-")[0]
            unfinished = name.startswith(prefix) and name.endswith(".new") and pid.isdigit()
            if unfinished and not pid_alive(int(pid)):
                os.unlink(spool.parent / name)


def pid_alive(pid: int) -> bool:
    """Whether the process ``pid`` of this host exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's
    return True


class Journal:
    """A journal this process writes: made, allocated, locked and mapped here. Not
    thread-safe: its owner appends under its own lock."""

    def __init__(self, path: Path, size: int = SIZE) -> None:
        # Made under another name, and given its own once it is locked: no other process
        # (nor this one's import of journals left behind) ever finds it unlocked.
        making = path.with_name(f".{path.name}.new")
        fd = os.open(making, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.posix_fallocate(fd, 0, size)
            self.map = mmap.mmap(fd, size)
            os.rename(making, path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(making)
            raise
        self.path, self.size, self.end = path, size, 0  # ``end``: after the last frame
        self._fd: int | None = fd

    @property
    def name(self) -> str:
        return self.path.name

    def append(self, data: bytes) -> bool:
        """Copy ``data`` after the last frame; False (nothing written) if it does not fit."""
        end = self.end + len(data)
        if end > self.size:
            return False
        self.map[self.end : end] = data
        self.end = end
        return True

    def close(self) -> None:
        """Unmap and unlock; the file stays (what it holds is imported by the next process).
        Also in a forked child, for the parent's journals: the child's copy of the descriptor
        would hold the lock, and keep the journal from being imported once the parent is
        gone."""
        if self._fd is not None:
            self.map.close()
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        """Delete the file (everything in it is imported), then unlock. Deleted while it is
        locked: a process that opened it meanwhile finds it gone once it has the lock."""
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.close()

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r}, end={self.end})"


@contextlib.contextmanager
def open_orphan(path: Path) -> Iterator[int | None]:
    """The descriptor of the journal ``path``, locked, if its process is gone (else None: it is
    locked by its owner, or it was deleted meanwhile). Unlocked when the block ends."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except OSError:  # locked by its owner (BlockingIOError), or gone (FileNotFoundError)
            same = False
        yield fd if same else None
    finally:
        os.close(fd)


def read_frames(fd: int, start: int, path: Path) -> Iterator[list[_Frame]]:
    """The whole, intact frames of the journal ``fd`` (at ``path``) from offset ``start``, in
    lists read ``_CHUNK`` bytes at a time (every read is bounded). Bytes that are not a frame
    end it if no frame follows them (the zeros after the last frame, a frame cut short by its
    process's death); if one does, they are damage: logged (ERROR, with the offsets), skipped,
    and reading goes on at the next intact frame."""
    size = os.fstat(fd).st_size
    offset = start
    while offset < size:
        data = os.pread(fd, min(_CHUNK, size - offset), offset)
        frames, used = _parse(data, offset)
        if not frames and len(data) >= FRAME.size:  # a frame longer than a chunk?
            magic, id_len, body_len, _ = FRAME.unpack_from(data)
            length = FRAME.size + id_len + body_len
            if magic == _MAGIC and len(data) < length <= size - offset:
                frames, used = _parse(os.pread(fd, length, offset), offset)
        if frames:
            yield frames
            offset += used
            continue
        found = _next_frame(fd, offset + 1, size)
        if found is None:
            return
        log.error(
            "the journal %s is damaged: bytes %d to %d are no intact event (skipped; an event "
            "in them is lost); reading goes on after them",
            path,
            offset,
            found,
        )
        offset = found


def _next_frame(fd: int, offset: int, size: int) -> int | None:
    """Where the next intact frame after ``offset`` starts, or None."""
    magic = struct.pack("<I", _MAGIC)
    while offset < size:
        data = os.pread(fd, min(_CHUNK, size - offset), offset)
        at = data.find(magic)
        while at >= 0:
            head = os.pread(fd, FRAME.size, offset + at)
            if len(head) == FRAME.size:
                _, id_len, body_len, _ = FRAME.unpack(head)
                length = FRAME.size + id_len + body_len
                if length <= size - offset - at and _parse(os.pread(fd, length, offset + at), 0)[0]:
                    return offset + at
            at = data.find(magic, at + 1)
        if len(data) < FRAME.size:
            return None
        offset += len(data) - (len(magic) - 1)  # a magic across two chunks is found too
    return None


def _parse(data: bytes, base: int) -> tuple[list[_Frame], int]:
    """The whole, intact frames at the start of ``data`` (which is at offset ``base``), and how
    many bytes they take."""
    frames: list[_Frame] = []
    at, size = 0, len(data)
    while at + FRAME.size <= size:
        magic, id_len, body_len, crc = FRAME.unpack_from(data, at)
        end = at + FRAME.size + id_len + body_len
        if magic != _MAGIC or not id_len or not body_len or end > size:
            break
        ident = data[at + FRAME.size : at + FRAME.size + id_len]
        body = data[at + FRAME.size + id_len : end]
        try:
            event_id = ident.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            break
        if checksum(event_id, body) != crc:
            break
        frames.append((base + end, event_id, body, crc))
        at = end
    return frames, at
