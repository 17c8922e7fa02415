"""What a run hands on: the summary, the dataset card and its plots, the export with
provenance, and the plan (calls, tokens, cost) before a run."""
