"""Plain answers for generated instructions (no retrieval), and the checks
that drop a poor one — shared by Evol-Instruct, the template generator and
the augmentations.

Poor-answer reasons (after WizardLM's instruction eliminator):
    empty_response       nothing came back
    response_truncated   the answer used the whole token budget, or stops mid-sentence
                         (on a colon, a comma, "and" …: `ends_mid_sentence`)
    response_refusal     a refusal or boilerplate phrase (`sftmill.core.text_rules.refusal`)
    response_too_short   fewer than `min_words` words that are not stop words
"""

from __future__ import annotations

from typing import Sequence

from sftmill.core.endpoints import LLMEndpoint
from sftmill.core.text import STOPWORDS, ends_mid_sentence, tokens
from sftmill.core.text_rules import refusal
from sftmill.llm.map import answered, llm_map, truncated
from sftmill.prompts import load_template


def response_problem(text: str, was_truncated: bool, min_words: int = 3) -> str | None:
    """Why an answer is too poor to keep (None: keep it)."""
    if not text.strip():
        return "empty_response"
    if was_truncated or ends_mid_sentence(text):
        return "response_truncated"
    if refusal(text):
        return "response_refusal"
    if sum(t not in STOPWORDS for t in tokens(text)) < min_words:
        return "response_too_short"
    return None


def respond(store, llm, endpoint: LLMEndpoint, items: Sequence[tuple[str, str]], *,
            stage: str, seed: int = 0, min_words: int = 3) -> dict[str, tuple[str, str, str]]:
    """Answer each (item_id, instruction); returns item_id → (response, call
    key, template version) for the answers that pass the checks.  The others
    become rejects of `stage` with their reason."""
    template = load_template("respond")
    results = llm_map(llm, endpoint, template, list(items),
                      lambda item: {"instruction": item[1]}, stage=stage, seed=seed)
    out = {}
    with store.drops(stage) as drops:
        for (item_id, _instruction), result in answered(store, stage, results, lambda i: i[0]):
            text = result.text.strip()
            problem = response_problem(text, truncated(result, endpoint.max_tokens), min_words)
            if problem:
                drops.add(item_id, problem, text[:300])
            else:
                out[item_id] = (text, result.key, template.version)
    return out
