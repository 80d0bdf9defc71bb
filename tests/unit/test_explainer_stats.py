"""The explainer's stats line and its skips of bad internal records, with a fake clock.

The stats line comes every ``explain_stats_every_s`` and once when a backlog drains, never once
per batch at light load (issue 17, point 3); skipped records are counted each, logged rarely."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from app.explain.scheduler import AgingScheduler
from app.explainer import skips as skips_module
from app.explainer import workers as explaining
from app.explainer.skips import Skips, checked_record, contract_problem
from app.runtime import metrics

REPO = Path(__file__).resolve().parents[2]

EVERY_S = 10.0
BATCH = 8


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stats() -> tuple[explaining._Stats, FakeClock]:
    clock = FakeClock()
    return explaining._Stats(EVERY_S, clock=clock), clock


def _lines(caplog: pytest.LogCaptureFixture) -> int:
    return sum("explainer pid" in r.getMessage() for r in caplog.records)


def _batch(stats: explaining._Stats, queue: AgingScheduler[object], clock: FakeClock, dt: float) -> None:
    clock.now += dt
    stats.batches += 1
    stats.log(queue, BATCH)  # type: ignore[arg-type]


def test_light_load_logs_once_per_interval_not_per_batch(
    stats: tuple[explaining._Stats, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    """100 batches over 25 s, each taking all there was (the queue empty after every one)."""
    caplog.set_level(logging.INFO, logger=explaining.__name__)
    s, clock = stats
    queue: AgingScheduler[object] = AgingScheduler(aging_s=60)
    for _ in range(100):
        _batch(s, queue, clock, 0.25)
    assert _lines(caplog) == 2  # at 10 s and at 20 s


def test_a_drained_backlog_logs_once_then_the_interval_rules(
    stats: tuple[explaining._Stats, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=explaining.__name__)
    s, clock = stats
    queue: AgingScheduler[object] = AgingScheduler(aging_s=60)
    for i in range(3 * BATCH):
        queue.put("normal", i, clock.now)
    while len(queue):  # a backlog worked off in 3 batches, 1 s each
        queue.take(BATCH, clock.now)
        _batch(s, queue, clock, 1.0)
    assert _lines(caplog) == 1  # "drained", before the interval is up
    for _ in range(20):  # light load again: nothing until the interval since that line passes
        _batch(s, queue, clock, 0.25)
    assert _lines(caplog) == 1
    _batch(s, queue, clock, 6.0)
    assert _lines(caplog) == 2


def test_a_burst_that_ends_between_lines_is_logged_by_the_timer_once(
    stats: tuple[explaining._Stats, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    """The final counts must reach the log although no batch follows the burst's last one."""
    caplog.set_level(logging.INFO, logger=explaining.__name__)
    s, clock = stats
    queue: AgingScheduler[object] = AgingScheduler(aging_s=60)
    for _ in range(5):  # a light burst over 2.5 s: no line yet (interval not up, no backlog)
        _batch(s, queue, clock, 0.5)
    s.tick(queue, BATCH)  # type: ignore[arg-type]
    assert _lines(caplog) == 0  # the interval since start is not up
    clock.now += EVERY_S
    s.tick(queue, BATCH)  # type: ignore[arg-type]
    assert _lines(caplog) == 1 and "batches 5" in caplog.records[-1].getMessage()
    clock.now += EVERY_S
    s.tick(queue, BATCH)  # type: ignore[arg-type]
    assert _lines(caplog) == 1  # nothing new since: no second line


def test_no_batches_no_line(
    stats: tuple[explaining._Stats, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=explaining.__name__)
    s, clock = stats
    clock.now += 100
    s.log(AgingScheduler(aging_s=60), BATCH)  # type: ignore[arg-type]
    assert _lines(caplog) == 0


# ------------------------------------------------ internal-topic records no contract allows

VERDICT = (REPO / "schemas" / "examples" / "verdict.valid.json").read_bytes()
VERDICT_KEY = orjson.loads(VERDICT)["transaction_id"].encode()


@pytest.mark.parametrize(
    ("value", "key", "says"),
    [
        (None, VERDICT_KEY, "tombstone"),
        (b"", VERDICT_KEY, "empty"),
        (b"\xff" * 10, VERDICT_KEY, "not JSON"),
        (b"[" * 100_000, VERDICT_KEY, "not JSON"),
        (b"[1, 2]", VERDICT_KEY, "not a valid verdict"),
        (orjson.dumps({**orjson.loads(VERDICT), "features": "many"}), VERDICT_KEY, "features"),
        (orjson.dumps({**orjson.loads(VERDICT), "score": None}), VERDICT_KEY, "score"),
        (VERDICT, b"somebody-else", "is not its transaction_id"),
        (VERDICT, None, "is not its transaction_id"),
    ],
)
def test_contract_problem_names_what_is_wrong(value: bytes | None, key: bytes | None, says: str) -> None:
    problem = contract_problem(value, key, "verdict")
    assert problem is not None and says in problem and len(problem) < 300


def test_a_valid_verdict_has_no_contract_problem() -> None:
    assert contract_problem(VERDICT, VERDICT_KEY, "verdict") is None


@pytest.mark.parametrize("schema", ["verdict", "explain_request"])
def test_a_checked_record_is_the_record_as_parsed(schema: str) -> None:
    """The worker uses the checked object as its request: it must be the record, unchanged."""
    value = (REPO / "schemas" / "examples" / f"{schema}.valid.json").read_bytes()
    key = orjson.loads(value)["transaction_id"].encode()
    assert checked_record(value, key, schema) == (orjson.loads(value), None)
    stranger = b"somebody-else"
    assert checked_record(value, stranger, schema) == (None, contract_problem(value, stranger, schema))


def test_skips_are_counted_each_and_logged_at_most_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=skips_module.__name__)
    clock = FakeClock()
    skips = Skips(every_s=10.0, clock=clock)
    before = metrics.EXPLAINER_SKIPPED.labels(topic="verdicts")._value.get()
    for _ in range(1000):  # a flood of bad records within one interval
        skips.skip("verdicts", "verdicts:0:1", "x" * 10_000)
        clock.now += 0.001
    skips.skip("explain.low", "explain.low:0:1", "empty value")
    clock.now += 10
    skips.skip("verdicts", "verdicts:0:2", "empty value")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines  # verdicts at once, explain.low at once, verdicts 10 s later
    assert "skipped 1000 record(s)" in lines[2] and all(len(line) < 500 for line in lines)
    assert skips.total == {"verdicts": 1001, "explain.low": 1}
    assert metrics.EXPLAINER_SKIPPED.labels(topic="verdicts")._value.get() - before == 1001


WRONG_TYPES: tuple[object, ...] = (123, 1.5, True, None, [], {"a": 1}, "text")


@pytest.mark.parametrize("schema", ["verdict", "explain_request"])
def test_a_wrong_type_at_any_field_of_an_internal_record_is_a_contract_problem(schema: str) -> None:
    example = orjson.loads((REPO / "schemas" / "examples" / f"{schema}.valid.json").read_bytes())
    key = example["transaction_id"].encode()
    assert contract_problem(orjson.dumps(example), key, schema) is None
    for field, good in example.items():
        for wrong in WRONG_TYPES:
            if type(wrong) is type(good) or (isinstance(good, float) and type(wrong) is int):
                continue
            problem = contract_problem(orjson.dumps({**example, field: wrong}), key, schema)
            assert problem is not None, (field, wrong)
