"""The uncertainty of a verdict (issue 21): the router's side of ``app.model.calibration``.

Cheap (a few binary searches per verdict, computed for the router's whole batch at once), so
it rides with the contributions: the router computes it when it routes the verdict and puts it
in the contributions request, so the ``pending`` update already carries it and every later
update of that row too. A record of its own would cost one more record per transaction against
the budget of six (docs/cost.md).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.model.registry import Registry

if TYPE_CHECKING:
    from app.model.calibration import Calibration

log = logging.getLogger(__name__)
VERSIONS_KEPT = 8  # calibrations held in memory (a few hundred KB each)


class Uncertainties:
    """Per model version, its calibration and threshold boundaries (or why there are none),
    loaded once."""

    def __init__(self, root: Path, confidence: float) -> None:
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"confidence must be within (0, 1), got {confidence}")
        self.registry, self.confidence = Registry(root), confidence
        self._loaded: OrderedDict[str, tuple[Calibration, dict[str, float]] | str] = OrderedDict()
        from app.model.calibration import _venn_abers

        _venn_abers()  # its import (scikit-learn, pandas: about a second) now, not at a verdict

    def of(self, verdict: Mapping[str, Any]) -> dict[str, Any]:
        """The verdict's ``uncertainty`` (``schemas/explanation.schema.json``), or why there is none."""
        return self.of_many([verdict])[0]

    def of_many(self, verdicts: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``of`` for each verdict, one array pass per model version (the router's micro-batch;
        ``bench.uncertainty`` measures both this and one verdict at a time)."""
        out: list[dict[str, Any]] = [{}] * len(verdicts)
        by_version: dict[str, list[int]] = {}
        for i, verdict in enumerate(verdicts):
            by_version.setdefault(str(verdict["model_version"]), []).append(i)
        for version, indices in by_version.items():
            loaded = self._calibrated(version)
            if isinstance(loaded, str):
                found = [{"unavailable": loaded}] * len(indices)
            else:
                calibration, boundaries = loaded
                scores = np.array([float(verdicts[i]["score"]) for i in indices])
                found = calibration.describe_many(scores, boundaries, self.confidence)
            for i, uncertainty in zip(indices, found, strict=True):
                out[i] = uncertainty
        return out

    def _calibrated(self, version: str) -> tuple[Calibration, dict[str, float]] | str:
        """The version's calibration and threshold boundaries, or why there are none; either read
        once per process (a broken file is not read again for every batch)."""
        if version in self._loaded:
            self._loaded.move_to_end(version)
            return self._loaded[version]
        loaded: tuple[Calibration, dict[str, float]] | str
        try:
            calibration = self.registry.load_calibration(version)
            if calibration is None:
                loaded = (
                    f"model version {version} has no calibration (trained before fraudlens "
                    "calibrated its models: train it again)"
                )
            else:
                loaded = calibration, calibration.boundaries(self.registry.load_meta(version)["thresholds"])
                log.info(
                    "uncertainty: model version %s calibrated on %d rows", version, len(calibration.scores)
                )
        except Exception as exc:  # a broken calibration file must never stop the router
            loaded = f"model version {version}: {type(exc).__name__}: {exc}"[:400]
        self._loaded[version] = loaded
        while len(self._loaded) > VERSIONS_KEPT:
            self._loaded.popitem(last=False)
        return loaded
