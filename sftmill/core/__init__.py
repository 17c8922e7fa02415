"""The bottom layer: recipe models and loading, the run store (DuckDB), content IDs, progress,
run folders on object storage.  Imports nothing else of sftmill."""
