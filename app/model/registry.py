"""File-system model registry: ``<root>/<version>/{model.txt,meta.json[,calibration.npz]}``.

A version is a content hash (first 12 hex digits of sha256 over the model
text plus the canonical JSON of feature names and thresholds, and the
calibration's bytes when there is one: issue 21), so training the same thing
twice yields the same version, and a calibrated model is another version than
the same booster without one.  ``<root>/CURRENT`` names the active
version.  Every write goes to a temporary path first and is then renamed, so a
reader never sees a half-written version or pointer.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightgbm as lgb

if TYPE_CHECKING:
    from app.model.calibration import Calibration
    from app.model.reference import ReferenceSet

MODEL_FILE = "model.txt"
META_FILE = "meta.json"
CURRENT_FILE = "CURRENT"
_VERSION_RE = re.compile(r"^[0-9a-f]{12}$")


class RegistryError(Exception):
    """Base class for registry failures."""


class UnknownModelVersion(RegistryError, KeyError):
    """The requested version is not registered."""

    def __init__(self, version: str, root: Path) -> None:
        super().__init__(f"model version {version!r} is not registered in {root}")
        self.version = version

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0])


def canonical_json(value: object) -> bytes:
    """Stable JSON bytes (sorted keys, no whitespace) for hashing."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def content_version(
    model_text: bytes,
    feature_names: Sequence[str],
    thresholds: Mapping[str, float],
    calibration: bytes | None = None,
) -> str:
    """Content hash naming a model version (without a calibration: the hash of every version
    registered before calibrations existed)."""
    digest = hashlib.sha256(model_text)
    digest.update(canonical_json({"feature_names": list(feature_names), "thresholds": dict(thresholds)}))
    if calibration is not None:
        digest.update(calibration)
    return digest.hexdigest()[:12]


class Registry:
    """Versions of trained models under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _dir(self, version: str) -> Path:
        # The name check also stops path traversal through a crafted version.
        if not _VERSION_RE.match(version):
            raise UnknownModelVersion(version, self.root)
        return self.root / version

    def _is_registered(self, version: str) -> bool:
        folder = self.root / version
        return (folder / MODEL_FILE).is_file() and (folder / META_FILE).is_file()

    def versions(self) -> list[str]:
        """Registered versions, oldest first (by ``training.created_at``)."""
        if not self.root.is_dir():
            return []
        found = [
            p.name for p in self.root.iterdir() if _VERSION_RE.match(p.name) and self._is_registered(p.name)
        ]
        created = {v: str(self.load_meta(v)["training"].get("created_at", "")) for v in found}
        return sorted(found, key=lambda v: (created[v], v))

    def path(self, version: str) -> Path:
        """Directory of a registered version."""
        folder = self._dir(version)
        if not self._is_registered(version):
            raise UnknownModelVersion(version, self.root)
        return folder

    def load_meta(self, version: str) -> dict[str, Any]:
        """Parsed ``meta.json`` of a registered version."""
        meta: dict[str, Any] = json.loads((self.path(version) / META_FILE).read_text("utf-8"))
        return meta

    def load_calibration(self, version: str) -> Calibration | None:
        """The version's calibration (issue 21), or None: trained before calibrations existed."""
        from app.model.calibration import CALIBRATION_FILE, Calibration

        return Calibration.load(self.path(version)) if self._has(version, CALIBRATION_FILE) else None

    def load_reference(self, version: str) -> ReferenceSet | None:
        """The version's reference set of similar cases (issue 21), or None: it has none."""
        from app.model.reference import REFERENCE_FILE, ReferenceSet

        return ReferenceSet.load(self.path(version)) if self._has(version, REFERENCE_FILE) else None

    def _has(self, version: str, name: str) -> bool:
        return (self.path(version) / name).is_file()

    def save_reference(self, version: str, reference: ReferenceSet, summary: Mapping[str, Any]) -> None:
        """Store (or replace) the version's reference set: not part of the content hash (the same
        model may be given the user's own past transactions later: ``fraudlens models
        reference``); its summary goes into ``meta.json``'s ``reference``. Each file is replaced
        atomically; a reader sees the old or the new one."""
        from app.model.reference import REFERENCE_FILE

        folder = self.path(version)
        _replace(folder / REFERENCE_FILE, reference.to_bytes())
        meta = {**self.load_meta(version), "reference": _finite_tree(summary)}
        _replace(folder / META_FILE, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())

    def current(self) -> str | None:
        """The active version, or None when nothing was made current."""
        try:
            text = (self.root / CURRENT_FILE).read_text("utf-8").strip()
        except FileNotFoundError:
            return None
        return text or None

    def set_current(self, version: str) -> None:
        """Point ``CURRENT`` at a registered version (atomic replace)."""
        self.path(version)  # raises UnknownModelVersion
        self.root.mkdir(parents=True, exist_ok=True)
        _replace(self.root / CURRENT_FILE, (version + "\n").encode())

    def register(
        self,
        booster: lgb.Booster,
        feature_names: Sequence[str],
        thresholds: Mapping[str, float],
        metrics: Mapping[str, Any],
        training: Mapping[str, Any],
        make_current: bool = True,
        calibration: Calibration | None = None,
        calibration_meta: Mapping[str, Any] | None = None,
    ) -> str:
        """Store a trained booster; returns its content-hash version.

        Registering identical content again is a no-op apart from ``CURRENT``.
        """
        _check_thresholds(thresholds)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        staging.chmod(0o755)  # mkdtemp makes it 0700: scorers may run as another user
        try:
            booster.save_model(str(staging / MODEL_FILE))
            model_text = (staging / MODEL_FILE).read_bytes()
            calibration_bytes = calibration.to_bytes() if calibration is not None else None
            if calibration_bytes is not None:
                from app.model.calibration import CALIBRATION_FILE

                (staging / CALIBRATION_FILE).write_bytes(calibration_bytes)
            version = content_version(model_text, feature_names, thresholds, calibration_bytes)
            meta: dict[str, Any] = {
                "version": version,
                "feature_names": list(feature_names),
                "thresholds": {k: float(v) for k, v in thresholds.items()},
                "metrics": {k: _finite_or_none(v) for k, v in metrics.items()},
                "training": dict(training),
            }
            if calibration_meta is not None:
                meta["calibration"] = _finite_tree(calibration_meta)
            (staging / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", "utf-8")
            self._publish(staging, version)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if make_current or self.current() is None:
            self.set_current(version)
        return version

    def _publish(self, staging: Path, version: str) -> None:
        target = self.root / version
        if self._is_registered(version):
            return  # same content already there (content-addressed)
        try:
            os.rename(staging, target)
        except OSError:
            # A concurrent registration of the same content won the race.
            if not self._is_registered(version):
                raise


def _replace(path: Path, data: bytes) -> None:
    """Write ``path`` atomically: a temporary file beside it, then a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600; scorers may run as another user
    os.replace(tmp, path)


def _finite_or_none(value: object) -> object:
    """NaN/inf are not JSON: an undefined metric is stored as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _finite_tree(value: Any) -> Any:
    """``_finite_or_none`` through nested dicts and lists (a class with no test rows: None)."""
    if isinstance(value, Mapping):
        return {str(k): _finite_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_tree(v) for v in value]
    return _finite_or_none(value)


def _check_thresholds(thresholds: Mapping[str, float]) -> None:
    review, deny = thresholds.get("review"), thresholds.get("deny")
    if review is None or deny is None:
        raise ValueError("thresholds need 'review' and 'deny'")
    if not 0.0 < review < deny <= 1.0:
        raise ValueError(f"need 0 < review < deny <= 1, got {review=} {deny=}")
