"""The explainer role: a Faust app whose agents route verdicts and compute explanations.

``build(settings)`` is its composition root: the Faust app, the topics its agents read, its two
tables, the in-process work queue, the in-order acks of the router's events, and the agents and
the compute task registered on the app, in that order, from the settings it is given. Nothing
is created at import: ``router``, ``workers`` and the other modules only define.

- ``router``: the agent over ``verdicts`` and ``explain.requests`` (dedup, priority, pending rows,
  requests handed over or published on ``explain.<priority>``);
- ``workers``: one agent per ``explain.<priority>`` topic feeding the ``WorkQueue``, and the
  compute task taking batches from it (aged first, then high, normal, low);
- ``explanation_tables``: the ``explanations`` and ``explanation_waiting`` Faust tables;
- ``table_io``: table writes through a librdkafka sink under each row's own event;
- ``acks``, ``skips``: in-order acks, rate-limited skip logging;
- ``faust_patches``: every use of Faust's private API (patches, ``micro_batches``, ``focus``);
- ``stores_ahead``: local stores ahead of their changelogs, rebuilt before the worker starts;
- ``faust_app``: the Faust app and its topics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import faust

    from app.explainer.acks import InOrderAcks
    from app.explainer.explanation_tables import ExplanationTables
    from app.explainer.workers import HandOver, WorkQueue
    from app.settings import ExplainerSettings

PRIORITIES = ("high", "normal", "low")


@dataclass(frozen=True)
class ExplainerParts:
    """What ``build`` made; the router and the compute task share it."""

    settings: ExplainerSettings
    app: faust.App
    tables: ExplanationTables
    queue: WorkQueue  # the scheduler between the agents and the compute task
    acks: InOrderAcks  # the router's events, acked in offset order per partition
    hand_over: HandOver  # the router's requests straight into ``queue``


def build(settings: ExplainerSettings) -> ExplainerParts:
    """The explainer's Faust app with its tables, agents and compute task registered."""
    from app.explainer.acks import InOrderAcks
    from app.explainer.explanation_tables import ExplanationTables
    from app.explainer.faust_app import create_app, declare_topics
    from app.explainer.router import router_agent
    from app.explainer.workers import Explaining, HandOver, WorkQueue, feeder

    app = create_app(settings)
    topics = declare_topics(app)
    queue = WorkQueue(settings.explain_aging_s, settings.explain_queue_max, settings.explain_aged_share)
    parts = ExplainerParts(
        settings=settings,
        app=app,
        tables=ExplanationTables(app, settings),
        queue=queue,
        acks=InOrderAcks(lambda: app.consumer_generation_id),
        hand_over=HandOver(queue, settings.explain_fast_path, settings.explain_handover_max),
    )
    app.agent(topics.routing, name="explainer.route", concurrency=1)(router_agent(parts))
    for priority in PRIORITIES:
        feed = feeder(queue, priority)
        app.agent(topics.explain[priority], name=f"explainer.explain_{priority}", concurrency=1)(feed)

    async def explain_work() -> None:
        await Explaining(parts).run()

    app.task(explain_work)
    return parts
