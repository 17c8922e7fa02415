"""Word-level text measures shared by the stages, the generators and the checks: lower-cased
word tokens, stop words, and whether a text stops mid-sentence."""

from __future__ import annotations

import re

_TOKEN_RE = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    """Lower-cased runs of letters and digits."""
    return _TOKEN_RE.findall(text.lower())


STOPWORDS = frozenset(
    "a an the and or but if then so of to in on at by for with from as is are was were be been "
    "it its this that these those i you he she we they me my your our their not no yes do does "
    "did can could would should will shall may might must here there what which who how why when "
    "ok okay".split())


_CITATION_TAIL = re.compile(r"(\s*\[\d{1,3}\])+\s*$")
_DANGLING = re.compile(r"(?:[:,;(\[{–—-]|\b(?:and|or|the|a|an|of|to|with|such as|including|"
                       r"are|is|which|that|because|e\.g\.|i\.e\.))\s*$", re.IGNORECASE)


def ends_mid_sentence(text: str) -> bool:
    """The text stops where no complete answer stops: on a colon, comma or
    open bracket, or on a word that needs a continuation ("and", "the",
    "such as" …).  Citation markers at the end are ignored."""
    text = text.rstrip()
    window = 256  # only the end matters: the patterns are anchored there
    while True:
        tail = _CITATION_TAIL.sub("", text[-window:])
        if len(tail) > 64 or window >= len(text):
            return bool(_DANGLING.search(tail))
        window *= 4  # the window was (nearly) all citation markers
