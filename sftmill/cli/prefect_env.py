"""Prefect's settings for the command being run, put in the environment when the command line
is imported: Prefect reads its settings from the environment once, when it is itself imported
(which the command modules do), so they must be there before.

Commands that run flows locally show only Prefect's warnings (its INFO logs with --verbose) and
wait up to 180 s for the ephemeral server; every command persists task results (the cache
that lets a rerun skip finished stages).  A variable the user set is never overridden."""

from __future__ import annotations

import os
import sys

# The commands that run flows in this process (their output is sftmill's own progress and summary).
LOCAL_RUNS = {"run", "self-instruct", "evol", "paraphrase", "back-translate", "templates", "curate", "mix"}


def prefect_defaults(argv: list[str]) -> None:
    """Set Prefect's environment defaults for the command named in `argv`."""
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in LOCAL_RUNS:
        return
    verbose = "--verbose" in argv or "-v" in argv
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The ephemeral server migrates a new Prefect home's database before it
    # answers: over Prefect's 20 s default on 2 busy cores.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


prefect_defaults(sys.argv[1:])
