"""Grounded multi-turn conversations: a share of the kept records grows,
turn by turn, into a conversation whose every answer is grounded in cited
passages of the run's corpus.

For each turn after the first, for every conversation still open:

1. the generator writes the user's next question given the conversation so
   far, told its kind (`conversations.follow_ups`: deeper, example,
   challenge, neighbour — spread equally, shuffled with the seed), how to
   begin it, and the persona of the first prompt if it had one; the question
   is taken from the reply as in generation (`generate.opening_prompt`);
2. the follow-up passes the prompt filter's checks that need no judge
   (`vague_prompt`, `not_self_contained`, …) and must not repeat an earlier
   user turn of its conversation (embedding cosine under
   `conversations.max_similarity`, else `repeated_turn`);
3. it gets its own retrieval, with a conversation-aware query (the previous
   user turn and the follow-up together), top `answers.top_k` passages;
4. the generator answers it from those passages with the conversation so
   far before them, and the answer goes through the same checks as a
   first answer (`answer.cheap_checks`, lexical support, the groundedness
   judge, `answer.reject_reason`) and, with `conversations.consistency_judge`,
   the judge's check against the earlier answers (`contradicts_earlier`); an
   answer that says again what an earlier one said (`answers.max_copied_share`
   of its words in 5-word runs of the earlier answers) is a `repeated_turn`.

A turn that fails ends its conversation: it is exported up to its last turn
that passed.  Every turn, kept or dropped with its reason, is in the `turns`
table (and a dropped one in `rejects`, stage `conversation`, item
`<record_id>#<turn>`); the kept ones go into the `dataset` row's `turns`
column and its metadata (`conversation`: turns, and per follow-up its kind,
citations and groundedness).  Every call is keyed like any other: a rerun
pays for nothing it already asked.
"""

from __future__ import annotations

import random
import statistics
from collections import Counter

import numpy as np
import orjson

from sftmill.core.ids import content_id
from sftmill.core.markdown import markdown_table
from sftmill.core.recipe import Recipe
from sftmill.core.schema import KEPT_DATASET
from sftmill.core.store import Store
from sftmill.core.text_rules import copied_share
from sftmill.embed.embedder import Embedder
from sftmill.llm.backends import make_llm
from sftmill.llm.errors import LLMOutputError
from sftmill.llm.map import llm_map, normalise_score
from sftmill.prompts import load_template
from sftmill.tasks.stage_task import StageResult, StageTimer, stage_task
from sftmill.tasks.stages.answer import (
    PARAGRAPH_END,
    cheap_checks,
    cited_numbers,
    inferred_citation,
    lexical_support,
    reject_reason,
    strip_markers,
    worth_judging,
)
from sftmill.tasks.stages.conditions import spread
from sftmill.tasks.stages.generate import opening_prompt
from sftmill.tasks.stages.prompt_filter import cheap_reject
from sftmill.tasks.stages.rag import top_passages

STAGE = "conversation"
FOLLOW_UP, FOLLOW_UP_ANSWER, FOLLOW_UP_CHECKS = "follow_up", "follow_up_answer", "follow_up_checks"
CONSISTENCY = "follow_up_consistency"
TURN_COLUMNS = ("record_id", "turn", "kind", "user_text", "answer", "reasoning", "cited_chunk_ids",
                "groundedness", "kept", "reason")

# What each kind of follow-up asks of the user's next question, and how it
# begins (told its opening, a small model writes a question instead of
# narrating the conversation, as in generation).
KINDS = {"deeper": ("one that goes deeper into something the expert just said", "Why"),
         "example": ("one that asks for a concrete example of what the expert explained",
                     "Can you give an example of"),
         "challenge": ("one that doubts a claim the expert made", "Is it really true that"),
         "neighbour": ("one about a neighbouring topic of the same subject", "How")}


def chosen(record_ids: list[str], recipe: Recipe) -> dict[str, int]:
    """record_id → the user turns its conversation aims for, for the share of
    records drawn (by a hash of the seed and the ID: the same on every run)."""
    cfg = recipe.conversations
    low, high = cfg.turns
    out = {}
    for rid in record_ids:
        rng = random.Random(content_id(recipe.seed, rid, "conversation"))
        if rng.random() < cfg.share:
            out[rid] = rng.randint(low, high)
    return out


OPENINGS = [opening for _kind, opening in KINDS.values()]


def follow_up_question(reply: str, opening: str) -> str | None:
    """The question in a follow-up reply: the first line that holds one once a
    short lead-in ("The next question:", "One question:") is taken off
    (`generate.opening_prompt` reads each line); None when no line does."""
    for line in reply.splitlines():
        head, sep, rest = line.partition(": ")
        if sep and len(head.split()) <= 4 and rest.strip():
            line = rest
        question = opening_prompt(line, opening, OPENINGS)
        if question:
            return question
    return None


def repeats(vector: np.ndarray, earlier: list[np.ndarray], limit: float) -> float | None:
    """The cosine with the nearest earlier user turn when it reaches `limit` (else None)."""
    sims = [float(vector @ e) for e in earlier]
    return max(sims) if sims and max(sims) >= limit else None


class Conversations:
    """The open conversations of a run and the work of one turn on them."""

    def __init__(self, store: Store, recipe: Recipe):
        self.store, self.recipe = store, recipe
        self.embedder = Embedder(recipe.embedding, store)
        self.chunks = store.query_dicts(
            "SELECT c.chunk_id, c.text, c.doc_id, d.uri FROM chunks c JOIN documents d USING (doc_id) "
            "ORDER BY c.chunk_id")
        self.chunk_vectors = self.embedder.embed([c["text"] for c in self.chunks])
        self.generator = make_llm(recipe.llm.generator, store)
        self.judge = make_llm(recipe.llm.judge, store)
        self.rows: list[dict] = []  # the `turns` rows made so far
        self.drops: list[tuple[str, str, str, None]] = []  # and the `rejects` of those dropped

    def add(self, conv: dict, turn: int, kind: str, reason: str | None, **row) -> None:
        """A `turns` row: every column, kept when it has no reason."""
        self.rows.append({**dict.fromkeys(TURN_COLUMNS), **row, "record_id": conv["record_id"],
                          "turn": turn, "kind": kind, "kept": reason is None, "reason": reason})

    def drop(self, conv: dict, turn: int, kind: str, reason: str, detail: str, **row) -> None:
        self.add(conv, turn, kind, reason, **row)
        self.drops.append((f"{conv['record_id']}#{turn}", reason, detail[:500], None))
        conv["open"] = False

    def history(self, conv: dict) -> list[tuple[str, str]]:
        return [(user, strip_markers(reply)) for user, reply, *_ in conv["turns"]]

    def ask_follow_ups(self, convs: list[dict], turn: int, kinds: dict[str, str]) -> list[tuple[dict, str]]:
        """(conversation, follow-up) for those whose follow-up passes its checks."""
        endpoint = self.recipe.llm.generator
        results = llm_map(self.generator, endpoint, load_template(FOLLOW_UP), convs,
                          lambda c: {"domain": self.recipe.domain.name, "persona": c["persona"],
                                     "history": self.history(c), "kind": KINDS[kinds[c["record_id"]]][0],
                                     "opening": KINDS[kinds[c["record_id"]]][1]},
                          stage=FOLLOW_UP, seed=self.recipe.seed + turn, max_tokens=64,
                          stop=("\n\n",))
        written = []
        for conv, result in results:
            kind = kinds[conv["record_id"]]
            if isinstance(result, LLMOutputError):
                self.drop(conv, turn, kind, result.reason, str(result))
                continue
            text = follow_up_question(result.text, KINDS[kind][1])
            found = cheap_reject(text, self.recipe.thresholds.max_prompt_chars) if text else (
                "llm_invalid_output", f"no question in the reply: {result.text[:200]}")
            if found:
                self.drop(conv, turn, kind, found[0], f"{found[1]}: {text}", user_text=text)
            else:
                written.append((conv, text))
        if not written:
            return []
        vectors = self.embedder.embed([t for _c, t in written])
        earlier = self.embedder.embed([user for c, _t in written for user, *_ in c["turns"]])
        out, at = [], 0
        for (conv, text), vector in zip(written, vectors):
            n = len(conv["turns"])
            sim = repeats(vector, list(earlier[at:at + n]), self.recipe.conversations.max_similarity)
            at += n
            if sim is not None:
                self.drop(conv, turn, kinds[conv["record_id"]], "repeated_turn",
                          f"cosine {sim:.3f} with an earlier user turn: {text}", user_text=text)
            else:
                out.append((conv, text))
        return out

    def retrieve(self, asked: list[tuple[dict, str]]) -> list[tuple[dict, str, list[dict]]]:
        """Each follow-up's passages, found by the previous user turn and the follow-up together."""
        if not asked:
            return []
        answers = self.recipe.answers
        queries = [f"{conv['turns'][-1][0]} {text}" for conv, text in asked]
        hits = top_passages(self.embedder.embed(queries), self.chunk_vectors, answers.top_k,
                            answers.min_similarity)
        return [(conv, text, [self.chunks[j] for j, _sim in found])
                for (conv, text), found in zip(asked, hits)]

    def answer(self, items: list[tuple[dict, str, list[dict]]], turn: int, kinds: dict[str, str]) -> None:
        """Answer, check and keep (or drop) each follow-up that has passages."""
        recipe, todo = self.recipe, []
        for conv, text, found in items:
            if found:
                todo.append((conv, text, found))
            else:
                self.drop(conv, turn, kinds[conv["record_id"]], "no_supporting_passage",
                          f"no passage with cosine >= {recipe.answers.min_similarity}: {text}",
                          user_text=text)
        endpoint = recipe.llm.generator
        register = recipe.personas.answer_register
        results = llm_map(self.generator, endpoint, load_template("answer"), todo,
                          lambda it: {"domain": recipe.domain.name, "prompt": it[1],
                                      "passages": [c["text"] for c in it[2]],
                                      "history": self.history(it[0]),
                                      "persona": it[0]["persona"] if register else None},
                          stage=FOLLOW_UP_ANSWER, seed=recipe.seed + turn,
                          temperature=recipe.answers.temperature, stop=PARAGRAPH_END,
                          frequency_penalty=recipe.answers.frequency_penalty)
        checked = []
        for (conv, text, found), result in results:
            kind = kinds[conv["record_id"]]
            if isinstance(result, LLMOutputError):
                self.drop(conv, turn, kind, result.reason, str(result), user_text=text)
                continue
            reply = result.text.strip()
            passages = [c["text"] for c in found]
            numbers = cited_numbers(reply, []) or inferred_citation(
                reply, passages, recipe.answers.min_lexical_support)
            cited = [passages[n - 1] for n in numbers if 1 <= n <= len(passages)]
            check = cheap_checks({"answer_id": "", "text": reply, "tokens_out": result.tokens_out,
                                  "prompt": text, "cited_numbers": numbers,
                                  "reasoning": result.reasoning}, passages, cited, recipe)
            check.update(cited=bool(numbers), lexical_support=lexical_support(reply, cited) if cited else 0.0)
            said = copied_share(reply, [strip_markers(t[1]) for t in conv["turns"]])
            if said >= recipe.answers.max_copied_share:  # says again what was said: adds nothing
                self.drop(conv, turn, kind, "repeated_turn", f"{said:.0%} of its answer repeats an "
                          f"earlier answer: {reply}", user_text=text, answer=reply)
                continue
            checked.append((conv, text, found, reply, result.reasoning, numbers, check))
        self.judge_and_keep(checked, turn, kinds)

    def judge_and_keep(self, checked: list[tuple], turn: int, kinds: dict[str, str]) -> None:
        recipe = self.recipe
        judged = [x for x in checked if worth_judging(x[6], True, recipe)]
        for x, result in llm_map(self.judge, recipe.llm.judge, load_template("groundedness"), judged,
                                 lambda x: {"passages": [c["text"] for c in x[2]], "prompt": x[1],
                                            "answer": x[3]},
                                 stage=FOLLOW_UP_CHECKS, seed=recipe.seed):
            if isinstance(result, LLMOutputError):
                x[6]["judge_reason"] = f"llm_invalid_output: {result}"
            else:
                x[6].update(groundedness=normalise_score(result.data["score"]),
                            judge_reason=result.data["reason"])
        contradicted = self.contradictions(checked) if recipe.conversations.consistency_judge else {}
        for conv, text, found, reply, reasoning, numbers, check in checked:
            kind = kinds[conv["record_id"]]
            row = {"user_text": text, "answer": reply, "reasoning": reasoning or None,
                   "cited_chunk_ids": [found[n - 1]["chunk_id"] for n in numbers if 1 <= n <= len(found)],
                   "groundedness": check["groundedness"]}
            reason = reject_reason(check, True, recipe)
            if reason is None and conv["record_id"] in contradicted:
                reason = "contradicts_earlier"
            if reason:
                detail = check.get("judge_reason") or contradicted.get(conv["record_id"]) or reply
                self.drop(conv, turn, kind, reason, f"{detail}", **row)
                continue
            self.add(conv, turn, kind, None, **row)
            conv["turns"].append((text, reply, reasoning, kind, found, numbers, check["groundedness"]))

    def contradictions(self, checked: list[tuple]) -> dict[str, str]:
        """record_id → the judge's reason, for answers it finds contradict an earlier one."""
        asked = [x for x in checked if reject_reason(x[6], True, self.recipe) is None]
        out = {}
        for x, result in llm_map(self.judge, self.recipe.llm.judge, load_template("consistency"), asked,
                                 lambda x: {"earlier": [strip_markers(t[1]) for t in x[0]["turns"]],
                                            "answer": strip_markers(x[3])},
                                 stage=CONSISTENCY, seed=self.recipe.seed):
            if not isinstance(result, LLMOutputError) and not result.data["consistent"]:
                out[x[0]["record_id"]] = result.data["reason"]
        return out


def extend_conversations(store: Store, recipe: Recipe) -> tuple[int, int]:
    """Grow the chosen records into conversations; returns (conversations, follow-up turns kept)."""
    store.execute("DELETE FROM turns")
    store.execute("DELETE FROM rejects WHERE stage = ?", [STAGE])
    records = store.query_dicts(
        "SELECT d.record_id, d.prompt, a.text AS answer, a.reasoning, p.persona FROM dataset d "
        "JOIN answers a USING (answer_id) JOIN prompts p ON p.prompt_id = d.prompt_id "
        "ORDER BY d.record_id")
    wanted = chosen([r["record_id"] for r in records], recipe) if recipe.conversations.enabled else {}
    convs = [{"record_id": r["record_id"], "persona": r["persona"], "open": True,
              "length": wanted[r["record_id"]], "turns": [(r["prompt"], r["answer"], r["reasoning"])]}
             for r in records if r["record_id"] in wanted]
    if convs:
        work = Conversations(store, recipe)
        rng = random.Random(recipe.seed)
        for turn in range(2, recipe.conversations.turns[1] + 1):
            live = [c for c in convs if c["open"] and c["length"] >= turn]
            if not live:
                break
            labels = spread(dict.fromkeys(recipe.conversations.follow_ups, 1.0 / len(
                recipe.conversations.follow_ups)), len(live))
            rng.shuffle(labels)
            kinds = {c["record_id"]: k for c, k in zip(live, labels)}
            work.answer(work.retrieve(work.ask_follow_ups(live, turn, kinds)), turn, kinds)
        store.insert("turns", work.rows)
        store.reject_many(STAGE, work.drops)
    write_turns(store, recipe, convs)
    return len(convs), sum(len(c["turns"]) - 1 for c in convs)


def write_turns(store: Store, recipe: Recipe, convs: list[dict]) -> None:
    """Each conversation's kept follow-ups into its `dataset` row (`turns`, and
    `conversation` in its metadata); every other row has none."""
    rows = {r["record_id"]: r for r in store.query_dicts("SELECT record_id, metadata FROM dataset")}
    keep = recipe.export.keep_citations
    grown = {c["record_id"]: c["turns"][1:] for c in convs}
    updates = []
    for rid, row in rows.items():
        meta = orjson.loads(row["metadata"] or "{}")
        had = meta.pop("conversation", None)
        later = grown.get(rid, [])
        if not later and not had:
            continue  # nothing to write or to clear
        turns = None
        if later:
            turns = orjson.dumps([{"user": user, "assistant": reply if keep else strip_markers(reply),
                                   "reasoning": reasoning or None}
                                  for user, reply, reasoning, *_ in later]).decode()
            meta["conversation"] = {"turns": 1 + len(later), "follow_ups": [
                {"turn": i, "kind": kind, "groundedness": grounded,
                 "citations": [{"n": n, "chunk_id": found[n - 1]["chunk_id"], "doc_id": found[n - 1]["doc_id"],
                                "uri": found[n - 1]["uri"]} for n in numbers if 1 <= n <= len(found)]}
                for i, (_u, _r, _t, kind, found, numbers, grounded) in enumerate(later, 2)]}
        updates.append({"record_id": rid, "turns": turns, "metadata": orjson.dumps(meta).decode()})
    if updates:
        store.execute("UPDATE dataset SET turns = u.turns, metadata = u.metadata FROM "
                      "(SELECT unnest(?) AS record_id, unnest(?) AS turns, unnest(?) AS metadata) u "
                      "WHERE dataset.record_id = u.record_id",
                      [[u["record_id"] for u in updates], [u["turns"] for u in updates],
                       [u["metadata"] for u in updates]])


def conversation_section(store: Store) -> list[str]:
    """The card's section on conversations: how many turns they reached, and
    per turn what was asked, kept and dropped (by reason), by kind, and the
    kept answers' median groundedness (empty when the run made none)."""
    rows = store.query_dicts(f"SELECT t.* FROM turns t JOIN {KEPT_DATASET} d USING (record_id) "
                             "ORDER BY record_id, turn")
    if not rows:
        return []
    kept_turns = Counter(r["record_id"] for r in rows if r["kept"])
    reached = Counter(1 + kept_turns[rid] for rid in {r["record_id"] for r in rows})
    table = []
    for turn in sorted({r["turn"] for r in rows}):
        at = [r for r in rows if r["turn"] == turn]
        kept = [r for r in at if r["kept"]]
        drops = Counter(r["reason"] for r in at if not r["kept"])
        grounded = [r["groundedness"] for r in kept if r["groundedness"] is not None]
        table.append([turn, len(at), len(kept),
                      ", ".join(f"{reason} {n}" for reason, n in drops.most_common()) or "-",
                      ", ".join(f"{k} {n}" for k, n in sorted(Counter(r["kind"] for r in kept).items()))
                      or "-", f"{statistics.median(grounded):.2f}" if grounded else "-"])
    return ["## Conversations",
            f"{sum(reached.values())} records were grown into conversations; user turns reached: "
            + ", ".join(f"{n} with {t}" for t, n in sorted(reached.items()))
            + " (a conversation is exported up to its last turn that passed).",
            markdown_table(["turn", "asked", "kept", "dropped, by reason", "kept, by kind",
                            "median groundedness"], table)]


@stage_task("conversation", recipe=("domain", "llm", "answers", "conversations", "personas",
                                      "thresholds", "embedding", "export", "seed"),
            templates=(FOLLOW_UP, "answer", "groundedness", "consistency"),
            reads=("dataset", "chunks"), writes=("turns", "dataset"))
def conversation(recipe: Recipe, dataset: StageResult) -> StageResult:
    store = Store.open(dataset.out.db_path)
    timer = StageTimer(store, STAGE)
    made, kept = extend_conversations(store, recipe)
    return timer.done(store.ref("dataset", "record_id || coalesce(turns, '')"), dataset.out.rows,
                      dataset.out.rows, f"{made} conversations, {kept} follow-up turns kept")
