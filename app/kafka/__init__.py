"""Kafka plumbing every role shares: admin, topics, the producer sink, table stores and their
recovery, outage handling."""
