"""The kinds of explanation (issue 20) and how a record names its own (``kind`` on requests,
rows and updates): plain names, so that readers of ``explanation.updates`` (the relay,
``fraudlens lag``) need no model libraries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CONTRIBUTIONS, COUNTERFACTUAL = "contributions", "counterfactual"
KINDS: tuple[str, ...] = (CONTRIBUTIONS, COUNTERFACTUAL)
# Issue 21: the uncertainty and the similar cases ride with the contributions (the uncertainty
# in their request, row and every update; the similar cases in the complete update): kinds to
# ask for and show, with no row or record of their own.
UNCERTAINTY, SIMILAR_CASES = "uncertainty", "similar_cases"
ASKABLE_KINDS: tuple[str, ...] = (*KINDS, UNCERTAINTY, SIMILAR_CASES)
SPLIT_SEARCH = "split_search"  # the counterfactual kind's method (app/explain/counterfactual.py)


def kind_of(message: Mapping[str, Any]) -> str:
    """A request's, row's or update's kind (absent: contributions, as before kinds existed)."""
    return str(message.get("kind") or CONTRIBUTIONS)


def row_key(transaction_id: str, kind: str) -> bytes:
    """The ``explanations`` key of a transaction's row of ``kind`` (also its records' key on
    ``explanation.updates``): the transaction id for contributions (the key of every row written
    before kinds existed), ``id#kind`` for the others (``#`` is not in the identifier alphabet:
    no transaction id looks like one)."""
    return (transaction_id if kind == CONTRIBUTIONS else f"{transaction_id}#{kind}").encode()
