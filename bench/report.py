"""The benchmark's measurements and their markdown report."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .memory import MemoryResult, MiB
from .profile import Hotspot, render
from .quota import QuotaResult

__all__ = ["Report", "Round", "SinkCheck", "profile_table"]

LABELS = {
    "baseline": "baseline: raw httpx, `json=`, 1 connection",
    "typed": "typed: `new_event` → `Client.send`",
    "wire": "wire: dicts → `Client.send`",
    "async": "async: dicts → `AsyncClient.send` (default concurrency)",
}
QUOTA_SHARE = 0.95
QUOTA_THROTTLED = 0.01
MEMORY_LIMIT = 150 * MiB
PROFILED = ("togai_ingest/", "togai_client/", "<generated>")


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
    connections: int
    events_per_second: float
    busy: float
    cpu_per_request: float

    @property
    def capacity(self) -> float:
        """Events/s the sink could take with its CPU 100 % busy (100-event batches)."""
        return 100 / self.cpu_per_request


def _spread(values: Sequence[float], fmt: str) -> tuple[str, str]:
    median = format(statistics.median(values), fmt)
    return median, f"{min(values):{fmt}}–{max(values):{fmt}}"


def _mib(size: int | None) -> str:
    return "—" if size is None else f"{size / MiB:.0f} MiB"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def profile_table(name: str, seconds: float, spots: list[Hotspot], html: Path) -> str:
    relative = html.relative_to(html.parent.parent.parent)
    return (
        f"**{name}** (one send under pyinstrument, {seconds:.2f} s; full tree: `{relative}`)\n\n"
        + render(spots, PROFILED)
    )


@dataclass
class Report:
    when: datetime
    python: str
    implementation: str
    cpus: int
    system: str
    revision: str
    rounds: int
    events: int
    targets: dict[str, float]
    sink_checks: list[SinkCheck] = field(default_factory=list)
    rounds_measured: list[Round] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)
    quota: QuotaResult | None = None
    memory: MemoryResult | None = None
    memory_note: str = ""
    profiles: dict[str, str] = field(default_factory=dict)
    duration: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)
    """The 1-minute load average when the run started and when it ended."""

    def ratio(self, name: str) -> float:
        return statistics.median(r.ratio(name) for r in self.rounds_measured)

    # -- sections --------------------------------------------------------------------------

    def _header(self) -> list[str]:
        return [
            f"# `make bench` — {self.when:%Y-%m-%d %H:%M} UTC",
            "",
            f"{self.implementation} {self.python} · {self.cpus} CPUs · {self.system} · "
            f"commit {self.revision} · "
            f"{self.rounds} rounds × {self.events:,} events per contender · batches of 100 · "
            f"run took {self.duration:.0f} s · load average {self.load[0]:.1f} at the start, "
            f"{self.load[1]:.1f} at the end",
            "",
        ]

    def _throughput(self) -> list[str]:
        lines = [
            "## Throughput to the sink (median of the rounds; min–max shows the noise)",
            "",
            "One sink process, one client at a time; each contender sends one warm-up batch, "
            "then the clock runs; the order rotates every round, and each ratio is taken "
            "against the baseline of the same round. Client CPU is the sending process's CPU "
            "time: steadier than the wall clock when other processes take the CPU.",
            "",
            "| contender | events/s | min–max | × baseline | min–max | target "
            "| client CPU µs/event | min–max | × baseline by CPU | sink CPU busy |",
            "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
        ]
        for name, label in LABELS.items():
            rates = [r.events_per_second[name] for r in self.rounds_measured]
            ratios = [r.ratio(name) for r in self.rounds_measured]
            busy = statistics.median(r.sink_busy[name] for r in self.rounds_measured)
            cpu = [r.client_cpu[name] * 1e6 for r in self.rounds_measured]
            cpu_ratio = statistics.median(r.cpu_ratio(name) for r in self.rounds_measured)
            rate, rate_range = _spread(rates, ",.0f")
            ratio, ratio_range = _spread(ratios, ".2f")
            cpu_median, cpu_range = _spread(cpu, ".1f")
            target = self.targets.get(name)
            verdict = (
                f"≥ {target:.1f} × {_verdict(statistics.median(ratios) >= target)}"
                if target
                else ""
            )
            if name == "baseline":
                ratio, ratio_range = "1.00", "—"
            lines.append(
                f"| {label} | {rate} | {rate_range} | {ratio} | {ratio_range} | {verdict} "
                f"| {cpu_median} | {cpu_range} | {cpu_ratio:.2f} | {busy:.0%} |"
            )
        return [*lines, ""]

    def _sink(self) -> list[str]:
        lines = [
            "## The sink is not the bottleneck",
            "",
            "Raw httpx, pre-encoded 100-event batches, from 2 connections for 1 s. The "
            'throughput rounds use the `count` sink (it counts `"id":` keys); `json` parses '
            "every body (the quota and memory runs use it, to check ids).",
            "",
            "| sink | events/s driven | sink CPU busy | sink CPU per request | "
            "sink capacity (CPU 100 % busy) |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for check in self.sink_checks:
            lines.append(
                f"| `{check.parse}` | {check.events_per_second:,.0f} | {check.busy:.0%} | "
                f"{check.cpu_per_request * 1e6:.0f} µs | {check.capacity:,.0f} events/s |"
            )
        return [*lines, ""]

    def _cpu(self) -> list[str]:
        def med(key: str) -> float:
            return statistics.median(c[key] for c in self.cpu)

        def total(prefix: str) -> list[float]:
            return [sum(v for k, v in c.items() if k.startswith(prefix)) for c in self.cpu]

        rows = [
            ("typed: `new_event` → `to_dict` → validate → `encode`", "model."),
            ("wire dicts: validate → `encode`", "dict."),
            ("plain `json.dumps` of the dicts (no validation)", "json."),
        ]
        lines = [
            "## CPU per event without HTTP (µs; median of the rounds, min–max of the total)",
            "",
            "| path | build | to dict | validate | serialize | total | min–max |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for label, prefix in rows:
            cells = []
            for step in ("build", "to_dict", "validate", "serialize"):
                key = prefix + step
                cells.append(f"{med(key):.2f}" if key in self.cpu[0] else "—")
            if prefix == "json.":
                cells[3] = f"{med('json.dumps'):.2f}"
            median, spread = _spread(total(prefix), ".2f")
            lines.append(f"| {label} | {' | '.join(cells)} | {median} | {spread} |")
        typed = statistics.median(total("model."))
        lines += [
            "",
            f"For scale (issue 4): Togai's openapi-generator client spends about 139 µs per "
            f"event building and serializing; the typed path here spends {typed:.1f} µs "
            f"({139 / typed:.0f}× less).",
        ]
        return [*lines, ""]

    def _quota(self) -> list[str]:
        q = self.quota
        if q is None:
            return []
        return [
            "## Quota run: sink +50 ms per request, 429 above 50 requests/s (token bucket 50, "
            "50/s); `AsyncClient` defaults",
            "",
            "| events | seconds | events/s | share of quota | requests | answered 429 "
            "| lost | re-sent | client result |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
            f"| {q.sent:,} | {q.seconds:.2f} | {q.events_per_second:,.0f} | "
            f"{q.share_of_quota:.1%} | {q.requests} | {q.throttled} ({q.share_throttled:.1%}) "
            f"| {q.lost} | {q.metered - q.distinct} | {q.client} |",
            "",
        ]

    def _memory(self) -> list[str]:
        lines = ["## Memory run: `togai-ingest send` on a JSON Lines file", ""]
        m = self.memory
        if m is None:
            return [*lines, self.memory_note, ""]
        return [
            *lines,
            f"`{m.command}` (rate limit off, default concurrency)",
            "",
            "| events | peak RSS (`/usr/bin/time`) | peak RSS (`VmHWM` polled) | seconds "
            "| events/s | exit | accepted by the sink |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| {m.events:,} | {_mib(m.time_rss)} | {_mib(m.polled_rss)} | "
            f"{m.seconds:.1f} | {m.events_per_second:,.0f} | {m.exit_code} | {m.distinct:,} |",
            "",
            "Last lines of its output:",
            "",
            "```",
            m.output_tail,
            "```",
            "",
        ]

    def verdicts(self) -> list[str]:
        lines = []
        for name, target in self.targets.items():
            ratio = self.ratio(name)
            lines.append(
                f"- {_verdict(ratio >= target)} {name} path ≥ {target} × baseline: "
                f"{ratio:.2f} × (median of {len(self.rounds_measured)} rounds)"
            )
        if (q := self.quota) is not None:
            ok = (
                q.share_of_quota >= QUOTA_SHARE
                and q.share_throttled < QUOTA_THROTTLED
                and q.lost == 0
            )
            lines.append(
                f"- {_verdict(ok)} quota run ≥ {QUOTA_SHARE:.0%} of the quota "
                f"({QUOTA_SHARE * q.quota * q.batch:,.0f} events/s), < {QUOTA_THROTTLED:.0%} "
                f"429s, none lost: {q.events_per_second:,.0f} events/s "
                f"({q.share_of_quota:.1%}), {q.share_throttled:.1%} 429s, {q.lost} lost"
            )
        if (m := self.memory) is not None:
            ok = m.peak_rss < MEMORY_LIMIT and m.exit_code == 0 and m.distinct == m.events
            lines.append(
                f"- {_verdict(ok)} {m.events:,} events streamed with peak RSS < "
                f"{MEMORY_LIMIT // MiB} MiB, all accepted: {m.peak_rss / MiB:.0f} MiB, "
                f"exit {m.exit_code}, {m.distinct:,} accepted"
            )
        else:
            lines.append(f"- NOT RUN memory target: {self.memory_note}")
        return lines

    def _profiles(self) -> list[str]:
        if not self.profiles:
            return []
        lines = [
            "## Profiles (`--profile missed`, the default: the contenders below their target)",
            "",
            "One send of 30,000 events under pyinstrument (0.5 ms sampling). "
            "Share of the send's wall time per function (inclusive: with its callees). "
            "`<generated>` is code compiled from a string at run time.",
            "",
        ]
        for table in self.profiles.values():
            lines += [table, ""]
        return lines

    def render(self) -> str:
        sections = [
            self._header(),
            ["## Targets", "", *self.verdicts(), ""],
            self._throughput(),
            self._cpu(),
            self._quota(),
            self._memory(),
            self._sink(),
            self._profiles(),
        ]
        return "\n".join(line for section in sections for line in section).rstrip() + "\n"
