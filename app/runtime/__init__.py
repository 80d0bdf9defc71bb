"""Process plumbing shared by the roles: metrics, OS priority, parent death, restarts, log redaction."""
