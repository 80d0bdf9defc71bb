"""Explanations of verdicts: SHAP values, readable reasons, exact cache signatures.

Pure model code (imports no Kafka or Faust); the explainer agents are thin adapters over it.
"""

from app.explain.core import (
    ADDITIVITY_TOLERANCE,
    METHODS,
    TOP_N,
    UNITS,
    Explainer,
    ExplainerCache,
    Explanation,
    Signature,
    TopFeature,
    additivity_error,
    assemble,
)
from app.explain.messages import (
    KINDS,
    PRIORITIES,
    STATUSES,
    FailureCode,
    explain_request,
    explanation_update,
    features_matrix,
    finished_update,
    timings,
)
from app.explain.splits import SplitIndex, UnsupportedModel

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
