"""``fraudlens relay`` and ``fraudlens token create``: the relay role and its access tokens."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING

import click

from app.cli.types import FiniteRange

if TYPE_CHECKING:
    from app.settings import RelaySettings


def run_relay(settings: RelaySettings) -> int:
    from app.relay.server import serve_relay

    return asyncio.run(serve_relay(settings))


@click.command()
@click.option("--host", default=None, envvar="FRAUDLENS_RELAY_HOST", help="Interface [127.0.0.1].")
@click.option("--port", default=None, type=click.IntRange(1, 65535), envvar="FRAUDLENS_RELAY_PORT",
              help="The one port: console at /, websocket at /ws [8765].")  # fmt: skip
def relay(host: str | None, port: int | None) -> None:
    """Run the websocket relay: every verdict and explanation update, pushed to consoles.

    Each instance reads both topics itself from the earliest retained offset (no consumer
    group), so any number can run behind a load balancer. Connections need a token
    (`fraudlens token create`)."""
    from app.settings import RelaySettings

    chosen = {"relay_host": host, "relay_port": port}  # click checked both
    sys.exit(run_relay(RelaySettings().model_copy(update={k: v for k, v in chosen.items() if v is not None})))


@click.group()
def token() -> None:
    """Console access tokens (HMAC-signed, with an expiry)."""


@token.command("create")
@click.option("--ttl", type=FiniteRange(min=1), default=None, envvar="FRAUDLENS_TOKEN_TTL_S",
              help="Lifetime in seconds [8 hours].")  # fmt: skip
@click.option("--subject", default="console", show_default=True, help="Who the token is for (shown in logs).")
@click.option("--url", "as_url", is_flag=True, help="Print the console URL with the token instead.")
def create(ttl: float | None, subject: str, as_url: bool) -> None:
    """Print a new token signed with FRAUDLENS_TOKEN_SECRET (or the data dir's secret file)."""
    from app.settings import get_settings

    settings = get_settings()
    made = make_token(settings, ttl, subject)
    click.echo(console_url(settings, made) if as_url else made)


def make_token(settings: RelaySettings, ttl: float | None = None, subject: str = "console") -> str:
    from app.relay.tokens import create_token, load_or_create_secret

    configured = settings.token_secret.get_secret_value() if settings.token_secret else None
    secret = load_or_create_secret(configured, settings.data_dir)
    return create_token(secret, ttl or settings.token_ttl_s, time.time(), subject)


def console_url(settings: RelaySettings, made: str) -> str:
    base = settings.relay_public_url or f"http://{settings.relay_host}:{settings.relay_port}/"
    return f"{base.rstrip('/')}/?token={made}"


def relay_answers(settings: RelaySettings) -> bool:
    """Whether a relay serves on the configured host and port (its /healthz says ready)."""
    import json
    import urllib.request

    try:
        url = f"http://{settings.relay_host}:{settings.relay_port}/healthz"
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(json.loads(answer.read()).get("ready"))
    except (OSError, ValueError):
        return False
