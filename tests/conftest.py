"""Test set-up shared by the whole suite.

PREFECT_HOME points at a temporary folder before Prefect is imported, and
flow tests share one `prefect_test_harness` per session (it takes ~12 s).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

_PREFECT_HOME = tempfile.mkdtemp(prefix="sftmill-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # as the CLI
os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SFTMILL_TASK_RETRY_DELAYS", "0,0")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def api_run(prefect_harness, tmp_path_factory):
    """A finished run folder made through the Python API (`sftmill.run`)
    against the local OpenAI-compatible test server: conversations, drops,
    citations; the license and language of its card set in the recipe."""
    from examples import example_recipe
    from fake_openai import FakeOpenAI

    import sftmill

    tmp = tmp_path_factory.mktemp("handoff")
    server = FakeOpenAI(delay_s=0.0)
    try:
        endpoint = {"backend": "openai", "base_url": server.url, "model": "fake"}
        recipe = example_recipe(tmp, llm={"generator": endpoint, "judge": endpoint},
                                search={"backend": "none"}, sizes={"target_prompts": 60},
                                conversations={"share": 0.5, "turns": [2, 2]},
                                export={"license": "cc-by-4.0", "language": ["en"]})
        made = sftmill.run(recipe, target_prompts=40)
    finally:
        server.close()
    assert made == tmp / "run"
    return made


BUCKET = "sftmill-test"


def stop_group(proc, grace_s: float = 10.0) -> None:
    """Stop a process started with `start_new_session=True` and its children:
    SIGTERM, then SIGKILL after `grace_s` (Prefect 3.8's `prefect worker
    start` forwards SIGTERM as SIGINT and was seen still running 60 s later,
    with nothing left for it to do)."""
    import signal
    import subprocess

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A full `prefect server start` per test module (services on: they
    record task runs); its API URL."""
    from prefect_homes import start_server

    proc, api = start_server(tmp_path_factory.mktemp("prefect-server-home"), timeout_s=240)
    yield api
    stop_group(proc)


# Perplexities from the embedded model need llama-cpp-python (the `fluency` extra).
needs_fluency_extra = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="embedded perplexities need llama-cpp-python: pip install -e '.[fluency]'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_env():
    """An S3 server on 127.0.0.1 and the environment that points fsspec (s3fs) at it."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec

    fsspec.filesystem("s3").mkdir(BUCKET)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture(autouse=True)
def _close_stores():
    yield
    from sftmill.core.store import Store

    Store.close_all()


# The suite runs on 2 processes (pytest-xdist, a file at a time each); the
# slowest files go first so that none of them starts last and runs alone
# (by their longest calls, slowest first).
SLOW_FIRST = ["test_sharded_pool.py", "test_self_instruct_flow.py", "test_batch_run.py",
              "test_budget.py", "test_label_studio_gate.py", "test_curate_cli.py",
              "test_server_retry.py", "test_server_restart.py", "test_kill_resume.py",
              "test_prompt_flow.py", "test_answer_flow.py", "test_remote.py", "test_dask_runner.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: files stay whole


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)
