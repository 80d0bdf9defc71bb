"""``explanation_cache``: exact input signature (+ model version, method) → explanation JSON.

Equal signatures take the same branch at every node of every tree, so a hit is exact
(``app.explain.splits``). An entry is written under the event of the request that computed
it, so it lives in that request's partition; the worker also keeps every entry it wrote or
read in memory (``ExplanationMemo``), which is where most hits come from.
"""

from __future__ import annotations

from app.app import app
from app.settings import get_settings

_retention_s = get_settings().explanation_retention_s

explanation_cache = app.Table(
    "explanation_cache",
    key_type=bytes,
    value_type=bytes,
    help="model_version:method:signature to the SHAP explanation computed for that signature.",
    extra_topic_configs={"cleanup.policy": "compact,delete", "retention.ms": str(int(_retention_s * 1000))},
    options={"ttl": int(_retention_s)},
)
