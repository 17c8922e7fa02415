"""Stage 2 — chunk documents, structure-aware and bounded in tokens.

Blocks are paragraphs (split at blank lines), headings (Markdown `#` lines or
short title lines followed by a blank line) and lists (consecutive bullet or
numbered lines).  Blocks are packed into chunks up to `max_tokens`; a heading
starts a new chunk and is remembered as the chunk's heading; a block too big
for one chunk is split at sentence ends, then at spaces.  Tokens are
estimated as characters / 4, which is close for English with Llama-style
tokenizers and costs nothing.  Every chunk keeps its character offsets in its
document, so `document.text[start:end] == chunk.text`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sftmill.core.ids import content_id
from sftmill.core.progress import progress
from sftmill.core.recipe import Recipe
from sftmill.core.store import Store
from sftmill.tasks.stage_task import StageResult, StageTimer, stage_task

STAGE = "chunk"
CHARS_PER_TOKEN = 4
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+\S")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+\S")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def estimate_tokens(text: str) -> int:
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


@dataclass(frozen=True)
class Block:
    start: int
    end: int
    kind: str  # heading | list | paragraph


@dataclass(frozen=True)
class Chunk:
    start: int
    end: int
    heading: str
    text: str

    @property
    def n_tokens(self) -> int:
        return estimate_tokens(self.text)


def _line_spans(text: str) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for line in text.splitlines(keepends=True):
        spans.append((pos, pos + len(line.rstrip("\r\n"))))
        pos += len(line)
    return spans


def split_blocks(text: str) -> list[Block]:
    """Headings, lists and paragraphs with their offsets."""
    blocks: list[Block] = []
    current: list[tuple[int, int]] = []
    kind = "paragraph"

    def flush():
        nonlocal current
        if current:
            blocks.append(Block(current[0][0], current[-1][1], kind))
        current = []

    for start, end in _line_spans(text):
        line = text[start:end]
        if not line.strip():
            flush()
            continue
        if _HEADING.match(line):
            flush()
            blocks.append(Block(start, end, "heading"))
            continue
        line_kind = "list" if _LIST_ITEM.match(line) else "paragraph"
        if current and line_kind == "list" and kind != "list":
            flush()
        if not current:
            kind = line_kind
        current.append((start, end))
    flush()
    return blocks


def _split_oversized(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """Cut [start, end) into pieces of at most max_chars, at sentence ends
    when possible, else at spaces, else hard."""
    pieces, pos = [], start
    while end - pos > max_chars:
        window = text[pos:pos + max_chars]
        cut = max((m.start() for m in _SENTENCE_END.finditer(window)), default=-1)
        if cut < max_chars // 3:
            cut = window.rfind(" ")
        if cut < max_chars // 3:
            cut = max_chars
        pieces.append((pos, pos + cut))
        pos += cut
        while pos < end and text[pos].isspace():
            pos += 1
    if pos < end:
        pieces.append((pos, end))
    return pieces


def chunk_text(text: str, max_tokens: int, min_tokens: int = 1) -> list[Chunk]:
    """Chunks of `text` (see module docstring); chunks under `min_tokens` are
    left out (the caller records them as `too_short`)."""
    max_chars = max_tokens * CHARS_PER_TOKEN
    chunks: list[Chunk] = []
    heading = ""
    span: list[int] | None = None  # [start, end] of the chunk being built

    def emit():
        nonlocal span
        if span is not None:
            body = text[span[0]:span[1]]
            chunks.append(Chunk(span[0], span[1], heading, body))
        span = None

    for block in split_blocks(text):
        if block.kind == "heading":
            emit()
            heading = text[block.start:block.end].strip().lstrip("#").strip()
            continue
        for piece_start, piece_end in _split_oversized(text, block.start, block.end, max_chars):
            if span is not None and piece_end - span[0] > max_chars:
                emit()
            if span is None:
                span = [piece_start, piece_end]
            else:
                span[1] = piece_end
    emit()
    return chunks


def chunk_documents(store: Store, recipe: Recipe, doc_ids: list[str] | None = None) -> tuple[int, int]:
    """Chunk documents (all, or `doc_ids`) into `chunks`; return (docs, chunks kept)."""
    where = "WHERE doc_id IN (SELECT unnest(?))" if doc_ids is not None else ""
    docs = store.execute(f"SELECT doc_id, text FROM documents {where} ORDER BY doc_id",
                         [doc_ids] if doc_ids is not None else None)
    cfg = recipe.chunking
    # Re-chunking replaces a document's chunks (a changed chunk size must not
    # leave the old chunks behind).
    store.execute(f"DELETE FROM chunks {where}", [doc_ids] if doc_ids is not None else None)
    rows = []
    with progress("chunk", len(docs)) as bar:
        for doc_id, text in docs:
            for idx, chunk in enumerate(chunk_text(text, cfg.max_tokens)):
                chunk_id = content_id(doc_id, chunk.start, chunk.end)
                if chunk.n_tokens < cfg.min_tokens:
                    store.reject(STAGE, chunk_id, "too_short",
                                 f"{chunk.n_tokens} tokens < {cfg.min_tokens}: {chunk.text[:80]}")
                    continue
                rows.append({"chunk_id": chunk_id, "doc_id": doc_id, "idx": idx,
                             "char_start": chunk.start, "char_end": chunk.end,
                             "heading": chunk.heading, "text": chunk.text,
                             "n_tokens": chunk.n_tokens})
            bar.advance()
    store.insert("chunks", rows)
    return len(docs), len(rows)


@stage_task("chunk", recipe=("chunking",), reads=("documents",), writes=("chunks",))
def chunk(recipe: Recipe, documents: StageResult) -> StageResult:
    """Chunk every document (re-chunking replaces a document's old chunks)."""
    store = Store.open(documents.out.db_path)
    timer = StageTimer(store, STAGE)
    n_docs, n_chunks = chunk_documents(store, recipe)
    return timer.done(store.ref("chunks", "chunk_id"), n_docs, n_chunks)
