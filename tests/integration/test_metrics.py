"""The scorer's Prometheus endpoint: refused without a valid token, the named series with one."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import orjson
from prometheus_client.parser import text_string_to_metric_families

from app.model.generator import generate_transactions
from app.records.malformed import malformed_cases
from app.relay.tokens import create_token, load_or_create_secret
from tests.integration.harness import Stack, free_port, wait_until


def get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def total(url: str, token: str, series: str) -> float:
    """Sum of a series over its labels, 0 while the endpoint is not up or refuses."""
    try:
        status, text = get(url, token)
    except OSError:  # not listening yet
        return 0
    got = samples(text) if status == 200 else {}
    return sum(v for (name, _), v in got.items() if name == series)


def prometheus_token(stack: Stack) -> str:
    """A token signed with the secret the stack's workers use (the data dir's secret file)."""
    return create_token(load_or_create_secret(None, stack.root / "data"), 60, time.time(), "prometheus")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_scorer_metrics_need_a_token_and_count_what_happened(stack: Stack) -> None:
    port = free_port()
    stack.start_worker("scorer", FRAUDLENS_METRICS_PORT=str(port))
    stack.produce_transactions(generate_transactions(20, seed=81))
    bad = malformed_cases(2, seed=81)
    stack.produce([(f"card-bad-{i}".encode(), case.value) for i, case in enumerate(bad)])
    url = f"http://127.0.0.1:{port}/metrics"
    token = prometheus_token(stack)
    secret = load_or_create_secret(None, stack.root / "data")

    def counted() -> bool:
        verdicts = total(url, token, "fraudlens_verdicts_total")
        return verdicts == 20 and total(url, token, "fraudlens_dlq_records_total") == 2

    wait_until(counted, 120, "20 verdicts and 2 DLQ records in the metrics")
    dlq = stack.reader("transactions.dlq").read_until(lambda m: len(m) >= 2, 60, "the 2 DLQ records")
    assert sorted(orjson.loads(m.value())["reason_code"] for m in dlq) == sorted(c.code for c in bad)
    _, text = get(url, token)
    got = samples(text)
    assert got[("fraudlens_verdict_latency_seconds_count", ())] == 20
    assert any(name == "fraudlens_model_info" and value == 1 for (name, _), value in got.items())
    assert sum(v for (name, _), v in got.items() if name == "fraudlens_scorer_batch_size_count") >= 1
    assert get(url)[0] == 401
    assert get(url, "not-a-token")[0] == 401
    other = create_token(b"x" * 32, 60, time.time())  # signed with another secret
    assert get(url, other)[0] == 401
    expired = create_token(secret, 1, time.time() - 10)
    assert get(url, expired)[0] == 401
    assert get(f"http://127.0.0.1:{port}/table/predictions", token)[0] == 404


def test_relay_metrics_count_clients(stack: Stack) -> None:
    import asyncio

    from websockets.asyncio.client import connect

    from tests.integration.harness import start_relay

    port = free_port()
    relay = start_relay(stack, FRAUDLENS_METRICS_PORT=str(port))
    url = f"http://127.0.0.1:{port}/metrics"
    token = relay.token()
    assert get(url)[0] == 401

    def clients() -> float:
        status, text = get(url, token)
        assert status == 200
        return samples(text)[("fraudlens_relay_clients", ())]

    async def connected_then_gone() -> tuple[float, float]:
        async with connect(f"{relay.ws}?token={token}") as ws:
            await ws.recv()  # hello: the relay has registered the client
            during = await asyncio.to_thread(clients)
        await asyncio.to_thread(wait_until, lambda: clients() == 0, 30, "the client to be forgotten")
        return during, clients()

    during, after = asyncio.run(connected_then_gone())
    assert (during, after) == (1, 0)
    assert ("fraudlens_relay_records_total", ()) in samples(get(url, token)[1])


def test_explainer_metrics_count_explanations_gaps_and_cache(stack: Stack) -> None:
    port = free_port()
    stack.start_worker("scorer")
    stack.start_worker("explainer", FRAUDLENS_METRICS_PORT=str(port))
    stack.produce_transactions(generate_transactions(60, seed=83))
    url = f"http://127.0.0.1:{port}/metrics"
    token = prometheus_token(stack)

    def finished() -> float:
        return total(url, token, "fraudlens_explanations_total")

    wait_until(lambda: finished() == 60, 180, "60 explanations in the metrics")
    got = samples(get(url, token)[1])
    gaps = sum(v for (name, _), v in got.items() if name == "fraudlens_explanation_gap_seconds_count")
    lookups = sum(v for (name, _), v in got.items() if name == "fraudlens_explanation_cache_total")
    depths = {
        dict(labels)["priority"]
        for (name, labels), _ in got.items()
        if name == "fraudlens_explain_queue_depth"
    }
    assert gaps == 60 and lookups == 60 and depths == {"high", "normal", "low"}
    assert get(url)[0] == 401
