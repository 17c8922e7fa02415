"""The Batch API path (`batch: true`) against the local server in
tests/fake_openai.py, which implements /v1/files and /v1/batches: answers
equal to the online path's, failed and expired lines resubmitted (few of
them online), a start killed around submission resumed without paying
twice, and the batch price in the budget."""

from collections import Counter

import pytest
from fake_openai import FakeOpenAI

from sftmill.core.endpoints import LLMEndpoint
from sftmill.core.store import Store
from sftmill.llm.backends import make_llm
from sftmill.llm.batch_api import BatchAPI, BatchRunner
from sftmill.llm.request import ChatRequest

SCHEMA = {"type": "object", "properties": {"score": {"type": "integer"}, "reason": {"type": "string"}},
          "required": ["score", "reason"]}


def requests(n=30):
    return [ChatRequest.build([{"role": "user", "content": f"Judge passage {i} about quarks"}],
                              schema=SCHEMA, temperature=0.0, stage="relevance") for i in range(n)]


def llm_for(server, path, **settings):
    batch = {"batch": True, "batch_poll_s": 0.05, "batch_min": 5} | settings
    endpoint = LLMEndpoint(backend="openai", base_url=server.url, model="fake",
                           **(batch if batch["batch"] else {}))
    return make_llm(endpoint, Store.open(path))


def answered_once(server, keys):
    """Every key answered exactly once, in a batch or online."""
    counts = Counter(server.batch_keys + server.keys)
    return set(counts) == set(keys) and all(n == 1 for n in counts.values())


@pytest.fixture
def server():
    fake = FakeOpenAI(delay_s=0.0)
    yield fake
    fake.close()


def test_a_batch_answers_like_the_online_path_and_is_recorded(server, tmp_path):
    online = llm_for(server, tmp_path / "online.duckdb", batch=False).chat_many(requests())
    sent_online = len(server.keys)
    batched_llm = llm_for(server, tmp_path / "batch.duckdb")
    batched = batched_llm.chat_many(requests())
    assert [r.data for r in batched] == [r.data for r in online]
    assert len(server.keys) == sent_online  # nothing of the batch run went online
    assert len(server.batches) == 1 and len(server.batch_keys) == 30
    store = batched_llm.store
    assert store.execute("SELECT DISTINCT backend FROM llm_calls") == [("openai-batch",)]
    (batch_id, status, keys), = store.execute("SELECT batch_id, status, keys FROM llm_batches")
    assert batch_id in server.batches and status == "completed"
    assert sorted(keys) == sorted(r.key("fake") for r in requests())
    # Answered from the cache the second time: no new batch.
    assert [r.data for r in batched_llm.chat_many(requests())] == [r.data for r in online]
    assert len(server.batches) == 1


def test_failed_lines_go_into_a_new_batch(server, tmp_path):
    server.batch_fail_every = 3  # 10 of 30 lines fail once
    results = llm_for(server, tmp_path / "run.duckdb").chat_many(requests())
    assert all(r.data["score"] == 5 for r in results)
    assert len(server.batches) == 2 and server.keys == []
    second = list(server.batches.values())[1]
    assert second["request_counts"]["total"] == 10
    assert answered_once(server, [r.key("fake") for r in requests()])


def test_a_few_failed_lines_go_online(server, tmp_path):
    server.batch_fail_every = 3
    results = llm_for(server, tmp_path / "run.duckdb", batch_min=20).chat_many(requests())
    assert all(r.data["score"] == 5 for r in results)
    assert len(server.batches) == 1 and len(server.keys) == 10
    assert answered_once(server, [r.key("fake") for r in requests()])


def test_an_expired_batch_keeps_its_answers_and_the_rest_is_resubmitted(server, tmp_path):
    server.batch_expire_after = 12  # every batch answers 12 lines, then expires
    llm = llm_for(server, tmp_path / "run.duckdb")
    results = llm.chat_many(requests())
    assert all(r.data["score"] == 5 for r in results)
    assert [b["request_counts"]["total"] for b in server.batches.values()] == [30, 18, 6]
    assert answered_once(server, [r.key("fake") for r in requests()])
    assert [s for s, in llm.store.execute("SELECT status FROM llm_batches ORDER BY created_at")] == [
        "expired", "expired", "completed"]


def test_too_few_requests_for_a_batch_go_online(server, tmp_path):
    llm_for(server, tmp_path / "run.duckdb", batch_min=50).chat_many(requests())
    assert server.batches == {} and len(server.keys) == 30


class Killed(BaseException):
    """Stands for the process dying at this point."""


def test_a_start_killed_after_the_upload_creates_the_batch_once_on_resume(server, tmp_path,
                                                                           monkeypatch):
    def die(self, input_file_id):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(BatchAPI, "create", die)
        with pytest.raises(Killed):
            llm_for(server, tmp_path / "run.duckdb").chat_many(requests())
    assert len(server.files) == 1 and server.batches == {}
    results = llm_for(server, tmp_path / "run.duckdb").chat_many(requests())
    assert all(r.data["score"] == 5 for r in results)
    assert len(server.files) == 1 + 1  # its input file, then the output file: no second upload
    assert len(server.batches) == 1
    assert answered_once(server, [r.key("fake") for r in requests()])


def test_a_start_killed_before_recording_the_batch_id_finds_it_on_resume(server, tmp_path,
                                                                          monkeypatch):
    server.batch_release.clear()  # the batch stays in progress
    real_update = BatchRunner._update

    def die_once(self, job, info):
        if info.get("id") and job.batch_id is None:
            raise Killed  # created on the server, its ID not yet in the store
        real_update(self, job, info)

    with monkeypatch.context() as patch:
        patch.setattr(BatchRunner, "_update", die_once)
        with pytest.raises(Killed):
            llm_for(server, tmp_path / "run.duckdb").chat_many(requests())
    assert len(server.batches) == 1
    server.batch_release.set()
    results = llm_for(server, tmp_path / "run.duckdb").chat_many(requests())
    assert all(r.data["score"] == 5 for r in results)
    assert len(server.batches) == 1  # found by its input file, not created again
    assert answered_once(server, [r.key("fake") for r in requests()])


def test_batch_calls_are_priced_at_the_batch_rate():
    from sftmill.core.sections import Price

    price = Price(input=2.0, output=8.0, batch_input=1.0, batch_output=4.0)
    assert price.cost(1e6, 1e6) == 10.0
    assert price.cost(1e6, 1e6, batch=True) == 5.0
    assert Price(input=2.0, output=8.0).cost(1e6, 1e6, batch=True) == 10.0  # no batch price given


def test_batch_needs_one_openai_server():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs backend 'openai'"):
        LLMEndpoint(batch=True)
    with pytest.raises(ValidationError, match="needs one base_url"):
        LLMEndpoint(backend="openai", base_url=["http://a/v1", "http://b/v1"], batch=True)


def test_a_batch_that_could_pass_the_budget_or_the_disk_is_never_submitted(server, tmp_path, monkeypatch):
    """The whole stage is checked before a batch is paid for: the run's
    token budget, then the room on the run folder's disk."""
    import json

    import sftmill.core.files as files
    from sftmill.llm.budget import BudgetExceeded
    from sftmill.llm.errors import DiskSpaceShort

    llm = llm_for(server, tmp_path / "run.duckdb")
    llm.store.set_meta("budget", json.dumps({"max_cost": None, "max_tokens": 100, "prices": {}}))
    with pytest.raises(BudgetExceeded, match=r"before 30 more relevance calls"):
        llm.chat_many(requests())
    llm.store.execute("DELETE FROM meta WHERE key = 'budget'")
    monkeypatch.setattr(files, "free_bytes", lambda path: 2**20)
    with pytest.raises(DiskSpaceShort, match=r"^disk space: .* has 1\.0 MB free; the next 30 relevance calls"):
        llm.chat_many(requests())
    assert server.batches == {} and server.keys == []
