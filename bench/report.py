"""The benchmark's measurements and their markdown: one table helper, a function per section."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .contenders import BATCH, STEPS
from .fleet import FleetReport
from .memory import MemoryResult, MiB
from .profile import Profile
from .quota import QuotaResult

__all__ = ["TARGETS", "Report", "Round", "SinkCheck", "median_ratio", "table"]

TARGETS = {"typed": 0.6, "wire": 0.8}
"""Minimum events/s as a share of the baseline's (issue 4)."""
QUOTA_SHARE, QUOTA_THROTTLED = 0.95, 0.01
MEMORY_LIMIT = 150 * MiB
LABELS = {
    "baseline": "baseline: raw httpx, `json=`",
    "typed": "typed: `new_event` → `Client.send`",
    "wire": "wire: dicts → `Client.send`",
    "async": "async: dicts → `AsyncClient.send`",
}
PROFILED = ("togai_ingest/", "togai_client/", "<generated>")
ROOT = Path(__file__).resolve().parent.parent


def table(head: str, rows: Iterable[Sequence[object]]) -> str:
    """A markdown table: ``head`` is its header row (``"a | b"``); the first column is
    left-aligned, the others right-aligned."""
    rule = "| --- |" + " ---: |" * head.count("|")
    return "\n".join([f"| {head} |", rule, *("| " + " | ".join(map(str, r)) + " |" for r in rows)])


def spread(values: Sequence[float], fmt: str) -> str:
    """The median, and min–max to show the noise."""
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def median_ratio(rounds: Sequence[Round], name: str) -> float:
    return statistics.median(r.ratio(name) for r in rounds)


@dataclass
class Round:
    events_per_second: dict[str, float] = field(default_factory=dict)
    sink_busy: dict[str, float] = field(default_factory=dict)
    """Share of the contender's wall time the sink spent on CPU."""
    client_cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds per event of the sending process."""

    def ratio(self, name: str) -> float:
        return self.events_per_second[name] / self.events_per_second["baseline"]

    def cpu_ratio(self, name: str) -> float:
        """The baseline's CPU per event over the contender's: the ratio without the noise of
        other processes taking the CPU (and without the time spent waiting for the sink)."""
        return self.client_cpu["baseline"] / self.client_cpu[name]

    def summary(self) -> str:
        return "  ".join(f"{n} {v:,.0f}/s" for n, v in self.events_per_second.items())


@dataclass(frozen=True)
class SinkCheck:
    parse: str
    events_per_second: float
    busy: float
    cpu_per_request: float


@dataclass
class Report:
    header: str
    rounds: list[Round]
    cpu: list[dict[str, dict[str, float]]]
    quota: QuotaResult
    sink_checks: list[SinkCheck]
    memory: MemoryResult | None
    """None: skipped (``--skip-memory``)."""
    profiles: list[Profile]
    fleet: FleetReport | None
    """None: skipped (``--skip-fleet``)."""
    sections: list[str]
    """Sections rendered by ``bench/enqueue.py`` and ``bench/fleet.py``."""

    def ratio(self, name: str) -> float:
        return median_ratio(self.rounds, name)

    def verdicts(self) -> list[str]:
        lines = [
            f"- {verdict(self.ratio(name) >= target)} {name} path ≥ {target} × baseline: "
            f"{self.ratio(name):.2f} × (median of {len(self.rounds)} rounds)"
            for name, target in TARGETS.items()
        ]
        q = self.quota
        ok = q.share_of_quota >= QUOTA_SHARE and q.share_throttled < QUOTA_THROTTLED and not q.lost
        lines.append(
            f"- {verdict(ok)} quota run ≥ {QUOTA_SHARE:.0%} of the quota "
            f"({QUOTA_SHARE * q.quota * q.batch:,.0f} events/s), < {QUOTA_THROTTLED:.0%} 429s, "
            f"none lost: {q.events_per_second:,.0f} events/s ({q.share_of_quota:.1%}), "
            f"{q.share_throttled:.1%} 429s, {q.lost} lost"
        )
        if (m := self.memory) is not None:
            ok = m.peak_rss < MEMORY_LIMIT and m.exit_code == 0 and m.distinct == m.events
            lines.append(
                f"- {verdict(ok)} {m.events:,} events streamed with peak RSS < "
                f"{MEMORY_LIMIT // MiB} MiB, all accepted: {m.peak_rss / MiB:.0f} MiB, "
                f"exit {m.exit_code}, {m.distinct:,} accepted"
            )
        else:
            lines.append("- NOT RUN memory run (--skip-memory)")
        if self.fleet is None:
            lines.append("- NOT RUN fleet run (--skip-fleet)")
        else:
            lines += [
                f"- {verdict(r.passed())} fleet run, {r.mode} limit, {r.processes} × "
                f"{r.events:,} events: {r.share_of_quota:.1%} of the quota, "
                f"{r.share_throttled:.1%} 429s, {r.lost} lost"
                for r in self.fleet.runs
                if r.mode != "fixed"  # the client before issue 9: a reference, no target
            ]
            lines += [f"- NOT RUN {self.fleet.note}"] if self.fleet.note else []
        return lines

    def _throughput(self) -> str:
        rounds, rows = self.rounds, []
        for name, label in LABELS.items():
            target = TARGETS.get(name)
            ratio = spread([r.ratio(name) for r in rounds], ".2f") if name != "baseline" else "1"
            rows.append(
                (
                    label,
                    f"{statistics.median(r.events_per_second[name] for r in rounds):,.0f}",
                    ratio,
                    f"≥ {target} × {verdict(self.ratio(name) >= target)}" if target else "",
                    spread([r.client_cpu[name] * 1e6 for r in rounds], ".1f"),
                    f"{statistics.median(r.cpu_ratio(name) for r in rounds):.2f}",
                    f"{statistics.median(r.sink_busy[name] for r in rounds):.0%}",
                )
            )
        head = "contender | events/s | × baseline | target | client CPU µs/event | "
        return (
            f"## Throughput to the sink (median of {len(rounds)} rounds, min–max)\n\n"
            "One client at a time, each after one warm-up batch; the order rotates every round "
            "and each ratio is to the baseline of the same round. Client CPU is the sending "
            "process's CPU time: steadier than the wall clock when other processes take the "
            "CPU.\n\n" + table(head + "× baseline by CPU | sink CPU busy", rows)
        )

    def _cpu(self) -> str:
        rows, cpu = [], self.cpu[0]
        for path, label in [
            ("typed", "typed: `new_event` → `to_dict` → validate → `encode`"),
            ("wire", "wire dicts: validate → `encode`"),
            ("json.dumps", "`json.dumps` of the dicts (the baseline: no validation)"),
        ]:
            steps = [
                f"{statistics.median(c[path][s] for c in self.cpu):.2f}" if s in cpu[path] else "—"
                for s in STEPS
            ]
            rows.append((label, *steps, spread([sum(c[path].values()) for c in self.cpu], ".2f")))
        typed = statistics.median(sum(c["typed"].values()) for c in self.cpu)
        return (
            "## CPU per event without HTTP (µs; median of the rounds, min–max of the total)\n\n"
            + table("path | " + " | ".join(STEPS) + " | total", rows)
            + "\n\nFor scale (issue 4): Togai's openapi-generator client spends about 139 µs "
            f"per event building and serializing; the typed path here {typed:.1f} µs "
            f"({139 / typed:.0f}× less)."
        )

    def _quota(self) -> str:
        q = self.quota
        return (
            f"## Quota run: `AsyncClient` defaults; the sink answers {q.latency * 1000:.0f} ms "
            f"late and 429 above {q.quota:.0f} requests/s (token bucket {q.quota:.0f}, "
            f"{q.quota:.0f}/s)\n\n{q.sent:,} events in {q.seconds:.2f} s: "
            f"{q.events_per_second:,.0f} events/s, {q.share_of_quota:.1%} of the quota; "
            f"{q.requests} requests, {q.throttled} answered 429, {q.lost} lost, "
            f"{q.metered - q.distinct} re-sent. Client: `{q.client}`."
        )

    def _memory(self) -> str:
        title = "## Memory run: `togai-ingest send` on a JSON Lines file\n\n"
        if (m := self.memory) is None:
            return title + "Skipped (`--skip-memory`)."
        by_time = "—" if m.time_rss is None else f"{m.time_rss / MiB:.0f} MiB"
        return (
            f"{title}`{m.command}` (default concurrency), {m.events:,} events: peak RSS "
            f"{by_time} (`/usr/bin/time`), {m.polled_rss / MiB:.0f} MiB (`VmHWM` polled); "
            f"{m.seconds:.1f} s, {m.events_per_second:,.0f} events/s, exit {m.exit_code}, "
            f"{m.distinct:,} distinct ids accepted by the sink. Its last lines:"
            f"\n\n```\n{m.output_tail}\n```"
        )

    def _sink(self) -> str:
        rows = [
            (
                f"`{c.parse}`",
                f"{c.events_per_second:,.0f}",
                f"{c.busy:.0%}",
                f"{c.cpu_per_request * 1e6:.0f} µs",
                f"{BATCH / c.cpu_per_request:,.0f}",
            )
            for c in self.sink_checks
        ]
        head = "sink | events/s driven | sink CPU busy | CPU per request | capacity at 100 % CPU"
        return (
            f"## The sink is not the bottleneck\n\nRaw httpx, pre-encoded {BATCH}-event "
            "batches, from 2 connections for 1 s; capacity in events/s. The throughput rounds "
            'use the `count` sink (it counts `"id":` keys); `json` parses every body (the '
            "quota, memory, drain and fleet runs use it, to check ids).\n\n" + table(head, rows)
        )

    def _profiles(self) -> str:
        text = (
            "## Profiles (by default, of the paths below their target)\n\nOne send of 30,000 "
            "events under pyinstrument (0.5 ms sampling): each function's share of the send's wall "
            "time, inclusive (with its callees) and self. `<generated>` is code compiled from a "
            "string at run time."
        )
        for p in self.profiles:
            ours = [s for s in p.spots if s.where.startswith(PROFILED)]
            by_self = sorted(p.spots, key=lambda s: s.self, reverse=True)
            html = p.html.relative_to(ROOT)
            text += f"\n\n**{p.name}** ({p.seconds:.2f} s; full tree: `{html}`)"
            for title, spots in [("library functions", ours), ("every function", by_self)]:
                rows = [(f"`{s.where}`", f"{s.inclusive:.0%}", f"{s.self:.0%}") for s in spots]
                text += "\n\n" + table(f"{title} | inclusive | self", rows[:10])
        return text if self.profiles else ""

    def render(self) -> str:
        targets = "## Targets\n\n" + "\n".join(self.verdicts())
        sections = [self.header, targets, self._throughput(), self._cpu(), self._quota()]
        sections += [self._memory(), *self.sections, self._sink(), self._profiles()]
        return "\n\n".join(s.strip() for s in sections if s) + "\n"
