"""Length bounds for instruction and response, in characters and tokens
(estimated as characters / 4, as the chunker does: no tokenizer to load)."""

from __future__ import annotations

from sftmill.tasks.curation.checks import Record, Score

CHARS_PER_TOKEN = 4


def length_scores(records: list[Record]) -> list[Score]:
    out = []
    for r in records:
        for part, text in (("instruction", r.instruction), ("response", r.response)):
            n = len(text.strip())
            out.append(Score(r.record_id, f"{part}_chars", float(n)))
            out.append(Score(r.record_id, f"{part}_tokens", float(-(-n // CHARS_PER_TOKEN))))
    return out
