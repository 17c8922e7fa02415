"""An OpenAI-compatible chat endpoint on 127.0.0.1 that answers like the
scripted LLM (see fakes.schema_answers; free-text requests get a short
plain answer), slowly, and can be taken down."""

import http.server
import json
import threading
import time

from fakes import schema_answers
from sftmill.llm import ChatRequest


class FakeOpenAI:
    """An OpenAI-compatible chat endpoint answering like the scripted LLM, slowly."""

    def __init__(self, delay_s: float = 0.2, down_after: int | None = None):
        self.requests = 0
        self.down_after = down_after  # answer 503 from this many requests on
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, payload):
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._json({"data": [{"id": "fake"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if server.down_after is not None and server.requests >= server.down_after:
                    self.send_response(503)
                    self.send_header("Retry-After", "0")
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                server.requests += 1
                time.sleep(delay_s)
                if "response_format" in body:
                    schema = body["response_format"]["json_schema"]["schema"]
                    request = ChatRequest.build(body["messages"], schema=schema)
                    answer = json.dumps(schema_answers(request))
                else:  # free text (a response, a rewrite, a translation)
                    answer = "A plain answer about " + body["messages"][-1]["content"][:80]
                self._json({"choices": [{"message": {"content": answer}}],
                            "usage": {"prompt_tokens": 10, "completion_tokens": 5}})

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self):
        self.http.shutdown()
        self.http.server_close()
