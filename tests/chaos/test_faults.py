"""The fault suite (`make chaos`): each scenario runs the real stack under 500 msg/s (2% malformed),
injects its faults at seeded random moments and ends with the ledger: every accepted transaction
has one verdict value (duplicates identical), every malformed input is in the DLQ with its reason,
every auto-explained verdict ends with a complete explanation; lost = 0."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.chaos.faults import OUTAGE_RATE, Scenario, start_broker, wipe
from tests.chaos.relay_client import run_relay_scenario
from tests.integration.harness import Stack


@pytest.fixture
def scenario(request: pytest.FixtureRequest, stack: Stack, chaos_seed: int) -> Iterator[Scenario]:
    run = Scenario(request.node.name.removeprefix("test_"), stack, chaos_seed)
    try:
        yield run
    finally:
        run.close()


def test_scorer_sigkill(scenario: Scenario) -> None:
    """a) SIGKILL the scorer at random moments, three times; restart it at once each time."""
    scorer = scenario.worker("scorer")
    scenario.worker("explainer", "x1")
    scenario.worker("explainer", "x2")
    scenario.start_load()
    for _ in range(3):
        scenario.random_traffic()
        scenario.kill(scorer)
        scorer = scenario.worker("scorer")
        scenario.verdicts_resume(180, "the restarted scorer to score new transactions")
        scenario.note(f"scorer pid {scorer.pid} scoring again")
    scenario.random_traffic()
    scenario.finish()


def test_explainer_sigkill(scenario: Scenario) -> None:
    """b) SIGKILL one of two explainers at random moments, three times; restart it each time."""
    scenario.worker("scorer")
    explainers = {name: scenario.worker("explainer", name) for name in ("x1", "x2")}
    scenario.start_load()
    for _ in range(3):
        scenario.random_traffic()
        name = scenario.rng.choice(sorted(explainers))
        scenario.kill(explainers[name])
        explainers[name] = scenario.worker("explainer", name)
        scenario.explains_again(explainers[name])
        scenario.note(f"explainer {name} pid {explainers[name].pid} explaining again")
    scenario.random_traffic()
    scenario.finish()


def test_relay_sigkill(scenario: Scenario) -> None:
    """c) SIGKILL the relay at random moments, three times; a websocket client reconnects each
    time and ends with every verdict and every final explanation (see relay_client)."""
    scenario.worker("scorer")
    scenario.worker("explainer", "x1")
    scenario.worker("explainer", "x2")
    asyncio.run(run_relay_scenario(scenario, kills=3))


def test_broker_restart(scenario: Scenario, stack: Stack) -> None:
    """d) Stop the broker (SIGTERM: it keeps its data) and start it again on the same port, twice,
    while the workers run: they reconnect by themselves (none is restarted) and nothing is lost."""
    broker = next(p for p in stack.processes if p.name == "broker")
    scenario.worker("scorer")
    explainers = [scenario.worker("explainer", "x1"), scenario.worker("explainer", "x2")]
    scenario.start_load()
    # Both explaining before the first stop: a Faust worker still starting when the broker goes
    # away exits (a supervisor restarts it: test_broker_outage), which this scenario is not about.
    for explainer in explainers:
        scenario.explains_again(explainer)
    for _ in range(2):
        scenario.random_traffic()
        scenario.stop(broker)
        broker = start_broker(stack)
        scenario.note(f"broker pid {broker.pid} answering again")
        scenario.verdicts_resume(240, "verdicts for transactions sent after the broker restart")
        scenario.note("workers reconnected: new transactions scored")
    scenario.random_traffic()
    scenario.finish()


BROKER_FAULTS = ("group", "noida", "main", "sigstop")
# A SIGKILL of noida-db (alone or with its process group) loses its last ~1 s of acked writes.
# In steady state that still breaks the ledger (issue 23, open: docs/limits.md), so those two run
# in their own scenario, outside `make chaos` (`make chaos-broker-loss`); at start-up they pass.
LOSSLESS_FAULTS = ("main", "sigstop")
LOSSY_FAULTS = ("group", "noida")


@pytest.fixture
def outage_scenario(request: pytest.FixtureRequest, stack: Stack, chaos_seed: int) -> Iterator[Scenario]:
    """A scenario at ``OUTAGE_RATE`` whose roles are restarted if they exit non-zero."""
    run = Scenario(
        request.node.name.removeprefix("test_"), stack, chaos_seed, rate=OUTAGE_RATE, supervised=True
    )
    try:
        yield run
    finally:
        run.close()


def test_broker_outages(outage_scenario: Scenario) -> None:
    """g) Broker faults while the roles run, one after the other in a seeded order, each at a
    random moment: SIGKILL of the ``fraudlens broker`` process alone (its noida-db ends with it;
    restarted on the same data dir 5 s later) and the broker SIGSTOPped for 30 s. After each,
    every transaction acked before it came back has its verdict within 10 s; at the end the
    ledger (acked records the broker lost printed apart)."""
    _outages_in_steady_state(outage_scenario, LOSSLESS_FAULTS)


@pytest.mark.broker_loss
def test_broker_sigkill_steady_state(outage_scenario: Scenario) -> None:
    """g') SIGKILL of the broker's process group and of its noida-db alone while the roles run
    (each restarted on the same data dir 5 s later), in a seeded order. noida-db loses its last
    unsaved acked writes (docs/limits.md): the inputs lost are counted and printed with the window,
    those lost after their verdict was out are not expected to be explained, and everything
    else must be clean — no second verdict with other content, every other explanation complete
    (the roles' stores are rebuilt when the broker hands acked offsets out again)."""
    _outages_in_steady_state(outage_scenario, LOSSY_FAULTS)


def _outages_in_steady_state(scenario: Scenario, faults: tuple[str, ...]) -> None:
    scenario.worker("scorer")
    scenario.worker("explainer", "x1")
    scenario.start_load()
    for fault in scenario.rng.sample(faults, len(faults)):
        scenario.random_traffic(2.0, 5.0)
        scenario.broker_outage(fault)
        scenario.verdicts_resume(120, f"verdicts for transactions sent after the {fault} fault")
    scenario.random_traffic()
    scenario.finish()


@pytest.mark.parametrize("fault", BROKER_FAULTS)
def test_broker_outage_at_startup(outage_scenario: Scenario, fault: str) -> None:
    """h) The same faults while the roles are still starting: the load begins with the roles,
    and the fault lands once the first 50 messages were acked (the roles then are importing,
    loading the model, joining their groups)."""
    scenario = outage_scenario
    scenario.worker("scorer")
    scenario.worker("explainer", "x1")
    scenario.load.start()
    scenario.random_traffic(0.5, 1.0)
    scenario.broker_outage(fault)
    scenario.verdicts_resume(180, f"verdicts for transactions sent after the {fault} fault")
    scenario.random_traffic()
    scenario.finish()


def test_explainer_rebalance(scenario: Scenario) -> None:
    """e) Explainers join and leave the group under load: two run, a third joins, then one of the
    first two leaves (SIGTERM), then another joins."""
    scenario.worker("scorer")
    first = scenario.worker("explainer", "x1")
    scenario.worker("explainer", "x2")
    scenario.start_load()
    scenario.random_traffic()
    joined = scenario.worker("explainer", "x3")
    scenario.note(f"added explainer x3 pid {joined.pid}")
    scenario.explains_again(joined)
    scenario.random_traffic()
    scenario.stop(first)
    scenario.random_traffic()
    joined = scenario.worker("explainer", "x4")
    scenario.note(f"added explainer x4 pid {joined.pid}")
    scenario.explains_again(joined)
    scenario.random_traffic()
    scenario.finish()


def test_explainer_disk_loss(scenario: Scenario, stack: Stack) -> None:
    """f) SIGKILL an explainer, wipe its data dir (its RocksDB tables), restart it: it recovers
    its tables from the changelogs; twice, each time the explainer picked at random."""
    scenario.worker("scorer")
    explainers = {name: scenario.worker("explainer", name) for name in ("x1", "x2")}
    scenario.start_load()
    for _ in range(2):
        scenario.random_traffic()
        name = scenario.rng.choice(sorted(explainers))
        scenario.kill(explainers[name])
        wipe(stack.root / "data" / f"explainer-{name}")
        scenario.note(f"wiped data/explainer-{name}")
        explainers[name] = scenario.worker("explainer", name)
        scenario.explains_again(explainers[name])
        scenario.note(f"explainer {name} pid {explainers[name].pid} explaining again")
    scenario.random_traffic()
    scenario.finish()
