"""Rule-based checks of one text, shared by the pipeline's prompt and answer
checks, the classic generators and curation: degenerate text, refusal and
boilerplate phrases, answers copied from their passages, prompts and answers
that presuppose a source the reader will not have, malformed prompts.

Each function scores or finds; it never decides.  A finding is a short
string naming the rule and what matched (stored as a score's detail), or
None.  The thresholds of the degenerate-text rules are those of web-scale
pre-training filters — Gopher's repetition and quality rules (Rae et al.
2021, as datatrove implements them) and C4's (Raffel et al. 2020) — made to
fit short instruction–response texts: a rule that needs many words to mean
anything is applied only above its word count."""

from __future__ import annotations

import re
from collections import Counter

from sftmill.core.text import ends_mid_sentence, tokens

# Refusal and assistant boilerplate: case-insensitive regular expressions.
# The default of every flow's refusal check (overridable in the recipe).
REFUSAL_PATTERNS: tuple[str, ...] = (
    r"^\W*(?:sorry|i apologi[sz]e)\b(?!,? for\b)",
    r"\bas an ai\b",
    r"\bas a (?:large )?language model\b",
    r"\bi(?:'m| am) (?:just )?an ai\b",
    r"\bi(?:'m| am) (?:sorry|afraid),? (?:but )?i\b",
    r"\bi(?:'m| am) (?:unable|not able) to (?:help|answer|assist|provide|comply|fulfil)",
    r"\bi apologi[sz]e,? but\b",
    r"\bi can(?:no|')t (?:help|answer|assist|provide|comply|fulfil)(?! but)",
    r"\bi (?:do not|don't) have access to\b",
    r"\bi (?:do not|don't) have (?:personal )?(?:opinions|feelings|beliefs)\b",
    r"\bmy (?:knowledge|training) (?:cutoff|cut-off)\b",
    r"\bas of my (?:last|latest) (?:knowledge )?update\b",
    r"\b(?:against|violates?) (?:my|openai's) (?:ethical )?(?:guidelines|policies|programming)\b",
    r"\bi hope this helps\b",
    r"\bfeel free to ask\b",
)

_REFUSAL_RE: dict[tuple[str, ...], re.Pattern] = {}


def refusal(text: str, patterns: tuple[str, ...] = REFUSAL_PATTERNS) -> str | None:
    """The refusal or boilerplate phrase the text contains, quoted."""
    joined = _REFUSAL_RE.get(patterns)
    if joined is None:
        joined = _REFUSAL_RE[patterns] = re.compile("|".join(f"(?:{p})" for p in patterns),
                                                    re.IGNORECASE)
    found = joined.search(text) if patterns else None
    return f"{found.group(0)!r}" if found else None


# --- degenerate text --------------------------------------------------------

# Gopher's repetition rules: the share of characters in the most frequent
# n-gram (n = 2..4) and in duplicated n-grams (n = 5..10) above which a text
# is repetitive.
# Instructions and answers are short and often lists whose items share their
# first words (a menu, a survey): twice Gopher's shares.
TOP_NGRAM_SHARE = {2: 0.40, 3: 0.36, 4: 0.32}
DUP_NGRAM_SHARE = {5: 0.30, 6: 0.28, 7: 0.26, 8: 0.24, 9: 0.22, 10: 0.20}
MIN_WORDS_NGRAMS = 30  # below this, an n-gram share says nothing
MIN_WORDS_WORD_RULES = 10  # letters, word length, symbols
MAX_TOKEN_RUN = 4  # the same word this many times in a row (C4-style run of one token)
MAX_DUP_LINES = 0.5  # Gopher: 0.3 of lines duplicated; a dialogue or song repeats some
MIN_LETTER_WORDS = 0.3  # Gopher: 0.8 of words with a letter, for web pages; worked sums answer questions
MEAN_WORD_CHARS = (1.5, 12.0)  # Gopher: 3..10; formulas and technical terms need room
MAX_SYMBOL_RATIO = 0.1  # Gopher: '#' and ellipses per word
MIN_LETTER_SHARE = 0.4  # of letters and digits, once there are 40 of them: digit soup below
MIN_MEAN_TOKEN = 1.3  # letters per run of letters, from 10 runs: "I.M.K.S.B", "1e6, 1e9" below
_ELLIPSIS = re.compile(r"\.\.\.|…")
_BOILERPLATE = re.compile(r"lorem ipsum|enable javascript|javascript is disabled|"
                          r"\{\{\s*[a-z_]+\s*\}\}", re.IGNORECASE)  # C4's, and an unfilled template


def _ngram_shares(words: list[str]) -> str | None:
    total = sum(len(w) for w in words)
    for n, limit in TOP_NGRAM_SHARE.items():
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        gram, count = grams.most_common(1)[0]
        share = count * sum(len(w) for w in gram) / total if count > 1 else 0.0
        if share > limit:
            return f"the {n}-gram {' '.join(gram)!r} is {share:.0%} of the text (limit {limit:.0%})"
    for n, limit in DUP_NGRAM_SHARE.items():
        seen: set[tuple[str, ...]] = set()
        covered = [False] * len(words)
        for i in range(len(words) - n + 1):
            gram = tuple(words[i:i + n])
            if gram in seen:
                covered[i:i + n] = [True] * n
            seen.add(gram)
        share = sum(len(w) for w, c in zip(words, covered) if c) / total
        if share > limit:
            return f"duplicated {n}-grams are {share:.0%} of the text (limit {limit:.0%})"
    return None


def degenerate(text: str) -> str | None:
    """Which rule finds the text degenerate (repeated tokens, lines or
    n-grams; words without letters; symbol soup; template or page
    boilerplate), or None."""
    words = text.split()
    if not words:
        return None
    lowered = [w.lower() for w in words]
    run, longest, word = 1, 1, lowered[0]
    for prev, cur in zip(lowered, lowered[1:]):
        run = run + 1 if cur == prev and re.search(r"\w", cur) else 1
        if run > longest:
            longest, word = run, cur
    if longest >= MAX_TOKEN_RUN:
        return f"{word!r} {longest} times in a row"
    boiler = _BOILERPLATE.search(text)
    if boiler:
        return f"boilerplate {boiler.group(0)!r}"
    lines = [ln.strip() for ln in text.splitlines() if re.search(r"[^\W\d_]{3}", ln)]
    if len(lines) >= 4:
        dup = 1 - len(set(lines)) / len(lines)
        if dup > MAX_DUP_LINES:
            return f"{dup:.0%} of its lines are repeats (limit {MAX_DUP_LINES:.0%})"
    alnum = re.findall(r"[^\W_]", text)
    if len(alnum) >= 40:
        share = sum(c.isalpha() for c in alnum) / len(alnum)
        if share < MIN_LETTER_SHARE:
            return f"{share:.0%} of its letters and digits are letters (≥ {MIN_LETTER_SHARE:.0%})"
    runs = re.findall(r"[^\W\d_]+", text)
    if len(runs) >= 10 and sum(map(len, runs)) / len(runs) < MIN_MEAN_TOKEN:
        return f"mostly single letters ({sum(map(len, runs)) / len(runs):.1f} per word)"
    if len(words) >= MIN_WORDS_NGRAMS:  # a short list of numbers answers a question
        letters = sum(bool(re.search(r"[^\W\d_]", w)) for w in words) / len(words)
        if letters < MIN_LETTER_WORDS:
            return f"{letters:.0%} of its words have a letter (≥ {MIN_LETTER_WORDS:.0%})"
    if len(words) >= MIN_WORDS_WORD_RULES:
        low, high = MEAN_WORD_CHARS
        mean = sum(len(w) for w in words) / len(words)
        if not low <= mean <= high:
            return f"mean word length {mean:.1f} (bounds {low:g}–{high:g})"
    if len(words) >= MIN_WORDS_NGRAMS:  # "(a) … (b) …" in a short answer is an elision
        symbols = (text.count("#") + len(_ELLIPSIS.findall(text))) / len(words)
        if symbols > MAX_SYMBOL_RATIO:
            return f"{symbols:.2f} '#' or ellipses per word (limit {MAX_SYMBOL_RATIO})"
        return _ngram_shares(lowered)
    return None


# --- copying from passages -------------------------------------------------

COPY_NGRAM = 5  # words: a run this long found in a passage is copied


def copied_share(answer: str, passages: list[str], n: int = COPY_NGRAM) -> float:
    """The share of the answer's words inside a run of at least `n` words
    that appears word for word in one of the passages (extractive coverage;
    citation markers and case ignored).  0 for an answer shorter than `n`."""
    words = tokens(re.sub(r"\[\d{1,3}\]", " ", answer))
    if len(words) < n or not passages:
        return 0.0
    grams: set[tuple[str, ...]] = set()
    for passage in passages:
        p = tokens(passage)
        grams.update(tuple(p[i:i + n]) for i in range(len(p) - n + 1))
    covered = [False] * len(words)
    for i in range(len(words) - n + 1):
        if tuple(words[i:i + n]) in grams:
            covered[i:i + n] = [True] * n
    return sum(covered) / len(words)


# --- self-containedness ----------------------------------------------------

# An input or quotation given with the prompt: a line after it, text after a colon, a long quote.
_ATTACHED = re.compile(r"\n\s*\S[^\n]{19,}|:\s+\S[^\n]{19,}|\"[^\"]{20,}\"|“[^”]{20,}”")
_SOURCE = (r"(?:passage|excerpt|article|paragraph|text|document|extract|snippet|reading|essay|"
           r"transcript|source material)")
_PROMPT_SOURCE = re.compile(
    r"\b(?:the|this|that|these|above|aforementioned)\s+(?:(?:given|provided|above|preceding|"
    rf"following|original|quoted|cited)\s+)?{_SOURCE}s?\b(?!\s+(?:of|about|on|by|from)\b)"
    r"|\bthe\s+(?:author|writer|narrator)s?\b(?!\s+of\b)"
    r"|\baccording to the\s+(?:sources?|notes)\b", re.IGNORECASE)
_ANSWER_SOURCE = re.compile(
    r"\b(?:the|these|those|both|provided|given|above|cited|retrieved)\s+(?:(?:provided|given|above|"
    r"cited|retrieved)\s+)?(?:passages?|excerpts?|sources|documents)\b(?!\s+(?:of|about|on|by|from)\b)"
    r"|\b(?:the\s+)?(?:provided|given)\s+(?:text|context|information)\b"
    r"|\baccording to (?:the\s+)?(?:passage|source|text|document|excerpt|context)s?\b"
    r"|\b(?:passage|source)\s+\[?\d", re.IGNORECASE)


def presupposes_source(text: str, role: str) -> str | None:
    """The words with which a prompt (`role` 'prompt') presupposes a text
    the user does not have ("the passage", "the author") — unless the prompt
    itself gives that text — or with which an answer talks about its
    sources ("the sources", "passage [2]"); None if it reads on its own."""
    pattern = _PROMPT_SOURCE if role == "prompt" else _ANSWER_SOURCE
    found = pattern.search(text)
    if not found:
        return None
    if role == "prompt" and _ATTACHED.search(text, found.start()):
        return None
    return f"{found.group(0)!r}"


# --- malformed prompts -----------------------------------------------------

_DOUBLED = re.compile(r"\b([^\W\d_]{2,})[ \t]+\1\b", re.IGNORECASE)
_DOUBLE_OK = frozenset({"that", "had", "is", "bye", "ha", "no", "very", "so", "knock", "tut"})
_SCAFFOLD = re.compile(r"^\s*(?:\d{1,3}\s*[.)]\s|(?:task|instruction|output)\s*\d*\s*:)",
                       re.IGNORECASE)
_LIST_MARK = re.compile(r"(?:^|(?<=\s))\(?[0-9a-zA-Z]\)")
_PAIRS = (("(", ")"), ("[", "]"), ("{", "}"), ("“", "”"))


def malformed_prompt(text: str) -> str | None:
    """What makes a prompt malformed: a doubled word ("when when"),
    unbalanced quotes or brackets, a list number or label the generator left
    at its start, or a question cut off mid-sentence."""
    for m in _DOUBLED.finditer(text):
        if m.group(1).lower() not in _DOUBLE_OK and not m.group(1)[0].isupper():  # "Lang Lang"
            return f"doubled word {m.group(0)!r}"
    if text.count('"') % 2 or text.count("```") % 2:
        return "unbalanced quotes"
    listed = _LIST_MARK.sub(" ", text)  # "1) …; 2) …" closes nothing
    for open_, close in _PAIRS:
        if listed.count(open_) != listed.count(close):
            return f"unbalanced {open_}{close}"
    scaffold = _SCAFFOLD.match(text)
    if scaffold:
        return f"starts with {scaffold.group(0).strip()!r}"
    if "\n" not in text.strip() and ends_mid_sentence(text):
        return f"cut off: ends {text.rstrip()[-20:]!r}"
    return None
