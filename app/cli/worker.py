"""``fraudlens worker --role R``: one worker process of a role (the explainer's is a Faust worker)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.settings import ExplainerSettings


def run_worker(role: str) -> None:
    """Run the role; a broker that stays away past the ride-through bound ends it with one line
    and exit 69, for a supervisor (``fraudlens up``, systemd) to restart it."""
    from app.kafka.outage import EX_UNAVAILABLE, BrokerUnreachable

    try:
        _run_role(role)
    except BrokerUnreachable as exc:
        logging.getLogger(__name__).critical("%s: the %s worker stops", exc, role)
        raise SystemExit(EX_UNAVAILABLE) from None


def _run_role(role: str) -> None:
    """Read the role's settings once (its concern's class; the role names this process's state
    dir, ``worker_dir``) and run its composition root with them."""
    from app.settings import ExplainerSettings, RelaySettings, ScorerSettings

    if role == "relay":  # not a Faust worker: its own consumer, no group (app/relay/)
        from app.relay.command import run_relay

        raise SystemExit(run_relay(RelaySettings(role=role)))
    if role == "scorer":  # not a Faust worker: a librdkafka loop (app/scorer/)
        from app import scorer
        from app.kafka.admin import ensure_topics
        from app.runtime.priority import favour_verdict_path

        settings = ScorerSettings(role=role)
        favour_verdict_path("scorer", settings.verdict_path_nice)  # before its threads start
        ensure_topics(settings)  # the app's topics exist with the configured partitions
        raise SystemExit(scorer.run(settings))
    _run_explainer(ExplainerSettings(role=role))


def _run_explainer(settings: ExplainerSettings) -> None:
    """Own consumer group (an explainer joining or dying never rebalances the scorer), lower OS
    priority than the scorer, its topics created with the configured partition count, stores
    ahead of their changelogs rebuilt, then the Faust worker."""
    from faust.worker import Worker

    from app import explainer
    from app.kafka.admin import ensure_topics
    from app.runtime.priority import yield_to_verdict_path

    applied = yield_to_verdict_path(settings.explainer_nice, settings.explainer_sched_idle)
    logging.getLogger(__name__).info("explainer: scheduled at %s, below the verdict path", applied)
    ensure_topics(settings)
    app = explainer.build(settings).app
    settings.worker_dir.mkdir(parents=True, exist_ok=True)
    _rebuild_stores_ahead(app, settings)
    _quiet_reconnect_errors()
    logging.getLogger(__name__).info(
        "starting explainer worker on %s, state in %s", settings.broker, settings.worker_dir
    )
    worker = Worker(
        app, loglevel=logging.getLogger().level or logging.INFO, quiet=True, override_logging=False
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        _exit_clearly("explainer", exc, worker.crash_reason or app.crash_reason)
        raise


def _exit_clearly(role: str, exc: SystemExit, reason: BaseException | None) -> None:
    """A Faust worker that crashed (e.g. its broker connection failed where Faust does not retry)
    ends with one line naming why, and exit 69 for a supervisor to restart it, never 0."""
    from app.kafka.outage import EX_UNAVAILABLE

    if exc.code in (0, None) and reason is None:
        return
    why = repr(reason) if reason is not None else f"exit code {exc.code}"
    logging.getLogger(__name__).critical("the %s worker stopped (%s): exit %d", role, why, EX_UNAVAILABLE)
    raise SystemExit(EX_UNAVAILABLE) from None


def _rebuild_stores_ahead(app: Any, settings: ExplainerSettings) -> None:
    """Stores ahead of their changelogs (a broker that lost acked writes) are deleted before
    Faust opens them, for its recovery to rebuild them (``app.explainer.stores_ahead``)."""
    from app.explainer.stores_ahead import rebuild_faust_stores_ahead
    from app.kafka.admin import client_config

    rebuild_faust_stores_ahead(app, settings.worker_dir, client_config(settings))


def _quiet_reconnect_errors() -> None:
    """aiokafka's per-attempt reconnect errors, collapsed (``app.kafka.outage.RepeatedClientErrors``)."""
    from app.kafka.outage import RepeatedClientErrors

    repeats = RepeatedClientErrors()
    for handler in logging.getLogger().handlers:
        handler.addFilter(repeats)
