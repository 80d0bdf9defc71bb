"""Scenario c: the relay killed under load, and a console-like websocket client that reconnects.

What "no accepted work lost" means for the relay: the relay keeps no state of its own (everything
it serves is rebuilt from ``verdicts`` and ``explanation.updates``), and the only work it accepts is
client connections. So after each SIGKILL and restart, a client that was connected must be able to
end up with exactly what a client that never lost its connection would have: for every transaction
the broker acked, the verdict (the same bytes' content as on the topic) and its final explanation
status (complete, or sampled_out by rule). It reconnects to the same URL and resumes with its last
event id: the new relay run must answer ``gap`` (never a silently partial replay); the client then
asks for a snapshot of the transactions it has no final state for (ids it knows: rows it has, plus,
standing in for a console's paging through ``recent``, the ids the test knows were acked) and
receives the rest live.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.records.masking import with_masked_card
from tests.chaos.faults import LOW_SAMPLE_RATE, Scenario
from tests.integration.harness import RelayProcess, Stack, free_port, start_relay, wait_until

SNAPSHOT_CHUNK = 500  # ids per snapshot request (the protocol allows 1,000)
FINAL_STATES = frozenset({"complete", "failed", "sampled_out"})


def start_relay_on(stack: Stack, port: int) -> RelayProcess:
    """A relay on ``port`` (the same URL across restarts), ready to serve."""
    return start_relay(
        stack, "relay", port, timeout=120, FRAUDLENS_EXPLAIN_LOW_SAMPLE_RATE=LOW_SAMPLE_RATE,
        # this test's client shares a loaded machine with the stack: it must not be dropped as lagging
        FRAUDLENS_RELAY_CLIENT_QUEUE_MAX="200000",
    )  # fmt: skip


@dataclass
class ConsoleClient:
    """Keeps each transaction's verdict and final explanation state, from events and snapshots."""

    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)
    explain: dict[str, str] = field(default_factory=dict)  # the relay's "auto" or "on_demand"
    finals: dict[str, str] = field(default_factory=dict)
    last_event_id: str | None = None
    gaps: int = 0
    snapshots: int = 0
    snapshot_unknown: int = 0
    connections: int = 0
    closes: list[str] = field(default_factory=list)
    ws: ClientConnection | None = None
    acks: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=itertools.count)

    async def connect(self, relay: RelayProcess) -> asyncio.Task[None]:
        self.ws = await connect(f"{relay.ws}?token={relay.token()}", max_size=None)
        hello = orjson.loads(await asyncio.wait_for(self.ws.recv(), 60))
        assert hello["type"] == "hello", hello
        self.connections += 1
        reader = asyncio.create_task(self._read())
        fields = {"last_event_id": self.last_event_id} if self.last_event_id else {}
        before = self.gaps
        await self.request({"type": "subscribe", "subscription": "all", **fields})
        if fields:  # a new relay run: the resume must be refused with a gap
            assert self.gaps == before + 1, f"no gap on resuming {self.last_event_id} at a new relay run"
        return reader

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.ws is not None
        request_id = f"r{next(self.ids)}"
        answer = asyncio.get_running_loop().create_future()
        self.acks[request_id] = answer
        await self.ws.send(orjson.dumps({**message, "id": request_id}).decode())
        return await asyncio.wait_for(answer, 120)

    async def resync(self, wanted: list[str]) -> int:
        """Snapshot (then live) every wanted transaction without a final state here."""
        lacking = [t for t in wanted if t not in self.finals]
        for n in range(0, len(lacking), SNAPSHOT_CHUNK):
            chunk = lacking[n : n + SNAPSHOT_CHUNK]
            ack = await self.request({"type": "subscribe", "subscription": f"resync-{self.connections}-{n}",
                                      "filter": {"transaction_ids": chunk}})  # fmt: skip
            assert ack["type"] == "ack", ack
        return len(lacking)

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for frame in self.ws:
                self._handle(orjson.loads(frame))
        except ConnectionClosed as exc:
            self.closes.append(str(exc))
        else:
            self.closes.append(f"closed: {self.ws.close_code}")

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if "event_id" in message:
            self.last_event_id = message["event_id"]
        if kind == "verdict":
            self._verdict(message["transaction_id"], message["verdict"], message["explain"])
        elif kind == "explanation" and message["status"] in FINAL_STATES:
            self.finals[message["transaction_id"]] = message["status"]
        elif kind == "snapshot":
            self.snapshots += 1
            for state in message["transactions"]:
                self._state(state)
        elif kind == "gap":
            self.gaps += 1
        elif kind in ("ack", "error") and message.get("id") in self.acks:
            self.acks.pop(message["id"]).set_result(message)

    def _verdict(self, txid: str, verdict: dict[str, Any], explain: str | None) -> None:
        self.verdicts[txid] = verdict
        if explain is not None:
            self.explain[txid] = explain
        if explain == "on_demand":
            self.finals.setdefault(txid, "sampled_out")

    def _state(self, state: dict[str, Any]) -> None:
        txid = state["transaction_id"]
        if state["verdict"] is not None:
            self._verdict(txid, state["verdict"], state["explain"])
        if state["status"] in FINAL_STATES:
            self.finals[txid] = state["status"]
        elif state["status"] == "unknown":
            self.snapshot_unknown += 1


def _as_relayed(value: bytes) -> dict[str, Any]:
    """A verdict of the topic as the relay passes it on: card id masked, no ``replay``."""
    verdict = with_masked_card(orjson.loads(value))
    verdict.pop("replay", None)
    return verdict


def client_shortfall(scenario: Scenario, client: ConsoleClient) -> dict[str, list[str]]:
    """What the client lacks against the topics (as the ledger's tap read them), and where the
    relay's word on a verdict's explanation ("auto" or "on_demand") disagrees with the ledger's
    own reading of the rules."""
    tap, ledger = scenario.tap, scenario.ledger
    auto = ledger.auto_explained()
    sent = [t for t in scenario.load.valid_order if t in tap.verdicts]
    return {
        "no verdict": [t for t in sent if t not in client.verdicts],
        # The relay masks the card id (app/records/masking.py) and leaves out the replay.
        "verdict differs from the topic": [
            t for t in sent if t in client.verdicts and client.verdicts[t] != _as_relayed(tap.verdicts[t][0])
        ],
        "no final explanation": [t for t in sent if t in auto and client.finals.get(t) != "complete"],
        "sampled out but not shown so": [
            t for t in sent if t not in auto and client.finals.get(t) != "sampled_out"
        ],
        "explain flag against the rules": [
            t for t in sent if t in client.explain and (client.explain[t] == "auto") != (t in auto)
        ],
    }


async def run_relay_scenario(scenario: Scenario, kills: int) -> None:
    stack, port = scenario.stack, free_port()
    relay = await asyncio.to_thread(start_relay_on, stack, port)
    client = ConsoleClient()
    reader = await client.connect(relay)
    await asyncio.to_thread(scenario.start_load)
    asked = 0
    for _ in range(kills):
        await asyncio.to_thread(scenario.random_traffic)
        scenario.kill(relay.process)
        await asyncio.wait_for(reader, 60)  # the client notices the dead connection
        relay = await asyncio.to_thread(start_relay_on, stack, port)
        reader = await client.connect(relay)
        asked += await client.resync(list(scenario.load.valid_order))
        scenario.note(
            f"relay pid {relay.process.pid} on the same port; client resumed: gap, asked {asked} ids"
        )
    await asyncio.to_thread(scenario.random_traffic)
    scenario.load.finish()
    await asyncio.to_thread(scenario.ledger.settle)

    def caught_up() -> bool:
        return not any(client_shortfall(scenario, client).values())

    try:
        await asyncio.to_thread(
            wait_until, caught_up, 120, "the client to hold every verdict and explanation"
        )
    except AssertionError as exc:
        scenario.note(str(exc))
    shortfall = {k: v for k, v in client_shortfall(scenario, client).items() if v}
    scenario.note(
        f"websocket client: {client.connections} connections, {client.gaps} gaps, "
        f"{client.snapshots} snapshots "
        f"({asked} ids asked, {client.snapshot_unknown} not yet known to the new relay, then live); "
        f"holds {len(client.verdicts)} verdicts, {sum(s == 'complete' for s in client.finals.values())} "
        f"complete, {sum(s == 'sampled_out' for s in client.finals.values())} sampled out; "
        f"lost for the client: {sum(len(v) for v in shortfall.values())}"
    )
    reader.cancel()
    if client.ws is not None:
        await client.ws.close()
    await asyncio.to_thread(scenario.finish)
    assert not shortfall, {k: (len(v), v[:5]) for k, v in shortfall.items()}
