"""Settings by concern (issue 19): each role's class holds the shared settings and its own, no
other role's; every environment variable keeps its name whichever class reads it."""

from __future__ import annotations

import pytest

from app.settings import ExplainerSettings, RelaySettings, ScorerSettings, Settings, SharedSettings

ROLES = {"scorer": ScorerSettings, "explainer": ExplainerSettings, "relay": RelaySettings}


def _own(cls: type[SharedSettings]) -> set[str]:
    return set(cls.model_fields) - set(SharedSettings.model_fields)


def test_each_role_reads_the_shared_settings_and_its_own_only() -> None:
    shared = set(SharedSettings.model_fields)
    assert {"broker", "app_id", "data_dir", "kafka_security_protocol", "metrics_port"} <= shared
    scorer, explainer, relay = (_own(cls) for cls in ROLES.values())
    assert scorer and all(name.startswith(("scorer_", "model_")) for name in scorer), scorer
    assert not any(name.startswith(("relay_", "scorer_")) for name in explainer), explainer
    assert not any(name.startswith(("scorer_", "explain_batch", "explainer_")) for name in relay), relay
    # The priority rules are the explainer's and the relay's (it shows them), not the scorer's.
    assert {"explain_high_decisions", "explain_low_sample_rate"} <= explainer & relay
    assert not scorer & explainer and not scorer & relay
    assert set(Settings.model_fields) == shared | scorer | explainer | relay


@pytest.mark.parametrize(
    ("cls", "variable", "field", "value", "expected"),
    [
        (ScorerSettings, "FRAUDLENS_SCORER_BATCH_MAX", "scorer_batch_max", "17", 17),
        (ExplainerSettings, "FRAUDLENS_EXPLAIN_BATCH_MAX", "explain_batch_max", "9", 9),
        (ExplainerSettings, "FRAUDLENS_EXPLAIN_HIGH_MIN_AMOUNT", "explain_high_min_amount", "250", 250.0),
        (RelaySettings, "FRAUDLENS_RELAY_PORT", "relay_port", "9911", 9911),
        (RelaySettings, "FRAUDLENS_APP_ID", "app_id", "other", "other"),
        (ScorerSettings, "FRAUDLENS_BROKER", "broker", "kafka://k:1", "kafka://k:1"),
        (Settings, "FRAUDLENS_RELAY_PORT", "relay_port", "9912", 9912),
    ],
)
def test_the_environment_variables_keep_their_names(
    monkeypatch: pytest.MonkeyPatch,
    cls: type[SharedSettings],
    variable: str,
    field: str,
    value: str,
    expected: object,
) -> None:
    monkeypatch.setenv(variable, value)
    assert getattr(cls(), field) == expected


def test_a_role_refuses_a_bad_value_of_its_own_concern(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("FRAUDLENS_SCORER_BATCH_MAX", "0")
    with pytest.raises(ValidationError, match="scorer_batch_max"):
        ScorerSettings()
    RelaySettings()  # another concern's variable is not the relay's to refuse


def test_every_setting_is_documented_by_its_full_name() -> None:
    """An operator finds every variable in docs/ (operations, protocol, explainer) by grep."""
    from pathlib import Path

    docs = "".join(p.read_text() for p in (Path(__file__).resolve().parents[2] / "docs").glob("*.md"))
    variables = [f"FRAUDLENS_{name.upper()}" for name in Settings.model_fields]
    assert len(variables) > 70
    assert [v for v in variables if v not in docs] == []
