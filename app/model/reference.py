"""Similar past cases (issue 21): a labelled reference set kept with the model version, and its
nearest neighbours in SHAP space ("similar for the same reasons").

The reference set is, by default, the most recent labelled rows training held out of the
fit (up to 20,000 of the validation and calibration slices; never the test), or a labelled
file of the user's own past transactions (``fraudlens models reference VERSION --data FILE``).
Each reference row keeps its SHAP vector under the version's booster (LightGBM's
``pred_contrib``, the contributions kind's own values) and what an analyst reads: outcome,
fraud pattern where the data names one, amount, currency, channel, country, masked card,
transaction id and time.

Why SHAP space and not the raw features: on the default run's test split (rows in neither
set), the three nearest neighbours' majority outcome agrees with the label more often in SHAP
space, and most of all on the frauds (``bench/similar.py``; docs/model.md).
Raw features mix units (amounts, counts, hours, flags) that a standardisation only half fixes;
SHAP values are all log-odds, weighted by what the model found to matter.

Lookups: scikit-learn's ``KDTree`` (exact Euclidean nearest neighbours), built once per version.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.records.masking import mask_card_id

REFERENCE_FILE = "reference.npz"
DEFAULT_K = 3
_TEXT_FIELDS = ("transaction_id", "card", "currency", "channel", "country", "timestamp", "pattern")


@dataclass(frozen=True)
class ReferenceSet:
    """Labelled past transactions with their SHAP vectors under one model version."""

    shap: np.ndarray  # (rows, features), log-odds
    labels: np.ndarray  # 0 legitimate, 1 fraud
    amount: np.ndarray
    text: dict[str, np.ndarray]  # _TEXT_FIELDS → unicode arrays ("" for none)

    @classmethod
    def build(
        cls,
        shap_values: np.ndarray,
        labels: np.ndarray,
        transactions: Sequence[dict[str, Any]],
        patterns: Sequence[str | None],
    ) -> ReferenceSet:
        if not len(shap_values) == len(labels) == len(transactions) == len(patterns):
            raise ValueError("the reference's SHAP rows, labels, transactions and patterns differ in length")
        if len(labels) == 0:
            raise ValueError("an empty reference set")
        text = {
            "transaction_id": [str(t["transaction_id"]) for t in transactions],
            "card": [mask_card_id(t["card_id"]) for t in transactions],  # never the full id
            "currency": [str(t["currency"]) for t in transactions],
            "channel": [str(t["channel"]) for t in transactions],
            "country": [str(t["country"]) for t in transactions],
            "timestamp": [str(t["timestamp"]) for t in transactions],
            "pattern": [p or "" for p in patterns],
        }
        return cls(
            np.asarray(shap_values, dtype=np.float32),
            np.asarray(labels, dtype=np.int8),
            np.array([float(t["amount"]) for t in transactions]),
            {name: np.array(values, dtype=str) for name, values in text.items()},
        )

    def __len__(self) -> int:
        return len(self.labels)

    def to_bytes(self) -> bytes:
        """The ``reference.npz`` bytes (the registry writes them, ``Registry.save_reference``)."""
        buffer = io.BytesIO()
        arrays: dict[str, Any] = {
            "shap": self.shap,
            "labels": self.labels,
            "amount": self.amount,
            **self.text,
        }
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def load(cls, folder: Path) -> ReferenceSet:
        with np.load(Path(folder) / REFERENCE_FILE, allow_pickle=False) as stored:
            text = {name: np.array(stored[name]) for name in _TEXT_FIELDS}
            return cls(np.array(stored["shap"]), np.array(stored["labels"]), np.array(stored["amount"]), text)

    def case(self, index: int, distance: float) -> dict[str, Any]:
        """One similar case as an update carries it (``schemas/explanation.schema.json``)."""
        pattern = str(self.text["pattern"][index])
        return {
            "transaction_id": str(self.text["transaction_id"][index]),
            "outcome": "fraud" if self.labels[index] else "legitimate",
            "pattern": pattern or None,
            "amount": round(float(self.amount[index]), 2),
            "currency": str(self.text["currency"][index]),
            "channel": str(self.text["channel"][index]),
            "country": str(self.text["country"][index]),
            "card": str(self.text["card"][index]),
            "distance": round(float(distance), 4),
        }


class Neighbours:
    """The reference set and its nearest-neighbour index (built once, read by one thread at a
    time: the worker's compute thread).

    A k-d tree, not a brute-force search: the workers look up each SHAP batch's rows, and their
    batches are small (6 rows on average at 100 tx/s, 8.5 saturated: ``bench.cost``, 2026-12-06
    23:03). scikit-learn's brute-force ``NearestNeighbors`` pays a fixed cost per call: 4.4, 0.63
    and 0.14 ms CPU a row in batches of 1, 8 and 64 on the default model's 20,000 rows, against
    the tree's 0.25, 0.14 and 0.13 ms, for the same neighbours (``make bench``'s ``similar``,
    2026-12-06 23:49). The tree is exact and queries on the calling thread alone (the
    brute force fans out to OpenMP threads, which on two shared cores at nice 10 spent more
    time waiting for each other than searching)."""

    def __init__(self, reference: ReferenceSet) -> None:
        from sklearn.neighbors import KDTree

        self.reference = reference
        self._tree = KDTree(reference.shap.astype(np.float64), leaf_size=40)

    def lookup(self, shap_rows: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        """The ``k`` reference cases nearest each row (SHAP vectors), nearest first."""
        rows = np.asarray(shap_rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.reference.shap.shape[1]:
            raise ValueError(
                f"SHAP rows of shape {rows.shape}, the reference has {self.reference.shap.shape[1]}"
            )
        k = min(k, len(self.reference))
        distances, indices = self._tree.query(rows, k=k)  # sorted, nearest first
        return [
            [self.reference.case(int(i), float(d)) for d, i in zip(row_d, row_i, strict=True)]
            for row_d, row_i in zip(distances, indices, strict=True)
        ]
