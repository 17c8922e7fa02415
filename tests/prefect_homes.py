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


def start_server(home: Path, *options: str, timeout_s: float = 300,
                 port: int | None = None) -> tuple[subprocess.Popen, str]:
    """`prefect server start` on `port` (default: a free one) with its home
    and log in `home`; the process (its own session: stop it with
    `stop_group`) and its API URL once `/health` answers."""
    import httpx

    port = port or free_port()
    log = (home / "server.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
         str(port), *options],
        env={**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
             "PREFECT_LOGGING_LEVEL": "WARNING"},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()  # the child has its own copy
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited; see {home / 'server.log'}")
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return proc, api
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    stop_group(proc)
    raise RuntimeError(f"prefect server did not answer in {timeout_s:g} s; see {home / 'server.log'}")


def server_url() -> str:
    """This test process's Prefect server for CLI runs (started on first use)."""
    global _SERVER
    if _SERVER is None or _SERVER[0].poll() is not None:
        home = Path(tempfile.mkdtemp(prefix="sftmill-test-prefect-server-"))
        _SERVER = start_server(home, "--no-services", "--no-ui")
        atexit.register(stop_group, _SERVER[0])
    return _SERVER[1]


def served_env(home: Path) -> dict[str, str]:
    """Environment for a CLI subprocess: its own Prefect home (`home`,
    created if missing), reporting to this test process's server."""
    home.mkdir(parents=True, exist_ok=True)
    return {"PREFECT_HOME": str(home), "PREFECT_API_URL": server_url()}
