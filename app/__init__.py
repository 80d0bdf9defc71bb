"""fraudlens: streaming card-fraud scoring."""
