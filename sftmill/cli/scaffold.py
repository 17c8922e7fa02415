"""`sftmill init`: a commented recipe for a folder of the user's own texts.

Every field is written with its meaning as a comment, taken from the
pydantic models in `sftmill.core.recipe` (the same text `sftmill init --help`
lists), so the recipe explains itself and the two never disagree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from sftmill.core.recipe import Recipe
from sftmill.llm.backends import make_llm
from sftmill.llm.errors import LLMOutputError
from sftmill.llm.request import ChatRequest
from sftmill.prompts import exact_items, load_template, with_schema
from sftmill.tasks.sources.documents import Skip, read_file

# Sections written with their defaults; the rest come from the arguments.
SECTIONS = ("llm", "embedding", "sizes", "generation", "chunking", "thresholds", "answers", "search",
            "export", "limits")
SKIP = {"base_dir", "schedule"}


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


def _section(model: BaseModel, indent: int, prefix: str) -> list[str]:
    lines, pad = [], " " * indent
    for name, info in type(model).model_fields.items():
        if name in SKIP:
            continue
        meaning = _meaning(prefix + name, info.description)
        if meaning:
            lines.append(f"{pad}# {meaning}")
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            lines.append(f"{pad}{name}:")
            lines += _section(value, indent + 2, f"{prefix}{name}.")
        else:
            lines.append(f"{pad}{name}: {_scalar(value if not isinstance(value, tuple) else list(value))}")
    return lines


def render_recipe(name: str, domain: str, inputs: Path, recipe_dir: Path,
                  subdomains: list[str], use_cases: list[str] | None = None) -> str:
    """The recipe's YAML text, every field commented."""
    rel = os.path.relpath(inputs.resolve(), recipe_dir.resolve())
    base = Recipe(name=name, output_dir=f"runs/{name}", domain={"name": domain},
                  inputs=[{"path": rel}], search={"backend": "none"})
    docs = dict(field_docs())
    lines = [f"# sftmill recipe for {domain}, written by `sftmill init`.",
             "# Paths are relative to this file.  Check it:  sftmill validate <this file>",
             "", f"# {docs['name']}", f"name: {name}", f"# {docs['output_dir']}",
             f"output_dir: runs/{name}", "", "domain:", f"  # {docs['domain.name']}",
             f"  name: {_scalar(domain)}", f"  # {docs['domain.description']}",
             f"  description: {_scalar(f'Questions and answers about {domain}.')}",
             f"  # {docs['domain.relevant']}",
             f"  relevant: {_scalar(f'Facts, explanations and history about {domain}.')}",
             f"  # {docs['domain.subdomain_by']}", "  subdomain_by: llm",
             f"  # {docs['domain.subdomains']}"]
    if subdomains:
        lines.append("  subdomains:")
        lines += [f"    - name: {_scalar(s)}" for s in subdomains]
        lines.append("      # share: 0.4   (optional target share per subdomain; the rest split what is left)")
    else:
        lines += ["  subdomains: []   # fill in, e.g.  - {name: Quarks and hadrons, share: 0.5}"]
    lines += [f"  # {docs['domain.use_cases']}", "  use_cases:"]
    lines += [f"    - {_scalar(u)}" for u in (use_cases or [f"Learning about {domain}"])]
    lines += ["", f"# {docs['inputs']}", "inputs:", f"  - path: {_scalar(rel)}", ""]
    for section in SECTIONS:
        lines.append(f"# {docs[section]}")
        lines.append(f"{section}:")
        lines += _section(getattr(base, section), 2, f"{section}.")
        lines.append("")
    lines += [f"# {docs['seed']}", "seed: 0", ""]
    return "\n".join(lines)


def propose_subdomains(folder: Path, domain: str, n: int, endpoint) -> list[str]:
    """Subdomains proposed by the generator from the texts' section headings
    and opening lines (empty when it gives nothing usable)."""
    excerpts = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file())[:40]:
        try:
            text = read_file(path, 20_000_000).text
        except (Skip, OSError):
            continue
        heads = [ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("#")]
        first = " ".join(text.split())[:160]
        excerpts.append(f"{path.name}: " + ("; ".join(heads[:8]) if heads else first))
    if not excerpts:
        return []
    base = load_template("propose_subdomains")
    template = with_schema(base, exact_items(base.schema, "subdomains", n))
    llm = make_llm(endpoint)
    try:
        result = llm.chat(ChatRequest.build(
            template.messages(domain=domain, excerpts=excerpts[:20], n=n), schema=template.schema,
            temperature=0.0, max_tokens=min(endpoint.max_tokens, 200), stage="init"))
    except LLMOutputError:
        return []
    names = [" ".join(s.split()) for s in result.data["subdomains"]]
    return list(dict.fromkeys(s for s in names if s and s.lower() != domain.lower()))
