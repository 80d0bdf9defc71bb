"""The metrics endpoint under hostile requests: only a valid token gets data; nothing gets a 5xx."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.relay.tokens import create_token
from app.runtime.metrics import metrics_app

SECRET = b"s" * 32


async def _request(method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    async with TestClient(TestServer(metrics_app(SECRET))) as client:
        response = await client.request(method, path, headers=headers, allow_redirects=False)
        return response.status, await response.read()


def request(method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    return asyncio.run(_request(method, path, headers or {}))


def test_valid_token_as_header_or_query_gets_metrics() -> None:
    token = create_token(SECRET, 60, time.time())
    status, body = request("GET", "/metrics", {"Authorization": f"Bearer {token}"})
    assert status == 200 and b"# HELP fraudlens_verdicts_total" in body
    assert request("GET", f"/metrics?token={token}")[0] == 200


def test_refusals() -> None:
    assert request("GET", "/metrics")[0] == 401
    assert request("POST", "/metrics")[0] == 405
    assert request("GET", "/table/predictions")[0] == 404
    assert request("GET", "/metrics", {"Authorization": "Basic dXNlcjpwYXNz"})[0] == 401


header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=2000)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]),
    path=st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=300).map(
        lambda p: "/" + p.lstrip("/")  # '//x' would make the test client treat it as a host
    ),
    authorization=header_text,
    token=header_text,
    query_token=st.text(max_size=300),
)
def test_no_request_gets_data_without_a_valid_token_or_crashes(
    method: str, path: str, authorization: str, token: str, query_token: str
) -> None:
    headers: dict[str, Any] = {"Authorization": authorization}
    status, _ = request(method, path.split("#")[0], headers)
    assert status < 500 and status != 200, (method, path, status)
    assert request("GET", "/metrics", {"Authorization": f"Bearer {token}"})[0] == 401
    assert request("GET", f"/metrics?token={quote(query_token)}")[0] == 401
