"""Keyword / regex blocklist and allowlist: case-insensitive regular
expressions from the config, searched in instruction and response.  The
score is 1 when a pattern matched (the detail quotes the match), else 0."""

from __future__ import annotations

import re

from sftmill.tasks.curation.checks import Record, Score


def compile_patterns(patterns: list[str]) -> list[re.Pattern]:
    return [re.compile(p, re.IGNORECASE) for p in patterns]


def keyword_scores(records: list[Record], block: list[str], allow: list[str]) -> list[Score]:
    blocked, allowed = compile_patterns(block), compile_patterns(allow)
    out = []
    for r in records:
        text = f"{r.instruction}\n{r.response}"
        for check, patterns in (("blocked_keyword", blocked), ("allowed_keyword", allowed)):
            if not patterns:
                continue
            hit = next((m for p in patterns for m in [p.search(text)] if m), None)
            out.append(Score(r.record_id, check, 1.0 if hit else 0.0,
                             f"{hit.re.pattern!r} matched {hit.group(0)!r}" if hit else ""))
    return out
