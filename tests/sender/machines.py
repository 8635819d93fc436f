"""How the sender's hypothesis state machines run in ``make test``: the same examples every run
(derandomized, no example database), so that they never flake, sized by each test."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine


def run_machine(machine: type[RuleBasedStateMachine], examples: int, steps: int) -> None:
    """Run ``machine`` for ``examples`` examples of up to ``steps`` steps each."""
    run = machine.TestCase
    run.settings = settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    run("runTest").runTest()
