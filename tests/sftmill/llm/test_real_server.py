"""The HTTP backend against a real OpenAI-compatible server on 127.0.0.1:
llama.cpp's own server (llama-server, from the xllamacpp wheel) with the same
GGUF in another process, behind a small proxy that can answer 503 or be down
for a moment."""

import http.server
import subprocess
import sys
import threading
import time

import httpx
import pytest
from conftest import free_port

from sftmill.core.endpoints import LLMEndpoint
from sftmill.core.store import Store
from sftmill.llm.embedded import resolve_gguf
from sftmill.llm.openai_http import OpenAIChatLLM, check_reachable
from sftmill.llm.request import ChatRequest

pytestmark = pytest.mark.real_model

SCHEMA = {"type": "object",
          "properties": {"answer": {"type": "string", "minLength": 1}, "count": {"type": "integer"}},
          "required": ["answer", "count"], "additionalProperties": False}


SERVE = """
import sys, threading, xllamacpp
params = xllamacpp.CommonParams()
params.model.path, params.hostnames, params.port = sys.argv[1], ["127.0.0.1"], int(sys.argv[2])
params.n_ctx, params.model_alias, params.verbosity = 2048, {"smollm2"}, 0
server = xllamacpp.Server(params)
threading.Event().wait()
"""


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    port = free_port()
    log = (tmp_path_factory.mktemp("llama-server") / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(resolve_gguf("smollm2-135m")), str(port)],
        stdout=log, stderr=subprocess.STDOUT)  # a pipe would fill up and stall the server
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"llama-server exited with {proc.returncode}; log in {log.name}")
        time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("llama-server did not start within 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


class FlakyProxy:
    """Forwards to the real server; answers 503 to the first `fail_first`
    chat requests.  Counts the chat requests that reached the real server."""

    def __init__(self, upstream: str, port: int, fail_first: int = 0):
        self.upstream, self.port, self.fail_first = upstream, port, fail_first
        self.seen = 0
        self.forwarded = 0
        self.server = None

    def start(self):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self, method):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path.endswith("/chat/completions"):
                    proxy.seen += 1
                    if proxy.seen <= proxy.fail_first:
                        self.send_response(503)
                        self.send_header("Retry-After", "0")
                        self.send_header("content-length", "0")
                        self.end_headers()
                        return
                    proxy.forwarded += 1
                upstream = httpx.request(method, proxy.upstream + self.path, content=body,
                                         headers={"content-type": "application/json"}, timeout=120)
                self.send_response(upstream.status_code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

            def do_POST(self):
                self._forward("POST")

            def do_GET(self):
                self._forward("GET")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()


def endpoint(port: int) -> LLMEndpoint:
    return LLMEndpoint(backend="openai", base_url=f"http://127.0.0.1:{port}/v1", model="smollm2",
                       temperature=0.2, max_tokens=60,
                       max_retries=6, timeout_s=60)


def request(text="How many quark flavours are there?"):
    return ChatRequest.build([{"role": "user", "content": text}], schema=SCHEMA, max_tokens=60,
                             temperature=0.2)


def test_retry_after_503_then_identical_call_served_from_cache(llama_server, tmp_path):
    port = free_port()
    proxy = FlakyProxy(llama_server, port, fail_first=2).start()
    try:
        store = Store.open(tmp_path / "run.duckdb")
        llm = OpenAIChatLLM(endpoint(port), store)
        llm.client.backoff_base_s = 0.05
        first = llm.chat(request())
        assert set(first.data) == {"answer", "count"}
        assert (proxy.seen, proxy.forwarded) == (3, 1)
        second = OpenAIChatLLM(endpoint(port), store).chat(request())
        assert second.cached and second.data == first.data
        assert proxy.forwarded == 1  # the identical call never reached the server
        assert store.execute("SELECT attempts FROM llm_calls WHERE status = 'ok'") == [(3,)]
    finally:
        proxy.stop()


def test_retry_while_server_is_briefly_down(llama_server, tmp_path):
    port = free_port()
    proxy = FlakyProxy(llama_server, port)
    timer = threading.Timer(0.6, proxy.start)  # nothing listens for the first 0.6 s
    timer.start()
    try:
        llm = OpenAIChatLLM(endpoint(port), Store.open(tmp_path / "run.duckdb"))
        llm.client.backoff_base_s = 0.2
        result = llm.chat(request("Name one gluon property."))
        assert set(result.data) == {"answer", "count"}
        assert proxy.forwarded == 1
    finally:
        timer.join()
        proxy.stop()


def test_reachability_check(llama_server):
    assert check_reachable(endpoint(int(llama_server.rsplit(":", 1)[1]))) is None
    assert "cannot reach" in check_reachable(endpoint(free_port()))
