"""Explanations of verdicts: SHAP values, readable reasons, exact cache signatures.

Pure model code (imports no Kafka or Faust); the explainer agents are thin adapters over it.
"""

from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use (PEP 562): ``app.explain.policy`` is all the relay needs of this package,
# and importing ``core`` loads lightgbm. ``import app.relay.server`` took 1.66 s with the eager
# imports and takes 0.29 s without (medians of five alternating runs, warm, 2026-12-06 10:40).
_WHERE = {
    **dict.fromkeys(
        ("ADDITIVITY_TOLERANCE", "METHODS", "TOP_N", "UNITS", "Explainer", "ExplainerCache", "Explanation",
         "Signature", "TopFeature", "additivity_error", "assemble"),
        "app.explain.core",
    ),
    **dict.fromkeys(
        ("PRIORITIES", "STATUSES", "FailureCode", "explain_request", "explanation_update",
         "features_matrix", "finished_update", "timings"),
        "app.explain.messages",
    ),
    "KINDS": "app.records.kinds",
    **dict.fromkeys(("SplitIndex", "UnsupportedModel"), "app.explain.splits"),
}  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "ADDITIVITY_TOLERANCE",
    "KINDS",
    "METHODS",
    "PRIORITIES",
    "STATUSES",
    "TOP_N",
    "UNITS",
    "Explainer",
    "ExplainerCache",
    "Explanation",
    "FailureCode",
    "Signature",
    "SplitIndex",
    "TopFeature",
    "UnsupportedModel",
    "additivity_error",
    "assemble",
    "explain_request",
    "explanation_update",
    "features_matrix",
    "finished_update",
    "timings",
]
