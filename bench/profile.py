"""Where a contender spends its time: pyinstrument, summed per function.

``profiles`` runs each contender named once under pyinstrument (``ProfilingTimer``, over its
measured section) and gives, for each function, its share of that section's wall time,
inclusive (the function and what it calls) and self (its own code).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Self

from pyinstrument import Profiler
from pyinstrument.frame import Frame

from .contenders import CONTENDERS, Timer, Workload
from .sink import SinkProcess

__all__ = ["Hotspot", "Profile", "ProfilingTimer", "profiles"]


@dataclass(frozen=True)
class Hotspot:
    where: str
    """``file:function``, e.g. ``togai_ingest/validation.py:to_wire``."""
    inclusive: float
    """Share of the wall time spent in the function and its callees (0 to 1)."""
    self: float
    """Share of the wall time spent in the function's own code."""


@dataclass(frozen=True)
class Profile:
    name: str
    seconds: float
    spots: list[Hotspot]
    """Every function, largest inclusive share first."""
    html: Path
    """pyinstrument's HTML page: the full tree."""


def _where(frame: Frame) -> str:
    path = frame.file_path_short or frame.file_path or "?"
    if path == "<string>":
        path = "<generated>"  # code compiled from a string at run time
    return f"{path}:{frame.function}"


class ProfilingTimer(Timer):
    """A ``Timer`` that also runs pyinstrument over the measured section."""

    def __init__(self) -> None:
        self._profiler = Profiler(interval=0.0005, async_mode="disabled")

    def __enter__(self) -> Self:
        super().__enter__()
        self._profiler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._profiler.stop()
        super().__exit__(*exc)

    def html(self) -> str:
        return self._profiler.output_html()

    def hotspots(self) -> list[Hotspot]:
        """Every function, largest inclusive share first."""
        session = self._profiler.last_session
        root = session.root_frame() if session is not None else None
        if root is None or root.time <= 0:
            return []
        inclusive: dict[str, float] = {}
        own: dict[str, float] = {}

        def walk(frame: Frame, above: frozenset[str]) -> None:
            if frame.is_synthetic:
                return
            key = _where(frame)
            if key not in above:  # a recursive call is counted once
                inclusive[key] = inclusive.get(key, 0.0) + frame.time
            own[key] = own.get(key, 0.0) + frame.total_self_time
            for child in frame.children:
                walk(child, above | {key})

        walk(root, frozenset())
        total = root.time
        spots = [Hotspot(k, t / total, own.get(k, 0.0) / total) for k, t in inclusive.items()]
        return sorted(spots, key=lambda s: s.inclusive, reverse=True)


def profiles(work: Workload, names: list[str], folder: Path) -> list[Profile]:
    """One send of ``work`` under pyinstrument per contender named; HTML pages in ``folder``."""
    found: list[Profile] = []
    with SinkProcess(parse="count") as sink:
        for name in names:
            timer = ProfilingTimer()
            seconds = CONTENDERS[name](sink.url, work, timer)
            html = folder / f"profile-{name}.html"
            html.write_text(timer.html(), encoding="utf-8")
            found.append(Profile(name, seconds, timer.hotspots(), html))
    return found
