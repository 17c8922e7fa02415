"""Curation of any dataset: the checks (one module each), curate (scores, then decisions),
mix, preference pairs."""
