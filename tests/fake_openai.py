"""An OpenAI-compatible chat endpoint on 127.0.0.1 that answers like the
scripted LLM (see fakes.schema_answers; free-text requests get a short
plain answer), slowly, and can be taken down; `/v1/embeddings` answers with
hashed bag-of-words vectors (texts sharing words are near), listed in
reverse order with their `index` as some servers do, as base64 when asked
(`embedding_base64 = False`: numbers, as a server that ignores it); with `capacity` it serves at
most that many requests at once and answers the rest 429 with Retry-After,
as a hosted API over its rate limit does."""

import array
import base64
import http.server
import json
import threading
import time
import zlib

from fakes import schema_answers
from sftmill.llm import ChatRequest


def bag_of_words(text: str, dim: int = 64) -> list[float]:
    vector = [0.0] * dim
    for word in text.lower().split():
        vector[zlib.crc32(word.strip(".,;:?!").encode()) % dim] += 1.0
    return vector  # not normalised: the client must do it


class FakeOpenAI:
    """An OpenAI-compatible chat endpoint answering like the scripted LLM, slowly."""

    def __init__(self, delay_s: float = 0.2, down_after: int | None = None,
                 capacity: int | None = None, retry_after: str = "0.05"):
        self.requests = 0
        self.refused = 0  # 429s sent
        self.in_service = self.peak = 0
        self.log: list[str] = []  # "ok" / "429" per request, in order of arrival
        self._lock = threading.Lock()
        self.keys: list[str] = []  # the sftmill cache key of every request answered
        self.embedded: list[list[str]] = []  # the texts of every embeddings request answered
        self.embedding_base64 = True
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
                with server._lock:
                    over = capacity is not None and server.in_service >= capacity
                    server.log.append("429" if over else "ok")
                    if over:
                        server.refused += 1
                    else:
                        server.in_service += 1
                        server.peak = max(server.peak, server.in_service)
                if over:
                    self.send_response(429)
                    self.send_header("Retry-After", retry_after)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                try:
                    if self.path.endswith("/embeddings"):
                        self._embed(body)
                    else:
                        self._answer(body)
                finally:
                    with server._lock:
                        server.in_service -= 1

            def _embed(self, body):
                server.requests += 1
                server.embedded.append(list(body["input"]))
                time.sleep(delay_s / 4)
                packed = server.embedding_base64 and body.get("encoding_format") == "base64"
                data = [{"index": i, "embedding": (base64.b64encode(array.array(
                            "f", bag_of_words(t)).tobytes()).decode() if packed else bag_of_words(t))}
                        for i, t in enumerate(body["input"])]
                self._json({"data": data[::-1], "usage": {"prompt_tokens": 7}})

            def _answer(self, body):
                server.requests += 1
                schema = body["response_format"]["json_schema"]["schema"] if "response_format" in body else None
                server.keys.append(ChatRequest.build(
                    body["messages"], schema=schema, temperature=body["temperature"],
                    top_p=body["top_p"], max_tokens=body["max_tokens"], seed=body["seed"],
                    stop=tuple(body.get("stop") or ())).key(body["model"]))
                time.sleep(delay_s)
                try:  # the scripted LLM's answer: JSON, or text for the forms it knows
                    answer = schema_answers(ChatRequest.build(body["messages"], schema=schema))
                    answer = answer if isinstance(answer, str) else json.dumps(answer)
                except AssertionError:  # other free text (a response, a rewrite, a translation)
                    answer = "A plain answer about " + body["messages"][-1]["content"][:80]
                self._json({"choices": [{"message": {"content": answer}}],
                            "usage": {"prompt_tokens": 10, "completion_tokens": 5}})

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self):
        self.http.shutdown()
        self.http.server_close()
