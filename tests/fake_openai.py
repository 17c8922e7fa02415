"""An OpenAI-compatible chat endpoint on 127.0.0.1 that answers like the
scripted LLM (see fakes.schema_answers; free-text requests get a short
plain answer), slowly, and can be taken down; with `reasoning` set it answers
as a reasoning model does (see `completion`); `/v1/embeddings` answers with
hashed bag-of-words vectors (texts sharing words are near), listed in
reverse order with their `index` as some servers do, as base64 when asked
(`embedding_base64 = False`: numbers, as a server that ignores it); with `capacity` it serves at
most that many requests at once and answers the rest 429 with Retry-After,
as a hosted API over its rate limit does.

It also speaks the Batch API (`/v1/files`, `/v1/batches`): a batch's lines
are answered like chat requests, by a thread, and its output and error
files are JSONL as OpenAI writes them.  Tests steer it: `batch_release`
(clear it to hold every batch in progress), `batch_expire_after` (a batch
expires after that many lines: the rest land in its error file as
`batch_expired`), `batch_fail_every` (every n-th line fails with a 500 the
first time its request is seen).  `batch_keys` holds the cache key of
every request answered in a batch."""

import array
import base64
import email.parser
import email.policy
import http.server
import itertools
import json
import threading
import time
import urllib.parse
import zlib

from fakes import schema_answers

from sftmill.llm.request import ChatRequest, cut_at_stop


def request_key(body: dict) -> str:
    """The sftmill cache key of a chat request body."""
    schema = body["response_format"]["json_schema"]["schema"] if "response_format" in body else None
    return ChatRequest.build(
        body["messages"], schema=schema, temperature=body["temperature"], top_p=body["top_p"],
        max_tokens=body["max_tokens"], seed=body["seed"],
        stop=tuple(body.get("stop") or ())).key(body["model"])


def trace_of(body: dict) -> str:
    """A reasoning model's trace for a request: two paragraphs (a blank line
    between them, as real traces have: a stop sequence "\\n\\n" sent to the
    server would cut it)."""
    asked = body["messages"][-1]["content"].split("Question:")[-1].strip()[:60]
    return (f"The user asks: {asked}. I should check what the background says first."
            "\n\nIt supports a short answer; I will keep to it and cite it.")


def completion(body: dict, reasoning: str | None = None) -> dict:
    """The scripted LLM's answer to a chat request body, as a completion object:
    JSON, or text for the forms it knows.  `reasoning`: answer as a reasoning
    model served with a reasoning parser does ("field": the trace in
    `reasoning_content`) or without one ("think": `<think>…</think>` before
    the answer in `content`); the body's `stop` then cuts the whole output,
    trace included, as a server does."""
    schema = body["response_format"]["json_schema"]["schema"] if "response_format" in body else None
    try:
        answer = schema_answers(ChatRequest.build(body["messages"], schema=schema))
        answer = answer if isinstance(answer, str) else json.dumps(answer)
    except AssertionError:  # other free text (a response, a rewrite, a translation)
        answer = "A plain answer about " + body["messages"][-1]["content"][:80]
    message, usage = {"content": answer}, {"prompt_tokens": 10, "completion_tokens": 5}
    if reasoning:
        trace = trace_of(body)
        thinking = len(trace.split())
        usage = {"prompt_tokens": 10, "completion_tokens": 5 + thinking,
                 "completion_tokens_details": {"reasoning_tokens": thinking}}
        if reasoning == "think":
            message = {"content": cut_at_stop(f"<think>\n{trace}\n</think>\n\n{answer}",
                                              body.get("stop") or ())}
        else:
            message = {"content": cut_at_stop(answer, body.get("stop") or ()),
                       "reasoning_content": trace}
    return {"object": "chat.completion", "choices": [{"message": message}], "usage": usage}


def echo_logprobs(body: dict) -> dict:
    """A legacy completion with `echo` and `logprobs`, as vLLM answers it: the
    prompt's words as tokens, each with a log-probability (−1 for words of
    the domain, −8 for others; none for the first), and their offsets."""
    assert body.get("echo") and body.get("logprobs") is not None
    text = body["prompt"]
    tokens, offsets, logprobs, at = [], [], [], 0
    for word in text.split():
        at = text.index(word, at)
        tokens.append(word)
        offsets.append(at)
        logprobs.append(None if not logprobs else -1.0 if word.strip(".,?").isalpha() else -8.0)
        at += len(word)
    return {"object": "text_completion", "choices": [{"text": text, "logprobs": {
        "tokens": tokens, "token_logprobs": logprobs, "text_offset": offsets}}],
        "usage": {"prompt_tokens": len(tokens), "completion_tokens": 1}}


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
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}  # by id, in order of creation
        self.batch_keys: list[str] = []
        self.batch_release = threading.Event()
        self.batch_release.set()
        self.batch_expire_after: int | None = None
        # /completions: a prompt longer than this is refused with 400, as a server's context is
        self.max_prompt_chars: int | None = None
        self.completion_prompts: list[str] = []
        self.batch_fail_every: int | None = None
        self.reasoning: str | None = None  # "field" | "think": answer as a reasoning model
        self._failed_once: set[str] = set()
        self._ids = itertools.count(1)
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

            def _status(self, code, text=""):
                data = text.encode()
                self.send_response(code)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                parts = url.path.strip("/").split("/")  # v1, batches | files, ...
                if parts[1:2] == ["files"] and parts[3:] == ["content"]:
                    content = server.files.get(parts[2])
                    if content is None:
                        return self._status(404, "no such file")
                    self.send_response(200)
                    self.send_header("content-length", str(len(content)))
                    self.end_headers()
                    self.wfile.write(content)
                elif parts[1:2] == ["batches"] and len(parts) == 3:
                    batch = server.batches.get(parts[2])
                    return self._json(dict(batch)) if batch else self._status(404, "no such batch")
                elif parts[1:2] == ["batches"]:
                    query = urllib.parse.parse_qs(url.query)
                    newest = list(server.batches.values())[::-1]
                    if "after" in query:
                        ids = [b["id"] for b in newest]
                        newest = newest[ids.index(query["after"][0]) + 1:]
                    limit = int(query.get("limit", ["20"])[0])
                    self._json({"object": "list", "data": [dict(b) for b in newest[:limit]],
                                "has_more": len(newest) > limit})
                else:
                    self._json({"data": [{"id": "fake"}]})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["content-length"]))
                if self.path.endswith("/files"):
                    return self._json(server.store_file(self.headers["content-type"], raw))
                body = json.loads(raw)
                if self.path.endswith("/batches"):
                    return self._json(server.create_batch(body))
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
                    elif self.path.endswith("/v1/completions"):
                        server.completion_prompts.append(body["prompt"])
                        too_long = (server.max_prompt_chars is not None
                                    and len(body["prompt"]) > server.max_prompt_chars)
                        if too_long or "UNSCORABLE" in body["prompt"]:
                            self._status(400, "the request exceeds the available context size")
                        else:
                            self._json(echo_logprobs(body))
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
                server.keys.append(request_key(body))
                time.sleep(delay_s)
                self._json(completion(body, server.reasoning))

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    # -- Batch API ---------------------------------------------------------
    def store_file(self, content_type: str, raw: bytes) -> dict:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"content-type: " + content_type.encode() + b"\r\n\r\n" + raw)
        fields = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                  for part in message.iter_parts()}
        assert fields["purpose"].strip() == b"batch", fields.get("purpose")
        return self._new_file(fields["file"], "batch")

    def _new_file(self, content: bytes, purpose: str) -> dict:
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = content
        return {"id": file_id, "object": "file", "bytes": len(content), "purpose": purpose}

    def create_batch(self, body: dict) -> dict:
        assert body["endpoint"] == "/v1/chat/completions" and body["completion_window"]
        batch = {"id": f"batch_{next(self._ids)}", "object": "batch", "endpoint": body["endpoint"],
                 "input_file_id": body["input_file_id"], "status": "validating",
                 "completion_window": body["completion_window"], "created_at": int(time.time()),
                 "output_file_id": None, "error_file_id": None,
                 "request_counts": {"total": 0, "completed": 0, "failed": 0}}
        self.batches[batch["id"]] = batch
        threading.Thread(target=self._run_batch, args=(batch,), daemon=True).start()
        return dict(batch)

    def _run_batch(self, batch: dict) -> None:
        lines = [json.loads(ln) for ln in self.files[batch["input_file_id"]].splitlines() if ln.strip()]
        batch["request_counts"] = {"total": len(lines), "completed": 0, "failed": 0}
        batch["status"] = "in_progress"
        self.batch_release.wait()
        out, errors = [], []
        for n, line in enumerate(lines, 1):
            key = request_key(line["body"])
            row = {"id": f"batch_req_{next(self._ids)}", "custom_id": line["custom_id"]}
            if self.batch_expire_after is not None and n > self.batch_expire_after:
                errors.append({**row, "response": None, "error": {
                    "code": "batch_expired", "message": "This request could not be executed "
                    "before the completion window expired."}})
            elif self.batch_fail_every and n % self.batch_fail_every == 0 and key not in self._failed_once:
                self._failed_once.add(key)
                errors.append({**row, "response": {"status_code": 500, "request_id": row["id"], "body": {
                    "error": {"message": "The server had an error", "type": "server_error"}}},
                               "error": None})
            else:
                with self._lock:
                    self.batch_keys.append(key)
                out.append({**row, "response": {"status_code": 200, "request_id": row["id"],
                                                "body": completion(line["body"], self.reasoning)},
                            "error": None})
        counts = {"total": len(lines), "completed": len(out), "failed": len(errors)}
        expired = self.batch_expire_after is not None and len(lines) > self.batch_expire_after
        files = {}
        for name, rows in (("output_file_id", out), ("error_file_id", errors)):
            if rows:
                content = "".join(json.dumps(r) + "\n" for r in rows).encode()
                files[name] = self._new_file(content, "batch_output")["id"]
        batch.update(files, request_counts=counts, status="expired" if expired else "completed")

    def close(self):
        self.http.shutdown()
        self.http.server_close()
