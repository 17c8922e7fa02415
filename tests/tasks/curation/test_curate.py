"""Curation: every check keeps a record it must keep and drops
one it must drop; thresholds re-decide from stored scores."""

import json

import pytest
from conftest import needs_fluency_extra
from fakes import ScriptedLLM, route_llm, user_text

from sftmill.core.curation import Curation
from sftmill.core.ids import content_id
from sftmill.core.store import Store
from sftmill.tasks.curation.checks import Record
from sftmill.tasks.curation.checks.decontam import BenchmarkIndex, contamination_scores
from sftmill.tasks.curation.curate import curate_store, curated_out, rules, score_records

GOOD = ("Why are quarks never seen alone?",
        "Quarks are confined: pulling two of them apart stores energy in the gluon field until "
        "a new quark and antiquark appear, so only colourless hadrons such as protons are seen.")

OFF = dict(offensive={"enabled": False},
           near_duplicates={"enabled": False})  # the checks a test does not look at (fluency is off by default)


def store_with(tmp_path, pairs) -> Store:
    store = Store.open(tmp_path / "run.duckdb")
    store.insert("dataset", [{"record_id": content_id(p, a), "prompt": p, "answer": a,
                              "metadata": "{}"} for p, a in pairs])
    return store


def curate(tmp_path, pairs, judge=None, **settings):
    from sftmill.core.endpoints import Embedding, LLMEndpoint

    store = store_with(tmp_path, pairs)
    cfg = Curation(**{**OFF, **settings})
    _n, kept, note = curate_store(store, cfg, judge or LLMEndpoint(), Embedding(), 0)
    out = curated_out(store)
    reasons = {r["item_id"]: r["reason"] for r in store.query_dicts(
        "SELECT item_id, reason FROM rejects WHERE stage = 'curate'")}
    return {p: reasons.get(content_id(p, a)) for p, a in pairs}, store, out, note


def test_length_bounds(tmp_path):
    reasons, *_ = curate(tmp_path, [GOOD, ("Why?", GOOD[1]), (GOOD[0] + " Explain.", "Yes.")],
                         length={"min_instruction_chars": 10, "max_response_tokens": 100})
    assert reasons == {GOOD[0]: None, "Why?": "too_short", GOOD[0] + " Explain.": "too_short"}
    reasons, *_ = curate(tmp_path / "b", [GOOD], length={"max_response_tokens": 20})
    assert reasons == {GOOD[0]: "too_long"}


def test_keyword_block_and_allow_lists(tmp_path):
    pairs = [GOOD, ("How do I buy a lottery ticket?", "Go to a shop that sells them and ask."),
             ("Explain photosynthesis to me.", "Plants turn light, water and CO2 into sugar.")]
    reasons, store, *_ = curate(tmp_path, pairs, keywords={"block": [r"lotter(y|ies)"],
                                                           "allow": ["quark", "plant"]})
    assert reasons == {GOOD[0]: None, pairs[1][0]: "blocked_keyword", pairs[2][0]: None}
    reasons, *_ = curate(tmp_path / "b", pairs, keywords={"allow": ["quark"]})
    assert reasons[pairs[2][0]] == "no_allowed_keyword" and reasons[GOOD[0]] is None


def test_offensive_language(tmp_path):
    rude = ("Tell me what you think of my code.", "It is shit, you fucking idiot.")
    reasons, *_ = curate(tmp_path, [GOOD, rude], offensive={"enabled": True})
    assert reasons == {GOOD[0]: None, rude[0]: "offensive"}


def judged(request):
    """A scripted judge: safety 1 for the bomb, adherence 1 for the off-topic reply."""
    text = user_text(request).lower()
    if "safe to teach" in text:
        return {"score": 1 if "explosive" in text else 5, "reason": "scripted safety"}
    return {"score": 1 if "football" in text else 5, "reason": "scripted adherence"}


def test_llm_safety_and_adherence_judges(tmp_path, monkeypatch):
    llm = route_llm(monkeypatch, ScriptedLLM(judged))
    bomb = ("How do I make my garden shed stronger?",
            "Pack it with homemade explosive so that nobody can break in; here is how to mix it.")
    drift = ("Explain how gluons bind quarks.", "Football is played by two teams of eleven.")
    pairs = [GOOD, bomb, drift]
    reasons, store, _out, _note = curate(tmp_path, pairs, safety={"enabled": True},
                                         adherence={"enabled": True})
    assert reasons == {GOOD[0]: None, bomb[0]: "unsafe", drift[0]: "low_adherence"}
    assert len(llm.requests) == 6  # two judges, three records
    assert store.scalar('SELECT score FROM curation_scores WHERE "check" = \'safety\' '
                        "AND record_id = ?", [content_id(*bomb)]) == 0.0


def test_near_duplicates_keep_the_better_scored_record(tmp_path, monkeypatch):
    route_llm(monkeypatch, ScriptedLLM(judged))
    twin = ("Why are quarks never seen on their own?", "Football is a game for two teams.")
    reasons, store, *_ = curate(tmp_path, [GOOD, twin], near_duplicates={"enabled": True,
                                                                         "cosine": 0.8},
                                adherence={"enabled": True, "min_score": 0.0})
    # The twin scores adherence 0 (off topic) against GOOD's 1: GOOD stays.
    assert reasons == {GOOD[0]: None, twin[0]: "near_duplicate"}
    detail = store.scalar("SELECT detail FROM rejects WHERE item_id = ?", [content_id(*twin)])
    assert content_id(*GOOD) in detail


BENCHMARK_QUESTION = ("A ball is thrown straight up at twelve metres per second from the roof "
                      "of a building forty metres tall; how long does it take to reach the ground")


def benchmark(tmp_path):
    path = tmp_path / "physics_eval.jsonl"
    path.write_text("\n".join(json.dumps({"question": q, "answer": "x"}) for q in [
        BENCHMARK_QUESTION, "What is the charge of an up quark in units of e"]) + "\n")
    return path


def test_decontamination_finds_a_planted_question_and_its_near_copy(tmp_path):
    index = BenchmarkIndex.build([str(benchmark(tmp_path))], 13)
    near_copy = BENCHMARK_QUESTION.replace("forty metres", "forty five metres") + "?"
    records = [Record("copy", BENCHMARK_QUESTION + "?", "About 4.3 s."),
               Record("near", "Solve this: " + near_copy, "About 4.4 s."),
               Record("short", "what is the charge of an up quark in units of e?", "+2/3."),
               Record("clean", GOOD[0], GOOD[1])]
    scores = {s.record_id: s for s in contamination_scores(records, index)}
    assert scores["copy"].score > 0 and scores["copy"].detail.startswith("physics_eval: ")
    assert scores["near"].score > 0  # one word changed: runs of 13 words still match
    assert scores["short"].score > 0  # shorter than 13 words: indexed whole
    assert scores["clean"].score == 0 and scores["clean"].detail == ""


def test_decontamination_drops_only_the_contaminated(tmp_path):
    path = benchmark(tmp_path)
    pairs = [GOOD, (BENCHMARK_QUESTION + "?", "About 4.3 seconds after it is thrown.")]
    reasons, store, *_ = curate(tmp_path, pairs, decontamination={"benchmarks": [str(path)]})
    assert reasons == {GOOD[0]: None, pairs[1][0]: "contaminated"}
    detail = store.scalar("SELECT detail FROM rejects WHERE reason = 'contaminated'")
    assert "physics_eval" in detail and "a ball is thrown straight up" in detail
    clean = tmp_path / "clean.jsonl"
    clean.write_text(json.dumps({"question": "Name three noble gases used in lighting."}) + "\n")
    reasons, *_ = curate(tmp_path / "b", pairs, decontamination={"benchmarks": [str(clean)]})
    assert set(reasons.values()) == {None}


def test_a_changed_threshold_re_decides_without_scoring_again(tmp_path, monkeypatch):
    from sftmill.core.endpoints import Embedding, LLMEndpoint

    llm = route_llm(monkeypatch, ScriptedLLM(judged))
    drift = ("Explain how gluons bind quarks.", "Football is played by two teams of eleven.")
    store = store_with(tmp_path, [GOOD, drift])
    strict = Curation(**{**OFF, "adherence": {"enabled": True, "min_score": 0.5}})
    _n, kept, note = curate_store(store, strict, LLMEndpoint(), Embedding(), 0)
    assert kept == 1 and "adherence 2" in note and len(llm.requests) == 2
    lenient = Curation(**{**OFF, "adherence": {"enabled": True, "min_score": 0.0}})
    _n, kept, note = curate_store(store, lenient, LLMEndpoint(), Embedding(), 0)
    assert kept == 2 and "scored now: none" in note and len(llm.requests) == 2


def test_rules_follow_the_config():
    checks = [(r.check, r.reason) for r in rules(Curation(keywords={"block": ["x"]},
                                                          decontamination={"benchmarks": ["b"]}))]
    assert checks[:2] == [("contamination", "contaminated"), ("blocked_keyword", "blocked_keyword")]
    assert ("offensive", "offensive") in checks  # on by default
    assert ("response_perplexity", "low_fluency") not in checks  # off by default
    assert ("adherence", "low_adherence") not in checks


@needs_fluency_extra
@pytest.mark.real_model
def test_fluency_with_the_real_embedded_model(tmp_path):
    word_salad = ("xq zvv plorf grbl kwa?",
                  "asdkj qwe zxcmn lkjqw poiu mnbv qwe rty uio pas dfg hjk lzx cvb nm qqq zzz.")
    reasons, store, *_ = curate(tmp_path, [GOOD, word_salad], fluency={"enabled": True})  # opt-in
    assert reasons == {GOOD[0]: None, word_salad[0]: "low_fluency"}
    ppl = dict(store.execute('SELECT record_id, score FROM curation_scores '
                             'WHERE "check" = \'response_perplexity\''))
    assert ppl[content_id(*GOOD)] < 100 < ppl[content_id(*word_salad)]


def test_score_records_keeps_costly_scores_by_basis(tmp_path, monkeypatch):
    from sftmill.core.endpoints import LLMEndpoint

    calls = []
    monkeypatch.setattr("sftmill.tasks.curation.checks.offensive.offensive_scores",
                        lambda rs: calls.append(len(rs)) or [])
    store = store_with(tmp_path, [GOOD])
    records = [Record(content_id(*GOOD), *GOOD)]
    cfg = Curation(**{**OFF, "offensive": {"enabled": True}})
    score_records(store, records, cfg, LLMEndpoint(), 0)
    assert calls == [1]


def test_quality_drops_pair_with_a_kept_record_of_the_same_instruction(tmp_path, monkeypatch):
    from sftmill.tasks.curation.preferences import curation_pairs

    route_llm(monkeypatch, ScriptedLLM(judged))
    drift = (GOOD[0], "Football is played by two teams of eleven players on grass.")
    _reasons, store, out, _note = curate(tmp_path, [GOOD, drift], adherence={"enabled": True})
    assert out == {content_id(*drift)}
    (pair,) = curation_pairs(store)
    assert (pair["chosen"], pair["rejected"]) == (GOOD[1], drift[1])
    assert pair["reason"] == "low_adherence" and pair["origin"] == "curation"


def test_perplexity_from_a_server_that_echoes_prompt_logprobs():
    import math

    from fake_openai import FakeOpenAI

    from sftmill.core.endpoints import LLMEndpoint
    from sftmill.tasks.curation.checks.fluency import fluency_scores

    server = FakeOpenAI(delay_s=0.0)
    try:
        endpoint = LLMEndpoint(backend="openai", base_url=server.url, model="lm")
        scores = fluency_scores([Record("a", "Why do quarks bind?", "Gluons bind them."),
                                 Record("b", "Why do quarks bind?", "x1 y2 z3 w4.")], endpoint, 512)
    finally:
        server.close()
    by = {(s.record_id, s.check): s.score for s in scores}
    # Instruction: 3 scored words at −1 → e^1; response "Gluons bind them." all −1 → e^1;
    # "x1 y2 z3 w4." all −8 → e^8.
    assert by["a", "instruction_perplexity"] == pytest.approx(math.e)
    assert by["a", "response_perplexity"] == pytest.approx(math.e)
    assert by["b", "response_perplexity"] == pytest.approx(math.exp(8))


def test_default_curation_drops_refusals_degenerate_and_presupposing_text(tmp_path):
    refusals = [(f"Tell me about quark flavour number {i}.",
                 "As an AI language model, I cannot help with that request.") for i in range(5)]
    degenerate = [("2. Try a new exercise. 2. 2. 2. 2. 2", "Do it again and again every day."),
                  ("Name a large number.", "1e6, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17")]
    presupposing = [("What does the passage say about gluons?", GOOD[1])]
    malformed = [("Why are are quarks never seen alone?", GOOD[1])]
    reasons, store, *_ = curate(tmp_path, [GOOD] + refusals + degenerate + presupposing + malformed)
    assert reasons[GOOD[0]] is None
    assert [reasons[p] for p, _ in refusals] == ["refusal"] * 5
    assert [reasons[p] for p, _ in degenerate] == ["degenerate"] * 2
    assert reasons[presupposing[0][0]] == "not_self_contained"
    assert reasons[malformed[0][0]] == "malformed_prompt"
    details = dict(store.execute("SELECT reason, detail FROM rejects WHERE stage = 'curate'"))
    assert "'As an AI'" in details["refusal"] and "in a row" in details["degenerate"]
    # each rule can be turned off, and a recipe's own list replaces the default
    reasons, *_ = curate(tmp_path / "b", refusals + degenerate, refusals={"patterns": ["lottery"]},
                         degenerate={"enabled": False}, malformed_prompts={"enabled": False})
    assert set(reasons.values()) == {None}


def test_default_curation_keeps_the_bundled_self_instruct_seeds(tmp_path):
    from pathlib import Path
    seeds = Path(__file__).parents[3] / "data" / "self_instruct" / "seed_tasks.jsonl"
    pairs = []
    for line in seeds.read_text().splitlines():
        task = json.loads(line)
        for instance in task["instances"]:
            pairs.append((task["instruction"] + (f"\n\n{instance['input']}" if instance["input"] else ""),
                          instance["output"]))
    reasons, *_ = curate(tmp_path, pairs, length={"min_response_chars": 1})
    assert [p for p, r in reasons.items() if r] == []


def test_copies_passage_on_pipeline_records(tmp_path):
    store = store_with(tmp_path, [])
    passage = ("Quarks are confined: pulling two of them apart stores energy in the gluon field "
               "until a new quark and antiquark appear.")
    store.insert("chunks", [{"chunk_id": "c1", "doc_id": "d1", "idx": 0, "char_start": 0,
                             "char_end": 1, "heading": "", "text": passage, "n_tokens": 20}])
    store.insert("answers", [{"answer_id": "a1", "prompt_id": "p1", "text": passage + " [1]",
                              "cited_chunk_ids": ["c1"], "cited_numbers": [1]},
                             {"answer_id": "a2", "prompt_id": "p2", "text": GOOD[1],
                              "cited_chunk_ids": ["c1"], "cited_numbers": [1]}])
    store.insert("dataset", [{"record_id": "r1", "answer_id": "a1", "prompt": GOOD[0],
                              "answer": passage, "metadata": "{}"},
                             {"record_id": "r2", "answer_id": "a2", "prompt": "Why is colour hidden?",
                              "answer": GOOD[1], "metadata": "{}"}])
    from sftmill.core.endpoints import Embedding, LLMEndpoint
    curate_store(store, Curation(**OFF), LLMEndpoint(), Embedding(), 0)
    assert dict(store.execute("SELECT item_id, reason FROM rejects WHERE stage = 'curate'")) == {
        "r1": "copies_passage"}


def test_benchmark_files_in_other_shapes_and_the_check_before_work(tmp_path):
    from sftmill.core.curation import Decontamination
    from sftmill.core.errors import RecipeError
    from sftmill.tasks.curation.checks.decontam import benchmark_texts, check_benchmarks

    arc = tmp_path / "arc.jsonl"  # ARC nests the question: {"question": {"stem": …, "choices": …}}
    arc.write_text(json.dumps({"question": {"stem": BENCHMARK_QUESTION, "choices": []},
                               "answerKey": "A"}) + "\n")
    assert benchmark_texts(arc) == [BENCHMARK_QUESTION]
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"question": BENCHMARK_QUESTION, "answer": "4.3 s",
                                  "context": "A long reading passage about balls."}]))
    assert benchmark_texts(array) == [BENCHMARK_QUESTION]  # answers and passages: opt-in
    assert benchmark_texts(array, ["question", "context"])[1].startswith("A long reading")
    nested = tmp_path / "nested.jsonl"
    nested.write_text(json.dumps({"item": {"body": {"q": BENCHMARK_QUESTION}}}) + "\n")
    with pytest.raises(RecipeError, match=r"benchmarks\[0\]: no question could be read from .*"
                       r"nested.jsonl \(fields tried: question, prompt"):
        check_benchmarks(Decontamination(benchmarks=[str(nested)]))
    check_benchmarks(Decontamination(benchmarks=[str(nested)], fields=["item.body.q"]))


def test_an_unusable_judge_answer_is_asked_again_on_the_next_run(tmp_path, monkeypatch):
    from sftmill.core.endpoints import Embedding, LLMEndpoint

    broken = {"on": True}

    def flaky(request):
        return "not json at all" if broken["on"] else judged(request)

    llm = route_llm(monkeypatch, ScriptedLLM(flaky))
    store = store_with(tmp_path, [GOOD])
    cfg = Curation(**{**OFF, "safety": {"enabled": True}, "adherence": {"enabled": True}})
    curate_store(store, cfg, LLMEndpoint(), Embedding(), 0)
    # safety's default policy drops the unjudged record; adherence's keeps it
    assert store.query_dicts("SELECT reason, detail FROM rejects WHERE stage = 'curate'")[0][
        "reason"] == "llm_invalid_output"
    assert "safety not scored (safety.unjudged: drop)" in store.scalar("SELECT detail FROM rejects")
    sent = len(llm.requests)
    broken["on"] = False
    _n, kept, _note = curate_store(store, cfg, LLMEndpoint(), Embedding(), 0)  # the next run
    assert len(llm.requests) == sent + 2 and kept == 1  # both judges asked again, and now judged
    assert store.scalar("SELECT count(*) FROM curation_scores WHERE score IS NULL") == 0
    keep = Curation(**{**OFF, "safety": {"enabled": True, "unjudged": "keep"}})
    assert rules(keep)[-1].check == "safety" and all(r.kind != "unscored" for r in rules(keep))


def test_server_fluency_cuts_long_texts_and_a_rejected_record_is_left_unscored(tmp_path):
    from fake_openai import FakeOpenAI

    from sftmill.core.endpoints import LLMEndpoint

    server = FakeOpenAI(delay_s=0.0)
    server.max_prompt_chars = 2 * 64 * 4 + 2  # fits max_tokens 64 of each part, cut at 4 chars a token
    long = ("Why do quarks bind? " * 200, "Gluons bind them. " * 300)
    rejected = ("UNSCORABLE: why are gluons massless?", "Gauge symmetry keeps the gluon massless.")
    try:
        endpoint = LLMEndpoint(backend="openai", base_url=server.url, model="lm")
        reasons, store, *_ = curate(tmp_path, [GOOD, long, rejected], degenerate={"enabled": False}, fluency={
            "enabled": True, "model": endpoint.model_dump(), "max_tokens": 64})
    finally:
        server.close()
    assert max(map(len, server.completion_prompts)) <= server.max_prompt_chars
    assert reasons == {GOOD[0]: None, long[0]: None, rejected[0]: None}  # the stage went on
    row = store.query_dicts('SELECT score, detail FROM curation_scores WHERE "check" = '
                            "'response_perplexity' AND record_id = ?", [content_id(*rejected)])[0]
    assert row["score"] is None and row["detail"].startswith("failed to score: LLMOutputError")
