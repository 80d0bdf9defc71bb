"""The uncertainty of a verdict (issue 21): the router's side of ``app.model.calibration``.

Cheap (a few binary searches per verdict, about 12 µs), so it rides with the contributions: the
router computes it when it routes the verdict and puts it in the contributions request, so the
``pending`` update already carries it and every later update of that row too. A record of its
own would cost one more record per transaction against the budget of six (docs/cost.md).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.model.registry import Registry, RegistryError

if TYPE_CHECKING:
    from app.model.calibration import Calibration

log = logging.getLogger(__name__)
VERSIONS_KEPT = 8  # calibrations held in memory (a few hundred KB each)


class Uncertainties:
    """Per model version, its calibration and threshold boundaries, loaded once."""

    def __init__(self, root: Path, confidence: float) -> None:
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"confidence must be within (0, 1), got {confidence}")
        self.registry, self.confidence = Registry(root), confidence
        self._loaded: OrderedDict[str, tuple[Calibration, dict[str, float]]] = OrderedDict()

    def of(self, verdict: Mapping[str, Any]) -> dict[str, Any]:
        """The verdict's ``uncertainty`` (``schemas/explanation.schema.json``), or why there is none."""
        version = str(verdict["model_version"])
        loaded = self._loaded.get(version)
        if loaded is None:
            try:
                loaded = self._load(version)
            except (RegistryError, OSError, ValueError, KeyError) as exc:
                return {"unavailable": f"model version {version}: {exc}"[:400]}
            if loaded is None:
                return {
                    "unavailable": f"model version {version} has no calibration (trained before "
                    "fraudlens calibrated its models: train it again)"
                }
        else:
            self._loaded.move_to_end(version)
        calibration, boundaries = loaded
        return calibration.describe(float(verdict["score"]), boundaries, self.confidence)

    def _load(self, version: str) -> tuple[Calibration, dict[str, float]] | None:
        calibration = self.registry.load_calibration(version)
        if calibration is None:
            return None
        boundaries = calibration.boundaries(self.registry.load_meta(version)["thresholds"])
        self._loaded[version] = calibration, boundaries
        while len(self._loaded) > VERSIONS_KEPT:
            self._loaded.popitem(last=False)
        log.info(
            "uncertainty: calibration of model version %s loaded (%d rows)", version, len(calibration.scores)
        )
        return calibration, boundaries
