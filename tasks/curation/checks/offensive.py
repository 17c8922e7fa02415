"""Offensive language: alt-profanity-check's linear model (shipped in its
wheel: offline, ~10,000 texts/s) gives each text the probability that it is
offensive; a record's score is the higher of instruction and response.  A
word-level classifier misses harm said politely: the LLM safety judge
(`judges.py`) is the check for that."""

from __future__ import annotations

from sftmill.tasks.curation.checks import Record, Score

BASIS = "alt-profanity-check"


def model():
    """The classifier's `predict_prob` (importing it loads scikit-learn and
    the pickled model: ~2.5 s of one core, which `curate.warm_up_models`
    moves off the curate stage)."""
    from profanity_check import predict_prob

    return predict_prob


def offensive_scores(records: list[Record]) -> list[Score]:
    if not records:
        return []
    probs = model()([r.instruction for r in records] + [r.response or " " for r in records])
    n = len(records)
    out = []
    for i, r in enumerate(records):
        p_in, p_out = float(probs[i]), float(probs[n + i])
        worst = "instruction" if p_in >= p_out else "response"
        out.append(Score(r.record_id, "offensive", max(p_in, p_out), f"worst: {worst}"))
    return out
