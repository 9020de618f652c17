"""magnusd: the magnus tracking daemon — journal, run logs and tracker fan-out."""
