"""The rule-based text checks of `sftmill.core.text_rules` as curation
scores: refusal and boilerplate phrases, degenerate text, text that is not
self-contained, malformed instructions (1 when found, the detail says
what), and the share of a response copied from the passages it cites."""

from __future__ import annotations

from sftmill.core.curation import Curation
from sftmill.core.text_rules import copied_share, degenerate, malformed_prompt, presupposes_source, refusal
from sftmill.tasks.curation.checks import Record, Score


def _found(record_id: str, check: str, finding: str | None) -> Score:
    return Score(record_id, check, 1.0 if finding else 0.0, finding or "")


def text_rule_scores(records: list[Record], cfg: Curation) -> list[Score]:
    patterns = tuple(cfg.refusals.patterns)
    out = []
    for r in records:
        if cfg.refusals.enabled:
            out.append(_found(r.record_id, "refusal", refusal(r.instruction, patterns)
                              or refusal(r.response, patterns)))
        if cfg.degenerate.enabled:
            found = [f"{part}: {why}" for part, text in (("instruction", r.instruction),
                                                         ("response", r.response))
                     if (why := degenerate(text))]
            out.append(_found(r.record_id, "degenerate", "; ".join(found)))
        if cfg.self_contained.enabled:
            out.append(_found(r.record_id, "not_self_contained", (
                presupposes_source(r.instruction, "prompt") or presupposes_source(r.response, "answer"))))
        if cfg.malformed_prompts.enabled:
            out.append(_found(r.record_id, "malformed_prompt", malformed_prompt(r.instruction)))
        if cfg.copies_passage.enabled and r.passages:
            out.append(Score(r.record_id, "copied_share", copied_share(r.response, list(r.passages))))
    return out
