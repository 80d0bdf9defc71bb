"""Every number setting refuses ``nan`` and ``inf`` from the environment, as the CLI's options do."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.settings import Settings

FLOAT_FIELDS = sorted(name for name, field in Settings.model_fields.items() if field.annotation is float)


def test_there_are_number_settings_to_check() -> None:
    assert {"explain_batch_within_s", "dedup_window_s", "explain_high_min_amount"} <= set(FLOAT_FIELDS)


@pytest.mark.parametrize("name", FLOAT_FIELDS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_number_setting_refuses_nan_and_infinity(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"FRAUDLENS_{name.upper()}", value)
    with pytest.raises(ValidationError, match=name):
        Settings()
