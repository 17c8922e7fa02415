"""The `sftmill` command line: one module per command group, all on one Typer app."""

from __future__ import annotations

import sys

# isort: off
# First, before anything imports Prefect: its settings come from the environment at that moment.
from sftmill.cli import prefect_env  # noqa: F401
from sftmill.cli.common import app, console

# The command groups register their commands on `app` as they are imported, in this order in --help.
from sftmill.cli import run, serve, generators, datasets, view  # noqa: F401
# isort: on


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted: finished stages and LLM calls are kept in the run database")
        sys.exit(130)


if __name__ == "__main__":
    main()
