"""The kinds of explanation (issue 20) and how a record names its own (``kind`` on requests,
rows and updates): plain names, so that readers of ``explanation.updates`` (the relay,
``fraudlens lag``) need no model libraries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CONTRIBUTIONS, COUNTERFACTUAL = "contributions", "counterfactual"
KINDS: tuple[str, ...] = (CONTRIBUTIONS, COUNTERFACTUAL)
SPLIT_SEARCH = "split_search"  # the counterfactual kind's method (app/explain/counterfactual.py)


def kind_of(message: Mapping[str, Any]) -> str:
    """A request's, row's or update's kind (absent: contributions, as before kinds existed)."""
    return str(message.get("kind") or CONTRIBUTIONS)
