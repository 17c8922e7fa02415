"""Answer steps 2–4 — grounded answers with citations, then answer checks.

`answer`: the generator answers each kept prompt from its retrieved
passages, numbered [1]…[k], in plain text with [n] markers for what it cites
(the usual RAG form; a JSON wrapper made small models' prose much worse).
The answer is one paragraph: generation stops at a blank line or at a new
line that starts with a marker (a model starting to copy the next source),
at `answers.temperature` when set.  An answer without any marker cites the
passage it shares the most content words with, if that share reaches
`answers.min_lexical_support` (`citations_inferred`, kept in its metadata);
otherwise it cites nothing and is dropped as `no_citations`.  A prompt with no
passage above the minimum similarity is answered without context only if
`answers.allow_ungrounded`, and is then flagged `grounded = false`;
otherwise it is dropped as `no_supporting_passage`.

`check_answers` scores every answer (score first, decide second):
length, refusal/boilerplate, degenerate text, the share copied word for word
from its cited passages, words about "the sources" or "the passage" (an answer
must read on its own), truncation (the token budget ran out or the
text stops mid-sentence, as in the generators' checks), citation validity (every cited number, in the
list or in the text, names a retrieved passage), a cheap lexical support
score (share of the answer's content words found in its cited passages) and
the judge's groundedness (1–5 → 0–1).  Against a served model the answer
stage already scores each answer as it arrives (`ChecksAhead`: the judge's
calls go out beside the answers', so the server is not left idle between
the two stages); the check stage then scores only what is left, same
calls, same keys.  `decide` applies the recipe's
thresholds and writes the `dataset` table; reject reasons: too_short,
too_long, degenerate, truncated, echoes_prompt, off_topic_answer (embedding cosine with
its prompt under `answers.min_prompt_similarity`), refusal, invalid_citation,
no_citations, copies_passage (`answers.max_copied_share`), not_self_contained,
low_lexical_support, not_grounded, llm_invalid_output; and for a reasoning
model's trace, which the LLM layer keeps apart from the answer (every check
above sees the answer alone): missing_reasoning (`answers.reasoning.required`),
reasoning_length (`answers.reasoning.min_chars` / `max_chars`).  An output
that is all trace (the tokens ran out, or a stop sequence met, before the
answer) is the LLM layer's llm_invalid_output, with what to set.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

from sftmill.core.ids import content_id
from sftmill.core.recipe import Recipe
from sftmill.core.store import Store
from sftmill.core.text import STOPWORDS, ends_mid_sentence
from sftmill.core.text_rules import copied_share, degenerate, presupposes_source, refusal
from sftmill.embed.embedder import Embedder
from sftmill.llm.backends import make_llm
from sftmill.llm.budget import budget_of
from sftmill.llm.errors import LLMOutputError
from sftmill.llm.map import answered, llm_map, normalise_score
from sftmill.llm.request import ChatResult
from sftmill.prompts import load_template
from sftmill.tasks.sources.search import terms
from sftmill.tasks.stage_task import StageResult, StageTimer, stage_task
from sftmill.tasks.stages.lineage import build_metadata

ANSWER_STAGE = "answer"
CHECK_STAGE = "answer_checks"
_MARKER = re.compile(r"\[(\d{1,3})\]")


PARAGRAPH_END = ("\n\n", "\n[")


def inferred_citation(answer: str, passages: list[str], min_support: float) -> list[int]:
    """For an answer without markers: the number of the passage that
    supports most of its content words, when that share is at least
    `min_support` (else none)."""
    if not passages:
        return []
    support = [lexical_support(answer, [p]) for p in passages]
    best = max(range(len(passages)), key=lambda i: (support[i], -i))
    return [best + 1] if support[best] >= min_support else []


def cited_numbers(answer: str, listed: list[int]) -> list[int]:
    return sorted(set(listed) | {int(n) for n in _MARKER.findall(answer)})


def citations_valid(numbers: list[int], n_passages: int) -> bool:
    return all(1 <= n <= n_passages for n in numbers)


def lexical_support(answer: str, passages: list[str]) -> float:
    words = set(terms(_MARKER.sub(" ", answer)))
    if not words:
        return 0.0
    support = set(terms(" ".join(passages)))
    return len(words & support) / len(words)


def echoes_prompt(answer: str, prompt: str) -> bool:
    """The answer adds no content word to its prompt (it only repeats the request)."""
    words = {w for w in terms(_MARKER.sub(" ", answer)) if w not in STOPWORDS}
    return words <= set(terms(prompt))


def strip_markers(text: str) -> str:
    return re.sub(r"\s+([.,;:!?])", r"\1", re.sub(r"\s*\[\d{1,3}\]", "", text)).strip()


def passages_by_prompt(store: Store) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in store.query_dicts(
            "SELECT r.prompt_id, r.rank, r.chunk_id, r.similarity, c.text, c.doc_id "
            "FROM retrievals r JOIN chunks c USING (chunk_id) ORDER BY r.prompt_id, r.rank"):
        out.setdefault(row["prompt_id"], []).append(row)
    return out


def write_answers(store: Store, recipe: Recipe) -> tuple[int, int]:
    prompts = store.query_dicts("SELECT prompt_id, text, persona FROM answerable_prompts "
                                "ORDER BY prompt_id")
    register = recipe.personas.answer_register  # the answer is written for the persona
    passages = passages_by_prompt(store)
    todo = []
    store.execute("DELETE FROM rejects WHERE stage = ? AND reason = 'no_supporting_passage'",
                  [ANSWER_STAGE])
    for p in prompts:
        found = passages.get(p["prompt_id"], [])
        if not found and not recipe.answers.allow_ungrounded:
            store.reject(ANSWER_STAGE, p["prompt_id"], "no_supporting_passage",
                         f"no passage with cosine >= {recipe.answers.min_similarity}")
            continue
        todo.append((p, found))
    template = load_template(ANSWER_STAGE)
    endpoint = recipe.llm.generator
    llm = make_llm(endpoint, store)

    def row(item: tuple[dict, list[dict]], result: ChatResult) -> dict:
        return answer_row(item[0], item[1], result, recipe, llm.model, template.version)

    ahead = ChecksAhead.start(store, recipe, llm, passages, len(todo), row)
    try:
        results = llm_map(llm, endpoint, template, todo,
                          lambda item: {"domain": recipe.domain.name, "prompt": item[0]["text"],
                                        "passages": [x["text"] for x in item[1]],
                                        "persona": item[0]["persona"] if register else None},
                          stage=ANSWER_STAGE, seed=recipe.seed,
                          temperature=recipe.answers.temperature, stop=PARAGRAPH_END,
                          frequency_penalty=recipe.answers.frequency_penalty,
                          on_item=ahead.offer if ahead else None)
    finally:
        made = ahead.finish() if ahead else {}
    rows = [made.get(item[0]["prompt_id"]) or row(item, result)
            for item, result in answered(store, ANSWER_STAGE, results,
                                         lambda item: item[0]["prompt_id"])]
    # Every kept prompt is answered on every run (repeats come from the call
    # table), so the table holds exactly the current answers.
    store.replace_rows("answers", rows)
    return len(prompts), len(rows)


def answer_row(prompt: dict, found: list[dict], result: ChatResult, recipe: Recipe, model: str,
               template_version: str) -> dict:
    """The `answers` row of a prompt's answer; an answer without markers
    cites the passage it draws on most (`inferred_citation`)."""
    text = result.text.strip()
    numbers = cited_numbers(text, [])
    inferred = not numbers and bool(found)
    if inferred:
        numbers = inferred_citation(text, [x["text"] for x in found],
                                    recipe.answers.min_lexical_support)
    return {
        "answer_id": content_id(prompt["prompt_id"], text), "prompt_id": prompt["prompt_id"],
        "text": text, "grounded": bool(found),
        "cited_chunk_ids": [found[i - 1]["chunk_id"] for i in numbers if 1 <= i <= len(found)],
        "cited_numbers": numbers, "citations_inferred": inferred and bool(numbers),
        "model": model, "template_version": template_version, "call_key": result.key,
        "reasoning": result.reasoning or None}


JUDGE_OFF = "judge off (answers.min_groundedness: 0)"


def prompt_answer_similarity(store: Store, recipe: Recipe, answers: list[dict]) -> dict[str, float]:
    """answer_id → embedding cosine between the answer (markers removed) and its prompt."""
    if not answers:
        return {}

    embedder = Embedder(recipe.embedding, store)
    prompts = embedder.embed([a["prompt"] for a in answers])
    texts = embedder.embed([strip_markers(a["text"]) for a in answers])
    return {a["answer_id"]: float(p @ t) for a, p, t in zip(answers, prompts, texts)}


def cheap_checks(answer: dict, found: list[str], cited: list[str], recipe: Recipe) -> dict:
    """An `answer_checks` row with what needs no model: length, refusal,
    degenerate text, copying, self-reference, truncation, echo, citation
    validity (the judge's and the embedding's fields are filled in later)."""
    judge_on = recipe.answers.min_groundedness > 0
    text = answer["text"]
    return {
        "answer_id": answer["answer_id"], "n_chars": len(text),
        "refusal": bool(refusal(text)),
        "degenerate": degenerate(strip_markers(text)),
        "copied_share": copied_share(text, cited),
        "self_reference": presupposes_source(text, "answer"),
        "truncated": ((answer["tokens_out"] or 0) >= recipe.llm.generator.max_tokens
                      or ends_mid_sentence(text)),
        "echoes_prompt": echoes_prompt(text, answer["prompt"]),
        "prompt_similarity": None,
        "citations_valid": citations_valid(answer["cited_numbers"], len(found)),
        "lexical_support": None,
        "groundedness": None, "judge_reason": None if judge_on else JUDGE_OFF, "model": None,
        "template_version": None, "call_key": None,
        "reasoning_chars": len(answer.get("reasoning") or "")}


def worth_judging(check: dict, grounded: bool, recipe: Recipe) -> bool:
    """Only an answer the cheap checks let through is sent to the judge.
    (Similarity to the prompt is a score its threshold decides later: judged
    either way, so a changed answers.min_prompt_similarity needs no new call.)"""
    return (recipe.answers.min_groundedness > 0 and grounded and check["citations_valid"]
            and not check["refusal"] and not check["truncated"] and not check["echoes_prompt"]
            and not check["degenerate"] and not check["self_reference"]
            and check["copied_share"] < recipe.answers.max_copied_share
            and not trace_reason(check, recipe)
            and recipe.answers.min_chars <= check["n_chars"])


def score_answers(store: Store, recipe: Recipe, batches: Iterable[list[dict]], total: int,
                  passages: dict[str, list[dict]]) -> int:
    """Score answers (rows of `answers` plus their `prompt` text and
    `tokens_out`) batch by batch as they come: the cheap checks, then the
    judge's groundedness for those worth judging, while the similarity to
    the prompt and the lexical support of each batch are computed beside the
    judge's calls (they decide nothing about who is judged).  Inserts the
    `answer_checks` rows; returns how many answers were sent to the judge."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="answer-similarity")
    # per answer: (its check row, the answer, its passages, those it cites)
    scored: list[tuple[dict, dict, list[str], list[str]]] = []
    side_work = []  # per batch: (its answers, similarity future, lexical-support future)

    def to_judge() -> Iterator[list[tuple[dict, dict, list[str], list[str]]]]:
        for answers in batches:
            batch = []
            for a in answers:
                found = [x["text"] for x in passages.get(a["prompt_id"], [])]
                cited = [found[n - 1] for n in a["cited_numbers"] if 1 <= n <= len(found)]
                batch.append((cheap_checks(a, found, cited, recipe), a, found, cited))
            scored.extend(batch)
            side_work.append((batch, pool.submit(prompt_answer_similarity, store, recipe, answers),
                              pool.submit(lambda b=batch: [
                                  lexical_support(a["text"], cited) if cited else 0.0
                                  for _c, a, _found, cited in b])))
            yield [x for x in batch if worth_judging(x[0], x[1]["grounded"], recipe)]

    template = load_template("groundedness")
    endpoint = recipe.llm.judge
    llm = make_llm(endpoint, store)
    try:
        results = llm_map(llm, endpoint, template, to_judge(),
                          lambda x: {"passages": x[2], "prompt": x[1]["prompt"], "answer": x[1]["text"]},
                          stage=CHECK_STAGE, seed=recipe.seed, total=total)
        for (check, *_), result in results:
            if isinstance(result, LLMOutputError):
                check["judge_reason"] = f"llm_invalid_output: {result}"
                continue
            check.update(groundedness=normalise_score(result.data["score"]),
                         judge_reason=result.data["reason"], model=llm.model,
                         template_version=template.version, call_key=result.key)
        for batch, similar, supports in side_work:
            similarity = similar.result()
            for (check, *_), support in zip(batch, supports.result()):
                check["prompt_similarity"] = similarity.get(check["answer_id"])
                check["lexical_support"] = support
    finally:
        pool.shutdown(cancel_futures=True)
    store.insert("answer_checks", [check for check, *_ in scored])
    return len(results)


def forget_unjudged(store: Store, recipe: Recipe) -> None:
    """With the judge on, the checks made while it was off, or whose judge
    answer could not be used, are made again (and those of a run database
    older than the copy check)."""
    if recipe.answers.min_groundedness > 0:
        store.execute("DELETE FROM answer_checks WHERE judge_reason = ? OR judge_reason LIKE "
                      "'llm_invalid_output:%'", [JUDGE_OFF])
    store.execute("DELETE FROM answer_checks WHERE copied_share IS NULL")


def check_answers(store: Store, recipe: Recipe) -> int:
    """Score every answer without checks yet (the answer stage scores its
    answers as they arrive when it can: `ChecksAhead`); return how many were
    judged by the LLM.  `answers.min_groundedness: 0` turns the judge off (it
    could drop nothing); raised again, the answers it skipped are judged."""
    forget_unjudged(store, recipe)
    answers = store.query_dicts(
        "SELECT a.*, p.text AS prompt, (SELECT max(c.tokens_out) FROM llm_calls c "
        "WHERE c.key = a.call_key AND c.status = 'ok') AS tokens_out "
        "FROM answers a JOIN answerable_prompts p USING (prompt_id) "
        "WHERE a.answer_id NOT IN (SELECT answer_id FROM answer_checks) ORDER BY a.answer_id")
    if not answers:  # all scored as they were written
        return 0
    return score_answers(store, recipe, [answers], len(answers), passages_by_prompt(store))


class ChecksAhead:
    """Answer checks for the answers the answer stage writes, as they arrive:
    the judge's calls go out beside the answers' instead of after the last
    one, so the server is never idle between the two stages.  The check
    stage then finds these answers scored (`check_answers` scores only the
    rest) and decides.  Every call keeps its key, and is journaled as it
    lands: a run stopped half way pays for neither again.

    Used only where calls can overlap (a served model, not a Batch API or
    the in-process model) and when the run has no budget (each stage checks
    the budget against what is spent, not against another's calls in flight)."""

    BATCH = 256  # answers scored together: one cache look-up and one embedding batch

    def __init__(self, store: Store, recipe: Recipe, passages: dict[str, list[dict]], total: int,
                 row: Callable[[tuple[dict, list[dict]], ChatResult], dict]):
        self.store, self.recipe, self.passages, self.total, self.row = (
            store, recipe, passages, total, row)
        self.queue: queue.Queue = queue.Queue()
        self.made: dict[str, dict] = {}  # prompt_id → its answers row
        self.drained = False  # the answer stage's end was taken from the queue
        forget_unjudged(store, recipe)
        self.known = {r[0] for r in store.execute("SELECT answer_id FROM answer_checks")}
        self.failed: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="answer-checks-ahead")
        self.thread.start()

    @classmethod
    def start(cls, store: Store, recipe: Recipe, answer_llm, passages: dict[str, list[dict]],
              total: int, row) -> "ChecksAhead | None":
        judge = make_llm(recipe.llm.judge, store)
        if (total == 0 or budget_of(store) is not None
                or not (answer_llm.overlaps and judge.overlaps)):
            return None
        return cls(store, recipe, passages, total, row)

    def offer(self, item: tuple[dict, list[dict]], result) -> None:
        """An answer landed (called on the LLM loop: only queue it)."""
        self.queue.put((item, result))

    def finish(self) -> dict[str, dict]:
        """Wait for the last checks; the answers rows built on the way."""
        self.queue.put(None)
        self.thread.join()
        if self.failed is not None:  # the check stage scores what is missing
            logging.getLogger(__name__).info("answer checks ahead stopped (%s): the check "
                                             "stage scores the rest", self.failed)
        return self.made

    def _batches(self) -> Iterator[list[dict]]:
        done = False
        while not done:
            batch = []
            item = self.queue.get()  # the first of a batch: wait for it
            while True:
                if item is None:
                    done = self.drained = True
                    break
                (prompt, found), result = item
                if isinstance(result, ChatResult):
                    row = self.row((prompt, found), result)
                    self.made[prompt["prompt_id"]] = row
                    if row["answer_id"] not in self.known:
                        self.known.add(row["answer_id"])
                        batch.append({**row, "prompt": prompt["text"],
                                      "tokens_out": result.tokens_out})
                if len(batch) >= self.BATCH:
                    break
                try:
                    item = self.queue.get(timeout=0.5)
                except queue.Empty:
                    break
            if batch:
                yield batch

    def _run(self) -> None:
        try:
            score_answers(self.store, self.recipe, self._batches(), self.total, self.passages)
        except BaseException as err:  # noqa: BLE001 — reported by finish()
            self.failed = err
            while not self.drained:  # let the answer stage finish
                self.drained = self.queue.get() is None


def trace_reason(check: dict, recipe: Recipe) -> str | None:
    """What is wrong with an answer's reasoning trace (None: nothing)."""
    cfg, chars = recipe.answers.reasoning, check.get("reasoning_chars") or 0
    if not chars:
        return "missing_reasoning" if cfg.required else None
    return None if cfg.min_chars <= chars <= cfg.max_chars else "reasoning_length"


def reject_reason(check: dict, grounded: bool, recipe: Recipe) -> str | None:
    """Why an answer is dropped under the recipe's thresholds (None: kept)."""
    cfg = recipe.answers
    trace = trace_reason(check, recipe)
    if trace:
        return trace
    if check["n_chars"] < cfg.min_chars:
        return "too_short"
    if check["n_chars"] > cfg.max_chars:
        return "too_long"
    if check.get("degenerate"):
        return "degenerate"
    if check.get("truncated"):
        return "truncated"
    if check.get("echoes_prompt"):
        return "echoes_prompt"
    if (check.get("prompt_similarity") is not None
            and check["prompt_similarity"] < cfg.min_prompt_similarity):
        return "off_topic_answer"
    if check["refusal"]:
        return "refusal"
    if not check["citations_valid"]:
        return "invalid_citation"
    if check.get("self_reference"):
        return "not_self_contained"
    if not grounded:
        return None  # allowed ungrounded: kept, flagged grounded = false
    if not check["cited"]:
        return "no_citations"
    if (check.get("copied_share") or 0) >= cfg.max_copied_share:
        return "copies_passage"
    if check["lexical_support"] < cfg.min_lexical_support:
        return "low_lexical_support"
    if cfg.min_groundedness == 0:
        return None  # the judge is off: supported by its citations and lexical support
    if check["groundedness"] is None:
        return "llm_invalid_output"
    if check["groundedness"] < cfg.min_groundedness:
        return "not_grounded"
    return None


def decide(store: Store, recipe: Recipe) -> int:
    """Apply the thresholds: rejects for dropped answers, the rest to `dataset`."""
    rows = store.query_dicts(
        "SELECT a.*, k.groundedness, k.judge_reason, k.lexical_support, k.n_chars, k.refusal, "
        "coalesce(k.truncated, false) AS truncated, "
        "coalesce(k.echoes_prompt, false) AS echoes_prompt, k.prompt_similarity, "
        "k.citations_valid, k.model AS judge_model, len(a.cited_numbers) > 0 AS cited, "
        "k.degenerate, k.copied_share, k.self_reference, k.reasoning_chars, "
        "p.text AS prompt "
        "FROM answers a JOIN answer_checks k USING (answer_id) JOIN answerable_prompts p USING (prompt_id) "
        "ORDER BY a.prompt_id, a.answer_id")
    store.execute("DELETE FROM rejects WHERE stage = ?", [CHECK_STAGE])
    kept, dropped, seen_prompts = [], [], set()
    for row in rows:
        reason = reject_reason(row, row["grounded"], recipe)
        if reason:
            detail = {"not_grounded": row["judge_reason"], "llm_invalid_output": row["judge_reason"],
                      "degenerate": row["degenerate"], "not_self_contained": row["self_reference"],
                      "reasoning_length": f"a trace of {row['reasoning_chars']} characters",
                      "copies_passage": f"{row['copied_share']:.0%} copied from its cited passages"
                      if row["copied_share"] is not None else None}.get(reason) or ""
            dropped.append((row["answer_id"], reason, detail, row["groundedness"]))
        elif row["prompt_id"] not in seen_prompts:  # one answer per prompt
            seen_prompts.add(row["prompt_id"])
            kept.append(row)
    store.reject_many(CHECK_STAGE, dropped)
    records = []
    for row, metadata in zip(kept, build_metadata(store, recipe, kept)):
        answer = row["text"] if recipe.export.keep_citations else strip_markers(row["text"])
        records.append({"record_id": content_id(row["prompt_id"], row["answer_id"]),
                        "prompt_id": row["prompt_id"], "answer_id": row["answer_id"],
                        "prompt": row["prompt"], "answer": answer, "grounded": row["grounded"],
                        "metadata": metadata, "reasoning": row["reasoning"]})
    return store.replace_rows("dataset", records)


@stage_task("answer", recipe=("domain", "llm", "answers", "personas", "embedding", "seed"),
            templates=(ANSWER_STAGE,), reads=("retrievals",), writes=("answers",))
def answer(recipe: Recipe, retrieved: StageResult) -> StageResult:
    store = Store.open(retrieved.out.db_path)
    timer = StageTimer(store, ANSWER_STAGE)
    n_prompts, n_answers = write_answers(store, recipe)
    return timer.done(store.ref("answers", "answer_id"), n_prompts, n_answers)


@stage_task("answer_checks", recipe=("domain", "llm", "answers", "embedding", "export", "seed",
                                       "name"),
            templates=("groundedness",), reads=("answers",), writes=("answer_checks", "dataset"))
def answer_checks(recipe: Recipe, answers: StageResult) -> StageResult:
    store = Store.open(answers.out.db_path)
    timer = StageTimer(store, CHECK_STAGE)
    judged_here = check_answers(store, recipe)
    kept = decide(store, recipe)
    judged = store.scalar("SELECT count(*) FROM answers JOIN answer_checks k USING (answer_id) "
                          "WHERE k.call_key IS NOT NULL")
    return timer.done(store.ref("dataset", "record_id"), answers.out.rows, kept,
                      f"{judged} answers judged, {judged_here} of them in this stage")
