"""``explanation_cache``: exact input signature (+ model version, method) → explanation JSON.

Equal signatures take the same branch at every node of every tree, so a hit is exact
(``app.explain.splits``). An entry is written under the event of the request that computed
it, so it lives in that request's partition; the worker also keeps every entry it wrote or
read in memory (``ExplanationMemo``), which is where most hits come from.
"""

from __future__ import annotations

from app.settings import get_settings
from app.tables import windowed_table

_retention_s = get_settings().explanation_retention_s

explanation_cache = windowed_table(
    "explanation_cache",
    "model_version:method:signature to the SHAP explanation computed for that signature.",
    _retention_s,
)
