"""`sftmill init`: a short, commented recipe for a folder of the user's own texts.

The recipe holds only what differs from the defaults; `sftmill init --help`
lists every field with its meaning, taken from the pydantic models in
`sftmill.core.recipe` (`field_docs`), so the two never disagree.
Subdomains are proposed from what the texts are about: their passages are
embedded and clustered, the generator names each cluster from its telling
words and an excerpt, and a name that is a file name, a title copied whole
or a repeat is replaced by the cluster's own words (`topic_problem`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel

from sftmill.core.endpoints import Embedding, LLMEndpoint
from sftmill.core.recipe import Recipe
from sftmill.core.text import STOPWORDS, tokens
from sftmill.embed.clusters import distinctive_words, kmeans
from sftmill.embed.embedder import Embedder
from sftmill.llm.backends import make_llm
from sftmill.llm.errors import LLMOutputError
from sftmill.llm.request import ChatRequest
from sftmill.prompts import exact_items, load_template, with_schema
from sftmill.tasks.sources.documents import Skip, read_file
from sftmill.tasks.stages.chunk import chunk_text

SKIP = {"base_dir", "schedule"}
MAX_FILES = 400
PASSAGE_TOKENS = 200


# Meanings of the fields whose pydantic definition has no description.
MEANING = {
    "name": "Run name (letters, digits, '.', '_', '-'): names the run in summaries and cards.",
    "domain": "What the dataset is about.",
    "domain.subdomains": "Parts of the domain, each with an optional target share of prompts.",
    "inputs": "Your texts: files, folders, globs, JSONL/Parquet with a text column, or URLs.",
    "llm": "The LLM per role: generator (profiles, prompts, answers) and judge (filters).",
    "llm.generator": "Writes profiles, queries, prompts and answers.",
    "temperature": "Sampling temperature (0: deterministic).",
    "top_p": "Nucleus sampling mass.",
    "max_tokens": "Most tokens per answer; a longer answer is cut off and dropped.",
    "timeout_s": "Seconds before a request counts as failed (and is retried).",
    "max_concurrency": "Requests in flight at once (servers only).",
    "max_retries": "Retries of a failed request (timeouts, 429, 5xx) with backoff.",
    "embedding": "The sentence-embedding model for retrieval and near-duplicate removal.",
    "batch_size": "Texts embedded per batch.",
    "device": "Where embeddings run: cpu, cuda, or auto.",
    "sizes": "How much to make.",
    "generation": "How the generator is asked for prompts.",
    "sizes.target_prompts": "Prompts wanted: decides how many profiles generate (and whether a web round runs).",
    "sizes.prompts_per_profile": "Prompts generated from each selected profile.",
    "sizes.broaden_per_profile": "Prompts on neighbouring topics per profile (recipe step 7).",
    "sizes.queries_per_profile": "Web search queries written per profile in a web round.",
    "chunking": "How texts are cut into passages.",
    "thresholds": "Scores decide here: changing a threshold re-decides without new LLM calls.",
    "limits": "Size limits on inputs.",
    "max_file_bytes": "Larger input files are skipped (too_large).",
    "max_page_bytes": "Larger web pages are skipped (too_large).",
    "search": "Web search for fresh documents (recipe step 5) and answer passages.",
    "searxng_url": "Your SearxNG's address, when backend is searxng.",
    "results_per_query": "Search results fetched per query.",
    "respect_robots": "Obey robots.txt when fetching pages.",
    "per_host_delay_s": "Seconds between requests to one host.",
    "per_host_concurrency": "Requests in flight to one host.",
    "answers": "The answer half: extended queries, retrieval, grounded answers and their checks.",
    "min_chars": "Shorter answers are dropped (too_short).",
    "max_chars": "Longer answers are dropped (too_long).",
    "export": "The exported dataset.",
    "format": "openai (messages), sharegpt (conversations) or alpaca.",
    "seed": "Seed for sampling and every random choice: same seed, same run.",
}


def _meaning(dotted: str, description: str | None) -> str:
    return description or MEANING.get(dotted) or MEANING.get(dotted.rsplit(".", 1)[-1], "")


def _model_of(annotation) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def field_docs(model: type[BaseModel] = Recipe, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted field, meaning) for every field of the recipe, depth first."""
    out = []
    for name, info in model.model_fields.items():
        if name in SKIP:
            continue
        out.append((prefix + name, _meaning(prefix + name, info.description)))
        inner = _model_of(info.annotation)
        if inner is not None:
            out += field_docs(inner, f"{prefix}{name}.")
    return out


def _scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


@dataclass
class Topic:
    name: str
    description: str
    note: str = ""  # why the generator's name was replaced, if it was


def read_texts(folder: Path) -> list[tuple[str, str]]:
    """(file name, text) of the readable files under `folder`."""
    out = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file())[:MAX_FILES]:
        try:
            out.append((path.name, read_file(path, 20_000_000).text))
        except (Skip, OSError, ValueError):
            continue
    return out


def _norm(text: str) -> str:
    return " ".join(tokens(text))


def titles_of(texts: list[tuple[str, str]]) -> set[str]:
    """What a proposed name must not copy whole: file names and stems, headings, first lines."""
    out = set()
    for name, text in texts:
        out.update({_norm(name), _norm(Path(name).stem)})
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        out.update(_norm(ln.lstrip("# ")) for ln in lines if ln.startswith("#"))
        if lines:
            out.add(_norm(lines[0].lstrip("# ")))
    return out - {""}


_FILE_LIKE = re.compile(r"(?:\.(?:html?|md|txt|pdf|json|jsonl|py|rst|csv|docx?)\b|[/\\]|\w\.\w+\.\w)",
                        re.IGNORECASE)


def topic_problem(name: str, titles: set[str], taken: set[str], domain: str,
                  words: list[str]) -> str | None:
    """Why `name` is not a topic subdomain of `domain` for a cluster whose
    telling words are `words`: a file name, a title or heading copied whole,
    the domain's own words, none of the cluster's words, too long, or a
    repeat; None if it will do."""
    norm = _norm(name)
    if not norm:
        return "empty"
    if _FILE_LIKE.search(name):
        return "a file name"
    if norm in titles:
        return "a title copied whole"
    if set(norm.split()) <= set(tokens(domain)) | STOPWORDS:
        return "only the domain's own words"
    stems = {w[:5] for w in words}
    if not any(w[:5] in stems for w in norm.split() if w not in STOPWORDS):
        return "about none of the cluster's words"
    if len(norm.split()) > 6:
        return "too long for a topic"
    if norm in taken:
        return "a repeat"
    return None


def keyword_name(words: list[str]) -> str:
    """A topic named by its two most telling words."""
    if not words:
        return "Other topics"
    return words[0].capitalize() + (f" and {words[1]}" if len(words) > 1 else "")


def propose_subdomains(folder: Path, domain: str, n: int, endpoint: LLMEndpoint) -> list[Topic]:
    """Up to `n` topic subdomains of the texts under `folder`: clusters of
    their passages' embeddings, named by the generator (a name that is not a
    topic is replaced by the cluster's telling words)."""
    texts = read_texts(folder)
    passages = [c.text for _name, text in texts for c in chunk_text(text, PASSAGE_TOKENS, 24)]
    if not passages:
        return []
    vectors = np.asarray(Embedder(Embedding()).embed(passages), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
    labels = kmeans(vectors, n)
    words = distinctive_words(passages, labels, top=12, ignore=frozenset(tokens(domain)))
    order = sorted(words, key=lambda j: (-int((labels == j).sum()), j))  # largest first
    excerpts = []
    for j in order:
        members = np.flatnonzero(labels == j)
        centre = vectors[members].mean(axis=0)
        best = members[int(np.argmax(vectors[members] @ centre))]
        excerpts.append(" ".join(passages[best].split())[:240])
    named = _names(domain, [{"words": words[j][:8], "excerpt": e} for j, e in zip(order, excerpts)],
                   endpoint)
    titles, taken, out = titles_of(texts), set(), []
    for j, name in zip(order, named + [""] * (len(order) - len(named))):
        name = " ".join(name.split()).strip(" .\"'")
        problem = topic_problem(name, titles, taken, domain, words[j])
        note = ""
        if problem:
            note = f"{name!r} is {problem}: named by its words" if name else "named by its words"
            name = keyword_name(words[j])
            if _norm(name) in taken:
                continue
        taken.add(_norm(name))
        out.append(Topic(name, "Texts about " + ", ".join(words[j][:5]) + ".", note))
    return out


def _names(domain: str, topics: list[dict], endpoint: LLMEndpoint) -> list[str]:
    base = load_template("propose_subdomains")
    template = with_schema(base, exact_items(base.schema, "subdomains", len(topics)))
    try:
        result = make_llm(endpoint).chat(ChatRequest.build(
            template.messages(domain=domain, topics=topics), schema=template.schema,
            temperature=0.0, max_tokens=min(endpoint.max_tokens, 40 * len(topics) + 40), stage="init"))
    except LLMOutputError:
        return []
    return [str(s) for s in result.data["subdomains"]]


def render_recipe(name: str, domain: str, inputs: Path, recipe_dir: Path,
                  subdomains: list[Topic], use_cases: list[str] | None = None) -> str:
    """The recipe's YAML text: what differs from the defaults, commented."""
    rel = os.path.relpath(inputs.resolve(), recipe_dir.resolve())
    docs = dict(field_docs())
    lines = [f"# sftmill recipe for {domain}, written by `sftmill init`.",
             "# Only what differs from the defaults is here: `sftmill init --help` lists every",
             "# field and its meaning.  Paths are relative to this file.",
             "# Check it:  sftmill validate <this file>      Preview:  sftmill run <this file> --preview 5",
             "", f"name: {name}", f"output_dir: runs/{name}", "", "domain:",
             f"  name: {_scalar(domain)}",
             f"  description: {_scalar(f'Questions and answers about {domain}.')}",
             f"  # {docs['domain.relevant']}",
             f"  relevant: {_scalar(f'Facts, explanations and history about {domain}.')}"]
    if subdomains:
        lines += ["  # Topics found in your texts (clusters of their passages, named by the generator):",
                  "  # rename them, and give each a target share of prompts (share: 0.4) if you like.",
                  "  subdomains:"]
        for topic in subdomains:
            lines += [f"    - name: {_scalar(topic.name)}",
                      f"      description: {_scalar(topic.description)}"]
    else:
        lines += ["  subdomains: []   # fill in, e.g.  - {name: Quarks and hadrons, share: 0.5}"]
    lines += ["  use_cases:"] + [f"    - {_scalar(u)}" for u in (use_cases or [f"Learning about {domain}"])]
    lines += ["", "inputs:", f"  - path: {_scalar(rel)}", "",
              "# Both roles use the embedded SmolLM2-135M (no server): fine for trying sftmill out.",
              "# For real data, point them at an OpenAI-compatible server (vLLM, SGLang, Ollama, an API):",
              "# llm:",
              "#   generator: {backend: openai, base_url: http://127.0.0.1:8000/v1, model: <served name>}",
              "#   judge: {backend: openai, base_url: http://127.0.0.1:8000/v1, model: <served name>}",
              "", "search:", "  # Only your texts; searxng, brave or tavily also fetch fresh web pages.",
              "  backend: none", "", "sizes:", f"  # {docs['sizes.target_prompts']}",
              f"  target_prompts: {Recipe.model_fields['sizes'].default_factory().target_prompts}", ""]
    return "\n".join(lines)
