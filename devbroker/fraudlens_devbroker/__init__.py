"""fraudlens's development broker: noida-db behind a Kafka-protocol shim, plus retention.

Its own package (``devbroker/`` in the fraudlens repository, distribution ``fraudlens-devbroker``),
installed for development and tests, never in the production image. fraudlens starts it as a
process (``fraudlens broker`` execs ``python -m fraudlens_devbroker``) and never imports it; the
broker uses fraudlens's process plumbing and topic creation (``app.runtime.lifetime``,
``app.kafka.admin.create_missing``) rather than copies (DESIGN-NOTES: the development broker as
its own package).
"""
