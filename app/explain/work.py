"""One SHAP batch: requests in, explanations (or failures) out. No Kafka, no Faust.

The worker calls ``prepare``, its lookups in the in-memory cache (``ExplanationMemo``) and
``compute`` in one call on a thread (explainer construction and SHAP are CPU work that must not
block the event loop).
Requests are grouped by (model version, method): each group is one ``explain_batch`` call for
the cache misses and one ``explain_from_cache`` call for the hits.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from app.explain.core import METHODS, Explainer, ExplainerCache, Explanation, NoReference
from app.explain.messages import FailureCode, features_matrix
from app.explain.splits import UnsupportedModel
from app.model.predictor import IncompatibleModelError
from app.model.registry import RegistryError, UnknownModelVersion

Failure = tuple[FailureCode, str]


@dataclass
class Prepared:
    """A request made ready: its explainer, its feature row and cache key, or why not."""

    request: Mapping[str, Any]
    method: str
    explainer: Explainer | None = None
    row: np.ndarray | None = None
    cache_key: str | None = None
    failure: Failure | None = None


@dataclass(frozen=True)
class Outcome:
    explanation: Explanation | None
    cache_hit: bool
    failure: Failure | None  # set when there is no explanation (additivity failures are in it)
    counterfactual: Mapping[str, Any] | None = None  # the counterfactual kind's result
    similar_cases: Mapping[str, Any] | None = None  # rides with contributions (issue 21)


class ExplanationMemo:
    """The in-memory side of the explanation cache: cache key → explanation, LRU-bounded."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Explanation] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Explanation | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: str, explanation: Explanation) -> None:
        if self.max_entries <= 0:
            return
        self._entries[key] = explanation
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


# Why a request's model version cannot be loaded, the first matching kind first.
_LOAD_FAILURES: tuple[tuple[type[Exception], FailureCode], ...] = (
    (UnknownModelVersion, FailureCode.UNKNOWN_MODEL_VERSION),
    (IncompatibleModelError, FailureCode.INCOMPATIBLE_MODEL),
    (UnsupportedModel, FailureCode.UNSUPPORTED_METHOD),
    (RegistryError, FailureCode.UNKNOWN_MODEL_VERSION),
)


def prepare(
    explainers: ExplainerCache, requests: Sequence[Mapping[str, Any]], default_method: str
) -> list[Prepared]:
    """Load each request's model version (cached per version) and build its row and signature."""
    out = [_prepared(explainers, request, default_method) for request in requests]
    _sign(out)
    return out


def _prepared(explainers: ExplainerCache, request: Mapping[str, Any], default_method: str) -> Prepared:
    """One request's explainer and feature row, or why not (its cache key comes from ``_sign``)."""
    method = str(request.get("method") or default_method)
    item = Prepared(request, method)
    if method not in METHODS:
        item.failure = (FailureCode.UNSUPPORTED_METHOD, f"unknown explanation method {method!r}")
        return item
    loaded = _load(explainers, request, method)
    if not isinstance(loaded, Explainer):
        item.failure = loaded
        return item
    item.explainer = loaded
    try:
        item.row = features_matrix([request["features"]], item.explainer.feature_names)
    except (ValueError, TypeError, KeyError) as exc:
        item.failure = (FailureCode.INVALID_REQUEST, f"features: {exc}")
    return item


def _load(
    explainers: ExplainerCache, request: Mapping[str, Any], method: str | None = None
) -> Explainer | Failure:
    """The request's model version (warmed for ``method``), or why it cannot be loaded."""
    try:
        explainer = explainers.get(str(request["model_version"]))
        if method is not None and method != "tree":
            explainer.warm(method)
    except tuple(kind for kind, _ in _LOAD_FAILURES) as exc:
        return next(code for kind, code in _LOAD_FAILURES if isinstance(exc, kind)), str(exc)
    return explainer


def counterfactuals(explainers: ExplainerCache, requests: Sequence[Mapping[str, Any]]) -> list[Outcome]:
    """The counterfactual kind: the search per request, under the verdict's model version, from
    the transaction and card state the request carries (the verdict's ``replay``). One bad
    request fails alone; "no proposal" is a result, not a failure."""
    out = []
    for request in requests:
        explainer = _load(explainers, request)
        if not isinstance(explainer, Explainer):
            out.append(Outcome(None, False, explainer))
            continue
        try:
            replay = request["replay"]
            result = explainer.counterfactual(replay["transaction"], replay["card_state"])
        except (KeyError, TypeError, ValueError) as exc:
            out.append(
                Outcome(None, False, (FailureCode.INVALID_REQUEST, f"replay: {type(exc).__name__}: {exc}"))
            )
            continue
        except Exception as exc:  # one bad request must not take the worker down
            out.append(Outcome(None, False, (FailureCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")))
            continue
        out.append(Outcome(None, False, None, result.to_dict()))
    return out


def _sign(prepared: Sequence[Prepared]) -> None:
    """Cache keys, one ``signatures`` call per model version on its rows stacked: its cost is a
    ``searchsorted`` per feature per call, whatever the rows (docs/cost.md, lever 5)."""
    by_version: dict[str, list[Prepared]] = {}
    for item in prepared:
        if item.explainer is not None and item.row is not None:
            by_version.setdefault(item.explainer.version, []).append(item)
    for items in by_version.values():
        signatures = items[0].explainer.signatures(np.vstack([item.row for item in items]))  # type: ignore[union-attr,misc]
        for item, signature in zip(items, signatures, strict=True):
            item.cache_key = signature.cache_key(item.method)


def compute(
    prepared: Sequence[Prepared], cached: Sequence[Explanation | None], similar_k: int = 0
) -> list[Outcome]:
    """SHAP for the misses, cached values for the hits, grouped by (version, method); with
    ``similar_k``, each complete explanation's nearest reference cases too (one lookup per group)."""
    outcomes: list[Outcome | None] = [None] * len(prepared)
    groups: dict[tuple[str, str], list[int]] = {}
    for index, item in enumerate(prepared):
        if item.failure is not None or item.explainer is None:
            outcomes[index] = Outcome(None, False, item.failure)
        else:
            groups.setdefault((item.explainer.version, item.method), []).append(index)
    for (_, method), indices in groups.items():
        hits = [i for i in indices if cached[i] is not None]
        misses = [i for i in indices if cached[i] is None]
        _explain_group(prepared, cached, method, misses, hits, outcomes)
        if similar_k > 0:
            _similar_cases(prepared[indices[0]].explainer, indices, outcomes, similar_k)  # type: ignore[arg-type]
    return [
        o if o is not None else Outcome(None, False, (FailureCode.INTERNAL_ERROR, "not computed"))
        for o in outcomes
    ]


def _explain_group(
    prepared: Sequence[Prepared],
    cached: Sequence[Explanation | None],
    method: str,
    misses: list[int],
    hits: list[int],
    outcomes: list[Outcome | None],
) -> None:
    explainer = prepared[(misses or hits)[0]].explainer
    assert explainer is not None
    for indices, from_cache in ((misses, False), (hits, True)):
        if not indices:
            continue
        matrix = np.vstack([prepared[i].row for i in indices])  # type: ignore[misc]
        try:
            if from_cache:
                explained = explainer.explain_from_cache(matrix, [cached[i] for i in indices])  # type: ignore[misc]
            else:
                explained = explainer.explain_batch(matrix, method)
        except UnsupportedModel as exc:
            failure: Failure = (FailureCode.UNSUPPORTED_METHOD, str(exc))
        except Exception as exc:  # one bad group must not take the worker down
            failure = (FailureCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        else:
            for i, explanation in zip(indices, explained, strict=True):
                outcomes[i] = Outcome(explanation, from_cache, None)
            continue
        for i in indices:
            outcomes[i] = Outcome(None, False, failure)


def _similar_cases(explainer: Explainer, indices: list[int], outcomes: list[Outcome | None], k: int) -> None:
    """The group's complete explanations get their ``k`` nearest reference cases in SHAP space
    (``app.model.reference``): one nearest-neighbour query for the group; a version without a
    reference set, or a broken one, gets ``unavailable`` with why, never a failed explanation."""
    done = [
        i
        for i in indices
        if (o := outcomes[i]) is not None and o.explanation is not None and o.explanation.ok
    ]
    if not done:
        return
    names = explainer.feature_names
    vectors = np.array([[outcomes[i].explanation.contributions[n] for n in names] for i in done])  # type: ignore[union-attr]
    try:
        found: list[dict[str, Any]] = [
            {"k": k, "space": "shap", "cases": cases} for cases in explainer.similar_cases(vectors, k)
        ]
    except Exception as exc:  # no reference set, or a broken one: never a failed explanation
        why = str(exc) if isinstance(exc, NoReference) else f"{type(exc).__name__}: {exc}"
        found = [{"unavailable": why[:400]}] * len(done)
    for i, result in zip(done, found, strict=True):
        outcomes[i] = replace(outcomes[i], similar_cases=result)  # type: ignore[type-var]
