"""bench.isolation's window plan: levers compared in rotated positions, each after a stopped window."""

from __future__ import annotations

from bench.isolation import plan

LEVERS = ["nice10", "idle", "nice10+vp", "idle+vp"]


def test_every_saturated_window_follows_a_stopped_one() -> None:
    windows = plan(LEVERS)

    assert [state for state, _ in windows] == ["off", "on"] * (2 * len(LEVERS))
    assert all(windows[i][1] == windows[i + 1][1] for i in range(0, len(windows), 2))


def test_each_lever_runs_once_per_round() -> None:
    windows = plan(LEVERS)
    saturated = [lever for state, lever in windows if state == "on"]

    assert sorted(saturated[:4]) == sorted(saturated[4:]) == sorted(LEVERS)


def test_no_lever_keeps_its_position_from_one_round_to_the_next() -> None:
    """A periodic stall of the broker must not land on the same lever's windows every round."""
    saturated = [lever for state, lever in plan(LEVERS) if state == "on"]
    positions = {
        lever: [i % len(LEVERS) for i, name in enumerate(saturated) if name == lever] for lever in LEVERS
    }

    assert all(first != second for first, second in positions.values()), positions


def test_two_levers_swap_places() -> None:
    saturated = [lever for state, lever in plan(["idle", "nice10"]) if state == "on"]

    assert saturated == ["idle", "nice10", "nice10", "idle"]
