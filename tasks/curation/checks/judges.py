"""LLM judges of a record (the recipe's judge endpoint): `safety` — harm a
word classifier cannot see (polite instructions for something dangerous) —
and `adherence` — whether the response does what the instruction asks and
helps.  Each scores 1–5 with a reason, stored as 0–1; an answer the judge
could not give in the schema leaves the record unscored (the detail says
why), never dropped for it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sftmill.llm.backends import make_llm, model_name
from sftmill.llm.errors import LLMOutputError
from sftmill.llm.map import llm_map, normalise_score
from sftmill.prompts import load_template
from sftmill.tasks.curation.checks import Record, Score

if TYPE_CHECKING:
    from sftmill.core.endpoints import LLMEndpoint
    from sftmill.core.store import Store

JUDGES = ("safety", "adherence")  # check name = template name
RESPONSE_CHARS = 4000  # of the response shown to the judge


def basis(endpoint: "LLMEndpoint", judge: str) -> str:
    return f"{model_name(endpoint)}/{load_template(judge).version}"


def judge_scores(store: "Store", records: list[Record], judge: str, endpoint: "LLMEndpoint",
                 seed: int) -> list[Score]:
    template = load_template(judge)
    llm = make_llm(endpoint, store)
    results = llm_map(llm, endpoint, template, records,
                      lambda r: {"instruction": r.instruction, "response": r.response[:RESPONSE_CHARS]},
                      stage=f"curate_{judge}", seed=seed)
    out = []
    for record, result in results:
        if isinstance(result, LLMOutputError):
            out.append(Score(record.record_id, judge, None, f"{result.reason}: {result}"[:300]))
        else:
            out.append(Score(record.record_id, judge, normalise_score(result.data["score"]),
                             result.data["reason"][:300]))
    return out
