"""A stage's requests through an OpenAI-compatible Batch API (`batch: true`):
hosted providers answer them at about half the online price, within a
completion window instead of seconds.

How a stage goes through it (`OpenAIChatLLM.chat_chunks`):

1. The requests not in the call cache become a JSONL input file (one line per
   request, `custom_id` = the call's cache key), uploaded to `/files` and
   recorded in `llm_batches` *before* the batch is created; then `POST
   /batches`, and the batch ID is recorded.  A kill at any point leaves a row
   to resume from.
2. The stage's batches are polled together, the wait growing 1.5× per poll
   (from `batch_poll_s`, at most 60 s), until each is completed, expired,
   failed or cancelled.
3. A batch's output file gives the answers; its error file, and requests in
   neither file (an expired batch's unfinished lines), are failed lines.  A
   new batch takes them — at most `MAX_ROUNDS` batches per request — unless
   they are fewer than `batch_min`: those, and the rest after the last round,
   are sent online.
4. The answers then go through the ordinary path (`LLM._send`): structured
   validation (an invalid answer is re-prompted online), the journal, the
   cache — a stage's records are the ones the online path gives, and a call
   answered through a batch is recorded with backend `openai-batch` and
   priced at the batch rate.

A run started again adopts the batches of its earlier start that hold
requests still unanswered: a created batch is polled again (a completed one
just has its output read again — downloads cost nothing), and an uploaded
file whose batch ID was never recorded is looked up among the server's
batches by its input file, or given its batch now.  No request is submitted
twice while a batch holding it may still answer.
"""

from __future__ import annotations

import asyncio
import datetime
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from sftmill.core.ids import content_id
from sftmill.core.progress import run_logger
from sftmill.llm.base import LLM
from sftmill.llm.errors import LLMOutputError, LLMUnavailableError
from sftmill.llm.request import ChatRequest, RawCompletion, completion_of
from sftmill.llm.transport import Upload

CHAT_PATH = "/v1/chat/completions"
TERMINAL = ("completed", "expired", "failed", "cancelled")
DEAD = ("expired", "failed", "cancelled")  # what such a batch did not answer, it never will
MAX_REQUESTS = 50_000  # per batch (OpenAI's limit)
MAX_ROUNDS = 3  # batches one request may be put in before it goes online
POLL_GROWTH = 1.5
POLL_CAP_S = 60.0
FIND_PAGES = 20  # `GET /batches` pages (of 100) searched for an unrecorded batch


def read_results(text: str) -> tuple[dict[str, RawCompletion], dict[str, str]]:
    """The lines of an output or error file: (answers, problems) by custom_id."""
    answers: dict[str, RawCompletion] = {}
    problems: dict[str, str] = {}
    for line in text.splitlines():
        try:
            row = orjson.loads(line)
            key = row["custom_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue  # a line that names no request cannot answer one
        response = row.get("response") or {}
        body = response.get("body") or {}
        if response.get("status_code") == 200 and not row.get("error"):
            try:
                answers[key] = completion_of(body, latency_s=0.0, batch=True)
            except LLMOutputError as err:
                problems[key] = str(err)
            continue
        error = row.get("error") or (body.get("error") if isinstance(body, dict) else None) or {}
        problems[key] = (f"{error.get('code') or response.get('status_code') or 'error'}: "
                         f"{error.get('message') or ''}")[:300]
    return answers, problems


@dataclass
class Job:
    """One batch of the stage: its input file, its requests' keys, its state."""

    input_file_id: str
    keys: list[str]
    batch_id: str | None = None
    status: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # the server's last batch object


class BatchAPI:
    """The Files and Batches calls, through the endpoint's `ServerClient`
    (its key, retries and backoff)."""

    def __init__(self, llm: LLM):
        self.client = llm.client
        self.window = llm.endpoint.batch_completion_window

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        sent = await self.client.send(method, path, **kwargs)
        try:
            return sent.reply.json()
        except ValueError as err:
            raise LLMUnavailableError(f"{path}: the answer is not JSON ({err})") from None

    async def upload(self, name: str, content: bytes) -> str:
        file = await self._json("POST", "/files", upload=Upload(name, content, {"purpose": "batch"}))
        return file["id"]

    async def create(self, input_file_id: str) -> dict[str, Any]:
        return await self._json("POST", "/batches", body={
            "input_file_id": input_file_id, "endpoint": CHAT_PATH,
            "completion_window": self.window, "metadata": {"created_by": "sftmill"}})

    async def get(self, batch_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/batches/{batch_id}")

    async def find(self, input_file_id: str) -> dict[str, Any] | None:
        """The batch created from `input_file_id`, among the most recent ones."""
        after = None
        for _ in range(FIND_PAGES):
            page = await self._json("GET", "/batches?limit=100" + (f"&after={after}" if after else ""))
            data = page.get("data") or []
            for batch in data:
                if batch.get("input_file_id") == input_file_id:
                    return batch
            if not page.get("has_more") or not data:
                return None
            after = data[-1]["id"]
        return None

    async def content(self, file_id: str) -> str:
        return (await self.client.send("GET", f"/files/{file_id}/content")).reply.text


class BatchRunner:
    """Answers a stage's requests through batches (module docstring)."""

    def __init__(self, llm: LLM, api: BatchAPI | None = None):
        self.llm = llm
        self.store = llm.store
        self.api = api or BatchAPI(llm)
        self.base_url = llm.endpoint.base_urls[0]
        self.log = run_logger()

    async def answer(self, todo: dict[str, ChatRequest]) -> dict[str, RawCompletion]:
        """Answers by cache key for as many of `todo` as the batches give;
        the others are left to the online path."""
        stage = next(iter(todo.values())).stage or "LLM"
        endpoint = self.llm.endpoint
        answered: dict[str, RawCompletion] = {}
        rounds: Counter[str] = Counter()
        jobs = self._adopt(todo)
        for job in jobs:
            rounds.update(job.keys)
        held = {k for job in jobs for k in job.keys}
        left = [k for k in todo if k not in held]
        while True:
            if left and len(left) >= endpoint.batch_min:
                for i in range(0, len(left), MAX_REQUESTS):
                    piece = left[i:i + MAX_REQUESTS]
                    jobs.append(await self._submit(stage, {k: todo[k] for k in piece}))
                    rounds.update(piece)
                left = []
            if not jobs:
                break
            await self._wait(stage, jobs)
            for job in jobs:
                got, problems = await self._collect(job)
                wanted = [k for k in job.keys if k in todo and k not in answered]
                answered.update((k, got[k]) for k in wanted if k in got)
                failed = [k for k in wanted if k not in got]
                self._report(stage, job, len(wanted) - len(failed), failed, problems)
                left += [k for k in failed if rounds[k] < MAX_ROUNDS and k not in left]
            left = [k for k in left if k not in answered]
            jobs = []
        online = len(todo) - len(answered)
        if online:
            self.log.info("%s: %d requests go online (failed in batches, or too few for one)",
                          stage, online)
        return answered

    # -- steps ------------------------------------------------------------
    def _adopt(self, todo: dict[str, ChatRequest]) -> list[Job]:
        """Batches of an earlier start that hold requests of `todo` and may
        still answer them (not expired, failed or cancelled)."""
        rows = self.store.query_dicts(
            "SELECT input_file_id, batch_id, keys, status FROM llm_batches "
            "WHERE base_url = ? AND model = ? AND coalesce(status, '') NOT IN "
            "('expired', 'failed', 'cancelled') AND list_has_any(keys, ?::VARCHAR[]) "
            "ORDER BY created_at", [self.base_url, self.llm.model, list(todo)])
        jobs = [Job(r["input_file_id"], list(r["keys"]), r["batch_id"], None) for r in rows]
        if jobs:
            self.log.info("resuming %d batches of an earlier start: %s", len(jobs),
                          ", ".join(j.batch_id or f"(file {j.input_file_id})" for j in jobs))
        return jobs

    async def _submit(self, stage: str, requests: dict[str, ChatRequest]) -> Job:
        lines = b"".join(orjson.dumps({"custom_id": key, "method": "POST", "url": CHAT_PATH,
                                       "body": self.llm._body(request)}) + b"\n"
                         for key, request in requests.items())
        name = f"sftmill-{stage}-{content_id(*requests)[:12]}.jsonl"
        file_id = await self.api.upload(name, lines)
        self.store.insert("llm_batches", [{
            "input_file_id": file_id, "base_url": self.base_url, "model": self.llm.model,
            "stage": stage, "keys": list(requests), "updated_at": now()}])
        job = Job(file_id, list(requests))
        await self._start(job)
        self.log.info("%s: batch %s submitted, %d requests", stage, job.batch_id, len(job.keys))
        return job

    async def _start(self, job: Job) -> None:
        """Create the batch of an uploaded file — unless the server already
        has one (a start killed before it recorded the ID)."""
        info = await self.api.find(job.input_file_id) if job.batch_id is None else None
        if info is None:
            try:
                info = await self.api.create(job.input_file_id)
            except LLMOutputError as err:  # the server refused the file: its lines failed
                info = {"id": None, "status": "failed", "errors": {"data": [{"message": str(err)}]}}
        self._update(job, info)

    async def _wait(self, stage: str, jobs: list[Job]) -> None:
        delay = self.llm.endpoint.batch_poll_s
        while True:
            for job in jobs:
                if job.batch_id is None and job.status is None:
                    await self._start(job)
                elif job.status not in TERMINAL:
                    self._update(job, await self.api.get(job.batch_id))
            pending = [j for j in jobs if j.status not in TERMINAL]
            if not pending:
                return
            counts = [j.info.get("request_counts") or {} for j in jobs]
            self.log.info("%s: %d of %d batches running, %d/%d requests done; next look in %.0f s",
                          stage, len(pending), len(jobs), sum(c.get("completed") or 0 for c in counts),
                          sum(len(j.keys) for j in jobs), delay)
            await asyncio.sleep(delay)
            delay = min(max(POLL_CAP_S, self.llm.endpoint.batch_poll_s), delay * POLL_GROWTH)

    async def _collect(self, job: Job) -> tuple[dict[str, RawCompletion], dict[str, str]]:
        answers: dict[str, RawCompletion] = {}
        problems: dict[str, str] = {}
        for file_id in (job.info.get("output_file_id"), job.info.get("error_file_id")):
            if file_id:
                got, failed = read_results(await self.api.content(file_id))
                answers.update(got)
                problems.update(failed)
        return answers, problems

    def _update(self, job: Job, info: dict[str, Any]) -> None:
        job.info, job.status = info, info.get("status")
        job.batch_id = job.batch_id or info.get("id")
        counts = info.get("request_counts") or {}
        self.store.execute(
            "UPDATE llm_batches SET batch_id = ?, status = ?, n_completed = ?, n_failed = ?, "
            "updated_at = ? WHERE input_file_id = ?",
            [job.batch_id, job.status, counts.get("completed"), counts.get("failed"), now(),
             job.input_file_id])

    def _report(self, stage: str, job: Job, n_answered: int, failed: list[str],
                problems: dict[str, str]) -> None:
        if not failed:
            self.log.info("%s: batch %s %s, %d answers", stage, job.batch_id, job.status, n_answered)
            return
        why = Counter(problems.get(k, "no answer in the batch's files").split(":", 1)[0]
                      for k in failed)
        errors = (job.info.get("errors") or {}).get("data") or []
        self.log.warning("%s: batch %s %s, %d answers, %d failed lines (%s)%s", stage, job.batch_id,
                         job.status, n_answered, len(failed),
                         ", ".join(f"{n} {reason}" for reason, n in why.most_common(3)),
                         f": {errors[0].get('message')}" if errors else "")


def now() -> datetime.datetime:
    return datetime.datetime.now()
