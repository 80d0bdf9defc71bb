"""The records outsiders send and receive: contracts (JSON schemas), validation, DLQ records, masking."""
