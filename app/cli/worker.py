"""``fraudlens worker --role R``: one worker process of a role (the explainer's is a Faust worker)."""

from __future__ import annotations

import importlib
import logging
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.settings import Settings

ROLE_MODULES = {
    "explainer": ("app.agents.routing", "app.agents.explaining"),
}


def _prepare_explainer() -> None:
    """Own consumer group (an explainer joining or dying never rebalances the scorer), lower OS
    priority than the scorer, and its topics created with the configured partition count."""
    from app.admin import ensure_topics
    from app.priority import yield_to_verdict_path
    from app.settings import Settings, get_settings

    wanted = Settings()
    os.environ["FRAUDLENS_APP_ID"] = wanted.explainer_group
    get_settings.cache_clear()
    applied = yield_to_verdict_path(wanted.explainer_nice, wanted.explainer_sched_idle)
    logging.getLogger(__name__).info("explainer: scheduled at %s, below the verdict path", applied)
    ensure_topics(get_settings())


def run_worker(role: str) -> None:
    """Run the role; a broker that stays away past the ride-through bound ends it with one line
    and exit 69, for a supervisor (``fraudlens up``, systemd) to restart it."""
    from app.outage import EX_UNAVAILABLE, BrokerUnreachable

    try:
        _run_role(role)
    except BrokerUnreachable as exc:
        logging.getLogger(__name__).critical("%s: the %s worker stops", exc, role)
        raise SystemExit(EX_UNAVAILABLE) from None


def _run_role(role: str) -> None:
    # The role names this process's state dir; it must be known before settings are read.
    os.environ["FRAUDLENS_ROLE"] = role
    if role == "relay":  # not a Faust worker: its own consumer, no group (app/relay/)
        from app.relay.cli import run_relay

        raise SystemExit(run_relay())
    if role == "scorer":  # not a Faust worker: a librdkafka loop (app/agents/scoring.py)
        from app.admin import ensure_topics
        from app.agents.scoring import run_scorer
        from app.priority import favour_verdict_path
        from app.settings import get_settings as settings_now

        favour_verdict_path("scorer", settings_now().verdict_path_nice)  # before its threads start
        ensure_topics(settings_now())  # the app's topics exist with the configured partitions
        raise SystemExit(run_scorer())
    _prepare_explainer()
    from faust.worker import Worker

    from app.app import app
    from app.settings import get_settings

    for module in ROLE_MODULES[role]:
        importlib.import_module(module)  # agents and tables register on import
    settings = get_settings()
    settings.worker_dir.mkdir(parents=True, exist_ok=True)
    _rebuild_stores_ahead(app, settings)
    _quiet_reconnect_errors()
    logging.getLogger(__name__).info(
        "starting %s worker on %s, state in %s", role, settings.broker, settings.worker_dir
    )
    worker = Worker(
        app, loglevel=logging.getLogger().level or logging.INFO, quiet=True, override_logging=False
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        _exit_clearly(role, exc, worker.crash_reason or app.crash_reason)
        raise


def _exit_clearly(role: str, exc: SystemExit, reason: BaseException | None) -> None:
    """A Faust worker that crashed (e.g. its broker connection failed where Faust does not retry)
    ends with one line naming why, and exit 69 for a supervisor to restart it, never 0."""
    from app.outage import EX_UNAVAILABLE

    if exc.code in (0, None) and reason is None:
        return
    why = repr(reason) if reason is not None else f"exit code {exc.code}"
    logging.getLogger(__name__).critical("the %s worker stopped (%s): exit %d", role, why, EX_UNAVAILABLE)
    raise SystemExit(EX_UNAVAILABLE) from None


def _rebuild_stores_ahead(app: Any, settings: Settings) -> None:
    """Stores ahead of their changelogs (a broker that lost acked writes) are deleted before
    Faust opens them, for its recovery to rebuild them (``app.tables.stores_ahead``)."""
    from app.admin import client_config
    from app.tables.stores_ahead import rebuild_faust_stores_ahead

    rebuild_faust_stores_ahead(app, settings.worker_dir, client_config(settings))


def _quiet_reconnect_errors() -> None:
    """aiokafka's per-attempt reconnect errors, collapsed (``app.outage.RepeatedClientErrors``)."""
    from app.outage import RepeatedClientErrors

    repeats = RepeatedClientErrors()
    for handler in logging.getLogger().handlers:
        handler.addFilter(repeats)
