"""Prefect homes for tests that run sftmill in a subprocess: a new home's
database migration costs each first run ~17 s (31.7 s against 14.9 s for a
flow run, seen 2026-12-01), so every such home starts as a copy of one set
up once per test session."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_TEMPLATE: Path | None = None


def warm_home(path: Path) -> Path:
    """`path` as a Prefect home whose database is set up (left as it is when
    it exists: a test's later runs keep their home)."""
    global _TEMPLATE
    if path.exists():
        return path
    if _TEMPLATE is None:
        template = Path(tempfile.mkdtemp(prefix="sftmill-warm-prefect-home-"))
        subprocess.run([sys.executable, "-c", "from prefect import flow; flow(lambda: 1)()"],
                       env={**os.environ, "PREFECT_HOME": str(template)}, check=True,
                       capture_output=True, timeout=600)
        _TEMPLATE = template
        atexit.register(shutil.rmtree, template, ignore_errors=True)  # once per test process
    shutil.copytree(_TEMPLATE, path)
    return path
