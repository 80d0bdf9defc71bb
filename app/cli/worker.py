"""``fraudlens worker --role R``: one worker process of a role (the explainer's is a Faust worker)."""

from __future__ import annotations

import importlib
import logging
import os

ROLE_MODULES = {
    "explainer": ("app.agents.routing", "app.agents.explaining"),
}


def _prepare_explainer() -> None:
    """Own consumer group (an explainer joining or dying never rebalances the scorer), lower OS
    priority than the scorer, and its topics created with the configured partition count."""
    from app.admin import ensure_topics
    from app.settings import Settings, get_settings

    wanted = Settings()
    os.environ["FRAUDLENS_APP_ID"] = wanted.explainer_group
    get_settings.cache_clear()
    os.nice(wanted.explainer_nice)
    ensure_topics(get_settings())


def run_worker(role: str) -> None:
    # The role names this process's state dir; it must be known before settings are read.
    os.environ["FRAUDLENS_ROLE"] = role
    if role == "relay":  # not a Faust worker: its own consumer, no group (app/relay/)
        from app.relay.cli import run_relay

        raise SystemExit(run_relay())
    if role == "scorer":  # not a Faust worker: a librdkafka loop (app/agents/scoring.py)
        from app.admin import ensure_topics
        from app.agents.scoring import run_scorer
        from app.settings import get_settings as settings_now

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
    logging.getLogger(__name__).info(
        "starting %s worker on %s, state in %s", role, settings.broker, settings.worker_dir
    )
    worker = Worker(
        app, loglevel=logging.getLogger().level or logging.INFO, quiet=True, override_logging=False
    )
    worker.execute_from_commandline()
