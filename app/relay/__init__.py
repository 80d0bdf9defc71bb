"""The relay role: a websocket server that pushes verdicts and explanation updates to consoles.

Every relay instance reads every verdict and every explanation update itself (no consumer
group), keeps a bounded in-memory picture of recent transactions and a replay buffer, and
serves the support console's static files on the same port (``/``; websocket at ``/ws``).
Pure parts: ``tokens`` (HMAC tokens), ``protocol`` (messages, filters, event ids),
``state`` (transactions, replay, stats), ``outbox`` (per-client queue policy).
"""
