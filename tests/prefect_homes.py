"""Prefect for tests that run sftmill's CLI in a subprocess: one Prefect
server per test process (`prefect server start --no-services`, started on
first use) instead of the temporary server each CLI process would start and
stop (~9 s of import and start-up per run, and a new home's database
migration, ~17 s, on its first).  Each test keeps its own PREFECT_HOME, so
its Prefect cache (results under the home) is its own.

Prefect's ephemeral mode itself, as `sftmill run` uses it with no server,
stays covered by the in-process flow tests, `test_cli`'s init-and-run test
and the README's example run."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conftest import free_port, stop_group

_SERVER: tuple[subprocess.Popen, str] | None = None


def server_url() -> str:
    """This test process's Prefect server (started on first use)."""
    global _SERVER
    if _SERVER is not None and _SERVER[0].poll() is None:
        return _SERVER[1]
    import httpx

    home = Path(tempfile.mkdtemp(prefix="sftmill-test-prefect-server-"))
    port = free_port()
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
         str(port), "--no-services", "--no-ui"],
        env={**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
             "PREFECT_LOGGING_LEVEL": "WARNING"},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    atexit.register(stop_group, proc)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited; see {home / 'server.log'}")
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                _SERVER = (proc, api)
                return api
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"prefect server did not answer in 300 s; see {home / 'server.log'}")


def served_env(home: Path) -> dict[str, str]:
    """Environment for a CLI subprocess: its own Prefect home (`home`,
    created if missing), reporting to this test process's server."""
    home.mkdir(parents=True, exist_ok=True)
    return {"PREFECT_HOME": str(home), "PREFECT_API_URL": server_url()}
