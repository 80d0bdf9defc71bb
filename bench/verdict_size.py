"""What the verdict's ``replay`` (issue 20) costs: bytes per verdict with and without it, raw and
LZ4-compressed in batches of 200 (the producers' codec), and the scorer's CPU per transaction
(``BatchScorer.score``) with and without it, alternating in one process.

    python -m bench.verdict_size --models DIR [--count 20000] [--seed 23]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import lz4.frame
import orjson

import app.model.batch as batch_module
from app.model.batch import BatchScorer, Incoming
from app.model.generator import generate_transactions
from app.model.predictor import ModelScorer
from app.records.validation import DEFAULT_MAX_BYTES

BATCH = 200


class _Table(dict[bytes, bytes]):
    def get(self, partition: int, key: bytes, /) -> bytes | None:  # type: ignore[override]
        return super().get(key)


def _score(model: ModelScorer, transactions: list[dict[str, Any]], replay: bool) -> tuple[list[bytes], float]:
    """Every verdict, and the CPU seconds of ``score`` per transaction."""
    original = batch_module.build_verdict

    def without(*args: Any, **kwargs: Any) -> dict[str, Any]:
        verdict = original(*args, **kwargs)
        verdict.pop("replay")
        return verdict

    batch_module.build_verdict = original if replay else without  # type: ignore[assignment]
    try:
        predictions, cards = _Table(), _Table()
        scorer = BatchScorer(model, predictions, cards, DEFAULT_MAX_BYTES, time.time)
        values = [orjson.dumps(tx) for tx in transactions]
        verdicts, cpu = [], 0.0
        for start in range(0, len(transactions), BATCH):
            items = [
                Incoming(transactions[i]["card_id"].encode(), values[i], "transactions", 0, i)
                for i in range(start, min(start + BATCH, len(transactions)))
            ]
            began = time.process_time()
            result = scorer.score(items)
            cpu += time.process_time() - began
            predictions.update((txid, value) for _, txid, value in result.predictions)
            cards.update((card, state) for card, (_, state) in result.card_states.items())
            verdicts += [value for _, value in result.verdicts]
        return verdicts, cpu / len(transactions)
    finally:
        batch_module.build_verdict = original  # type: ignore[assignment]


def measure(models: Path, count: int, seed: int, rounds: int = 6) -> dict[str, Any]:
    model = ModelScorer(models)
    transactions = list(generate_transactions(count, seed=seed))
    out: dict[str, Any] = {"model_version": model.version, "transactions": count, "seed": seed}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    for round_ in range(rounds):
        for replay in (True, False) if round_ % 2 == 0 else (False, True):
            verdicts, per_tx = _score(model, transactions, replay)
            cpu[replay].append(per_tx)
            sizes = sorted(len(v) for v in verdicts)
            packed = sum(
                len(lz4.frame.compress(b"".join(verdicts[i : i + BATCH]))) for i in range(0, count, BATCH)
            )
            out["with_replay" if replay else "without_replay"] = {
                "bytes_median": statistics.median(sizes),
                "bytes_p95": sizes[int(0.95 * len(sizes))],
                "lz4_bytes_per_verdict": round(packed / count, 1),
            }
    for replay in (True, False):
        key = "with_replay" if replay else "without_replay"
        out[key]["score_cpu_us_per_tx_median"] = round(1e6 * statistics.median(cpu[replay]), 1)
        out[key]["score_cpu_us_per_tx_runs"] = [round(1e6 * x, 1) for x in cpu[replay]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=23)
    args = parser.parse_args()
    print(json.dumps(measure(args.models, args.count, args.seed), indent=2))


if __name__ == "__main__":
    main()
