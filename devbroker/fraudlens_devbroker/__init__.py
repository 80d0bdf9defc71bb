"""fraudlens's development broker: noida-db behind a Kafka-protocol shim, plus retention.

Its own package (``devbroker/`` in the fraudlens repository, distribution ``fraudlens-devbroker``),
installed for development and tests, never in the production image. fraudlens starts it as a
process (``fraudlens broker`` execs ``python -m fraudlens_devbroker``) and never imports it; it
imports nothing of fraudlens either (DESIGN-NOTES: the development broker as its own package).
"""
