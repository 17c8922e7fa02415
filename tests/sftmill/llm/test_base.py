import asyncio

import orjson
import pytest
from fakes import ScriptedLLM, down, user_text

from sftmill.core.store import Store
from sftmill.llm.errors import LLMOutputError, LLMUnavailableError
from sftmill.llm.request import ChatRequest, parse_structured

SCHEMA = {"type": "object", "properties": {"score": {"type": "integer"}},
          "required": ["score"], "additionalProperties": False}


def req(text: str, **kw) -> ChatRequest:
    return ChatRequest.build([{"role": "user", "content": text}], schema=SCHEMA, **kw)


def test_success_is_cached_and_never_sent_twice(tmp_path):
    store = Store.open(tmp_path / "run.duckdb")
    llm = ScriptedLLM(lambda r: {"score": 3}, store)
    first = llm.chat(req("a"))
    second = ScriptedLLM(lambda r: pytest.fail("must not be sent"), store).chat(req("a"))
    assert first.data == second.data == {"score": 3}
    assert (first.cached, second.cached) == (False, True)
    assert store.execute("SELECT status FROM llm_calls") == [("ok",)]  # a hit adds no row
    assert store.execute("SELECT stage, hits FROM llm_cache_hits") == [("", 1)]


def test_a_batch_looks_up_its_keys_once_and_counts_hits(tmp_path, monkeypatch):
    store = Store.open(tmp_path / "run.duckdb")
    ScriptedLLM(lambda r: {"score": 1}, store).chat_many([req(f"q{i}", stage="s") for i in range(3)])
    lookups = []
    original = store.query_dicts
    monkeypatch.setattr(store, "query_dicts", lambda sql, params=None: (
        lookups.append(sql), original(sql, params))[1])
    llm = ScriptedLLM(lambda r: {"score": 2}, store)
    results = llm.chat_many([req(f"q{i}", stage="s") for i in range(5)])
    assert len(lookups) == 1 and "llm_calls" in lookups[0]
    assert [r.cached for r in results] == [True, True, True, False, False]
    assert len(llm.requests) == 2
    assert store.scalar("SELECT count(*) FROM llm_calls WHERE status = 'ok'") == 5
    assert store.scalar("SELECT hits FROM llm_cache_hits WHERE stage = 's'") == 3


def test_journal_of_a_killed_process_is_replayed_and_not_paid_again(tmp_path):
    from sftmill.llm.journal import CallJournal

    store = Store.open(tmp_path / "run.duckdb")
    llm = ScriptedLLM(lambda r: {"score": 4}, store)
    import asyncio

    asyncio.run(llm.achat(req("done before the kill")))  # journaled, not merged
    journal = CallJournal.for_store(store)
    assert store.scalar("SELECT count(*) FROM llm_calls") == 0
    with open(journal.path, "a") as f:
        f.write('{"call_id": "torn", "key"')  # the kill tore the last line
    CallJournal.forget()  # a new process: nothing of the old one in memory

    again = ScriptedLLM(lambda r: pytest.fail("must not be sent again"), store)
    assert again.chat(req("done before the kill")).cached
    assert store.scalar("SELECT count(*) FROM llm_calls WHERE status = 'ok'") == 1
    assert not journal.path.exists() and not journal.moving.exists()


def test_a_kill_mid_merge_is_replayed_without_counting_a_call_twice(tmp_path):
    """Killed after the swapped file's insert committed but before it was
    deleted: the next start inserts it again, and nothing is doubled."""
    from sftmill.llm.journal import CallJournal

    store = Store.open(tmp_path / "run.duckdb")
    llm = ScriptedLLM(lambda r: {"score": 4}, store)
    llm.chat_many([req("a"), req("b")])  # merged
    journal = CallJournal.for_store(store)
    lines = [orjson.dumps(r) + b"\n" for r in store.query_dicts("SELECT * FROM llm_calls")]
    journal.moving.write_bytes(b"".join(lines))  # as if the kill came before the unlink
    asyncio.run(llm.achat(req("c")))  # one more call, journaled only
    CallJournal.forget()

    again = ScriptedLLM(lambda r: pytest.fail("must not be sent again"), store)
    assert all(r.cached for r in again.chat_many([req("a"), req("b"), req("c")]))
    assert store.scalar("SELECT count(*) FROM llm_calls") == 3
    assert not journal.moving.exists()


def test_calls_merge_while_a_batch_waits_and_stay_cached_meanwhile(tmp_path, monkeypatch):
    """The waiting thread merges every few seconds; a call being merged is
    still found by a lookup, and each call lands in llm_calls once."""
    import threading

    from sftmill.llm import loop
    from sftmill.llm.journal import CallJournal

    monkeypatch.setattr(loop, "MERGE_EVERY_S", 0.05)
    store = Store.open(tmp_path / "run.duckdb")
    merges, seen = [], []
    original = CallJournal.merge

    def watched(self):
        merges.append(threading.current_thread().name)
        seen.append(sorted(self.unmerged([req(str(i)).key("scripted") for i in range(40)])))
        return original(self)

    monkeypatch.setattr(CallJournal, "merge", watched)

    class Slow(ScriptedLLM):
        async def _raw_complete(self, request):
            await asyncio.sleep(0.01)
            return await super()._raw_complete(request)

    llm = Slow(lambda r: {"score": 4}, store)
    llm.max_concurrency = 2
    llm.chat_many([req(str(i)) for i in range(40)])
    assert merges.count(threading.current_thread().name) >= 3  # merged while waiting
    assert store.scalar("SELECT count(*) FROM llm_calls") == 40
    assert store.scalar("SELECT count(DISTINCT key) FROM llm_calls") == 40
    assert any(0 < len(keys) < 40 for keys in seen)  # part of the batch was in memory


def test_calls_in_the_journal_answer_the_cache_before_the_merge(tmp_path):
    import asyncio

    store = Store.open(tmp_path / "run.duckdb")
    llm = ScriptedLLM(lambda r: {"score": 4}, store)

    async def twice():
        first = await llm.achat(req("a"))
        return first, await llm.achat(req("a"))

    first, second = asyncio.run(twice())
    assert (first.cached, second.cached) == (False, True) and len(llm.requests) == 1


def test_key_covers_sampling_parameters_and_seed():
    base = req("a")
    assert base.key("m") != req("a", temperature=0.1).key("m")
    assert base.key("m") != req("a", seed=1).key("m")
    assert base.key("m") != base.key("other-model")
    assert base.key("m") == req("a", stage="another stage").key("m")


def test_broken_json_is_repaired_without_a_second_call():
    llm = ScriptedLLM(lambda r: '{"score": 4,')
    assert llm.chat(req("a")).data == {"score": 4}
    assert len(llm.requests) == 1


def test_invalid_answer_is_reprompted_once_then_accepted():
    answers = iter([{"score": "high"}, {"score": 5}])
    llm = ScriptedLLM(lambda r: next(answers))
    assert llm.chat(req("a")).data == {"score": 5}
    assert len(llm.requests) == 2
    assert "not valid" in llm.requests[1].messages[-1][1]


def test_answer_invalid_twice_is_a_record_error(tmp_path):
    store = Store.open(tmp_path / "run.duckdb")
    llm = ScriptedLLM(lambda r: "no json here at all", store)
    with pytest.raises(LLMOutputError):
        llm.chat(req("a"))
    assert store.execute("SELECT status FROM llm_calls") == [("error",)]


def test_batch_keeps_going_past_bad_records():
    llm = ScriptedLLM(lambda r: {"score": 1} if "good" in r.messages[0][1] else "nonsense")
    results = llm.chat_many([req("good 1"), req("bad"), req("good 2")])
    assert [type(r).__name__ for r in results] == ["ChatResult", "LLMOutputError", "ChatResult"]


def test_unavailable_endpoint_fails_the_batch_after_caching_the_successes(tmp_path):
    store = Store.open(tmp_path / "run.duckdb")

    def flaky(r):
        if "3" in r.messages[0][1]:
            return down(r)
        return {"score": 1}

    llm = ScriptedLLM(flaky, store)
    llm.max_concurrency = 1
    with pytest.raises(LLMUnavailableError):
        llm.chat_many([req(f"item {i}") for i in range(6)])
    sent_before = len(llm.requests)
    ok_before = store.scalar("SELECT count(*) FROM llm_calls WHERE status = 'ok'")
    assert ok_before == 3  # items 0-2 succeeded, item 3 failed, 4-5 were not sent

    retry = ScriptedLLM(lambda r: {"score": 1}, store)
    retry.chat_many([req(f"item {i}") for i in range(6)])
    assert len(retry.requests) == 3  # only items 3, 4, 5 are sent again
    assert sent_before == 4


def test_a_full_disk_stops_the_sending_and_the_rerun_pays_only_for_the_rest(tmp_path, monkeypatch):
    """The journal's write fails (ENOSPC) from the 6th finished call on:
    nothing more is sent than the calls already in flight, the batch fails
    with a one-line reason, and the five written calls are not paid again."""
    import errno

    from sftmill.llm.errors import CallNotRecorded
    from sftmill.llm.journal import CallJournal

    store = Store.open(tmp_path / "run.duckdb")
    written = []
    append = CallJournal.append

    def filling(self, row):
        if len(written) >= 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        append(self, row)
        written.append(row["key"])

    monkeypatch.setattr(CallJournal, "append", filling)
    llm = ScriptedLLM(lambda r: {"score": 1}, store)  # 4 in flight at most
    with pytest.raises(CallNotRecorded, match=r"could not write a finished call to .*calls\.jsonl "
                       r"\(No space left on device\); no more calls are sent"):
        llm.chat_many([req(f"item {i}") for i in range(40)])
    assert len(llm.requests) <= 5 + 1 + llm.max_concurrency  # the written, the failed, those in flight
    monkeypatch.setattr(CallJournal, "append", append)  # space again
    retry = ScriptedLLM(lambda r: {"score": 1}, store)
    retry.chat_many([req(f"item {i}") for i in range(40)])
    assert len(retry.requests) == 35
    assert store.scalar("SELECT count(*) FROM llm_calls WHERE status = 'ok'") == 40


def test_a_chunk_whose_worst_case_cannot_fit_on_the_disk_is_not_sent(tmp_path, monkeypatch):
    """Before each chunk, its uncached calls at their longest answers (and
    the chunks still in flight) must fit on the run folder's disk: the
    second chunk finds too little room and stops the batch in one sentence,
    the first chunk's calls are kept; with room again only the second is
    sent, and a chunk answered from the cache needs no room at all."""
    import sftmill.core.files as files
    from sftmill.llm.base import DISK_RESERVE
    from sftmill.llm.errors import DiskSpaceShort

    free = {"bytes": 10 * 2**30}
    monkeypatch.setattr(files, "free_bytes", lambda path: free["bytes"])
    store = Store.open(tmp_path / "run.duckdb")

    def chunks():
        yield [req(f"item {i}") for i in range(3)]
        free["bytes"] = DISK_RESERVE + 1000  # the first chunk filled the disk
        yield [req(f"item {i}") for i in range(3, 6)]

    llm = ScriptedLLM(lambda r: {"score": 1}, store)
    with pytest.raises(DiskSpaceShort, match=r"^disk space: .* has 8\.0 MB free; the next 3 LLM "
                       r"calls(?: \(with calls in flight\))? could need 8\.\d MB\. Finished work is kept"):
        llm.chat_chunks(chunks())
    assert len(llm.requests) == 3
    assert store.scalar("SELECT count(*) FROM llm_calls WHERE status = 'ok'") == 3

    free["bytes"] = 10 * 2**30
    retry = ScriptedLLM(lambda r: {"score": 1}, store)
    retry.chat_many([req(f"item {i}") for i in range(6)])
    assert len(retry.requests) == 3
    free["bytes"] = 0
    again = ScriptedLLM(lambda r: {"score": 1}, store)
    assert len(again.chat_many([req(f"item {i}") for i in range(6)])) == 6
    assert again.requests == []


def test_a_failing_hook_at_close_leaves_one_warning_not_a_traceback(tmp_path, caplog):
    Store.open(tmp_path / "run.duckdb")

    def full():
        raise OSError(28, "No space left on device")

    Store.before_close_all(full)
    try:
        Store.close_all()
    finally:
        Store._before_close_all.remove(full)
    assert any("No space left on device" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("text", ["", "   ", "[]", "null"])
def test_parse_structured_rejects_empty_answers(text):
    with pytest.raises(ValueError):
        parse_structured(text, SCHEMA)


def test_chunks_are_sent_while_the_next_ones_are_built(tmp_path):
    """`chat_chunks`: the first chunk is in flight before the generator
    builds the second; results and `on_result` indices follow the input order."""
    import threading

    store = Store.open(tmp_path / "run.duckdb")
    first_sent = threading.Event()

    class Watching(ScriptedLLM):
        async def _raw_complete(self, request):
            first_sent.set()
            await asyncio.sleep(0.01)
            return await super()._raw_complete(request)

    llm = Watching(lambda r: {"score": int(r.messages[-1][1].split()[1]) % 5 + 1}, store)
    built_after_first_sent = []

    def chunks():
        yield [req(f"item {i}") for i in range(3)]
        built_after_first_sent.append(first_sent.wait(timeout=10))
        yield [req(f"item {i}") for i in range(3, 5)]

    seen = {}
    results = llm.chat_chunks(chunks(), on_result=lambda i, r: seen.setdefault(i, r.data["score"]))
    assert built_after_first_sent == [True]
    assert [r.data["score"] for r in results] == [i % 5 + 1 for i in range(5)]
    assert seen == {i: i % 5 + 1 for i in range(5)}
    assert store.scalar("SELECT count(*) FROM llm_calls") == 5  # merged by the waiting thread


def test_a_batch_in_flight_keeps_the_heap_before_it_out_of_the_collectors_walk():
    """A full collection holds the interpreter lock while the LLM loop waits
    for it: while calls are in flight it walks only what the batch allocated.
    A batch started beside another (the answer stage's judge) keeps that so;
    the heap goes back when the last one ends."""
    import gc
    import threading

    before = [[] for _ in range(3)]  # long-lived rows of an earlier stage
    walked = []

    def walk(label):
        walked.append((label, any(o is before for o in gc.get_objects())))
        return {"score": 1}

    inner_done = threading.Event()

    class Outer(ScriptedLLM):
        async def _raw_complete(self, request):
            if user_text(request) == "outer":  # a second batch starts beside it and ends first
                threading.Thread(target=lambda: (ScriptedLLM(lambda r: walk("inner")).chat_many(
                    [req("inner")]), inner_done.set())).start()
                await asyncio.get_running_loop().run_in_executor(None, inner_done.wait, 10)
            return await super()._raw_complete(request)

    assert gc.get_freeze_count() == 0
    Outer(lambda r: walk("outer")).chat_many([req("outer")])
    assert inner_done.is_set() and [label for label, _seen in walked] == ["inner", "outer"]
    assert not any(seen for _label, seen in walked)
    assert gc.get_freeze_count() == 0 and any(o is before for o in gc.get_objects())


def test_request_keys_are_content_ids_of_their_parts_byte_for_byte():
    """`ChatRequest.key` builds its JSON by hand for speed: it must hash the
    same bytes as `content_id`, or every cached call would be sent again."""
    import json
    import random

    from sftmill.core.ids import content_id

    # orjson and the json module write every string alike (one code point at a time)
    for cp in range(0x110000):
        if not 0xD800 <= cp <= 0xDFFF:
            assert orjson.dumps(chr(cp)) == json.dumps(chr(cp), ensure_ascii=False).encode(), hex(cp)
    rng = random.Random(3)
    alphabet = 'ab "\\\n\t\x00\x1f\x7f/é€😀\u2028<>&'
    schema = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}},
              "required": ["a", "b"]}
    for n in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        request = ChatRequest(
            messages=tuple((rng.choice(["system", "user", "assistant"]), text[i:])
                           for i in range(rng.randint(0, 3))),
            schema=rng.choice([None, schema]), temperature=rng.choice([0.0, 0, 0.7, 1e-05, 1, 1.0]),
            top_p=rng.choice([0.95, 1.0]), max_tokens=rng.randint(1, 4000), seed=rng.randint(-5, 10**12),
            stop=rng.choice([(), ("\n\n",), (text[:3], "é")]), frequency_penalty=rng.choice([0.0, 0.5]))
        model = rng.choice(["m", text, "qwen/ü"])
        sampling = {"temperature": request.temperature, "top_p": request.top_p,
                    "max_tokens": request.max_tokens, **({"stop": list(request.stop)} if request.stop else {}),
                    **({"frequency_penalty": 0.5} if request.frequency_penalty else {})}
        assert request.key(model) == content_id(model, request.messages, request.schema, sampling,
                                                request.seed), (model, request)
