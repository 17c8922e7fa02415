"""Stage 1 — collect raw texts into the `documents` table.

Inputs: files (txt, md, rst, html, pdf), folders, globs, JSONL/Parquet with a
text column.  Identical texts are stored once (the document ID is a hash of
the text).  Bad input never stops the run and never vanishes: it is skipped
with a reason from this vocabulary and shown in the summary:

    empty, binary, undecodable, too_large, unsupported_format, no_text_extracted,
    read_error, missing_text_column, bad_row
"""

from __future__ import annotations

from typing import Iterator

from sftmill.core.ids import content_id
from sftmill.core.recipe import Recipe
from sftmill.core.store import Store
from sftmill.tasks.sources.documents import TABLE_SUFFIXES, Doc, Skip, expand_source, read_file, read_table
from sftmill.tasks.sources.fetch import Fetcher
from sftmill.tasks.stage_task import StageTimer, stage_task

STAGE = "collect"
def iter_documents(recipe: Recipe) -> Iterator[tuple[str, Doc | Skip]]:
    """(uri, Doc or Skip) for every item of every input, in recipe order."""
    urls = [source.url for source in recipe.inputs if source.url is not None]
    fetched = {}
    if urls:  # one batch: shared robots.txt cache and per-host politeness
        fetched = dict(zip(urls, Fetcher.from_recipe(recipe).fetch_many(urls)))
    for source in recipe.inputs:
        if source.url is not None:
            page = fetched[source.url]
            if page.ok:
                yield source.url, Doc(page.final_url, page.text, page.title, "url")
            else:
                yield source.url, Skip(page.reason, page.detail)
            continue
        for path in expand_source(source, recipe):
            if path.suffix.lower() in TABLE_SUFFIXES:
                for item in read_table(path, source):
                    yield path.as_uri(), item
                continue
            try:
                yield path.as_uri(), read_file(path, recipe.limits.max_file_bytes)
            except Skip as skip:
                yield path.as_uri(), skip
            except OSError as err:
                yield path.as_uri(), Skip("read_error", str(err))


def document_row(doc: Doc, query_id: str | None = None, round_no: int = 0) -> dict:
    text = doc.text.strip()
    return {"doc_id": content_id(text), "uri": doc.uri, "source_kind": doc.source_kind,
            "title": doc.title, "text": text, "n_chars": len(text),
            "query_id": query_id, "round": round_no}


def collect_into(store: Store, recipe: Recipe) -> tuple[int, int]:
    """Fill `documents`; return (items seen, documents stored)."""
    seen, rows = 0, {}
    for uri, item in iter_documents(recipe):
        seen += 1
        if isinstance(item, Skip):
            detail = f"{uri}: {item.detail}" if item.detail else uri
            store.reject(STAGE, content_id(uri, item.detail), item.reason, detail)
            continue
        row = document_row(item)
        rows.setdefault(row["doc_id"], row)  # identical texts are stored once
    store.insert("documents", list(rows.values()))
    return seen, len(rows)


@stage_task("collect", recipe=("inputs", "limits", "search"), writes=("documents",))
def collect(recipe: Recipe, db: str, inputs_fp: str):
    """Read every input into `documents` (`inputs_fp`: see inputs_fingerprint)."""
    store = Store.open(db)
    timer = StageTimer(store, STAGE)
    seen, stored = collect_into(store, recipe)
    return timer.done(store.ref("documents", "doc_id"), seen, stored)


def inputs_fingerprint(recipe: Recipe) -> str:
    """Changes when any input file is added, removed or modified, so the
    collect stage's cache follows the files, not only the recipe."""
    parts = []
    for source in recipe.inputs:
        if source.url is not None:
            parts.append(source.url)
            continue
        for path in expand_source(source, recipe):
            try:
                stat = path.stat()
            except OSError:
                continue
            parts.append((str(path), stat.st_size, stat.st_mtime_ns))
    return content_id(parts)
