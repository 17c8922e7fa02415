"""Documents from files: text, Markdown, reStructuredText, HTML, PDF, and rows of JSONL or
Parquet tables; bytes decoded by their BOM or detected encoding.  A file that cannot be read is a
`Skip` with its reason, never an exception for the stage."""

from __future__ import annotations

import codecs
import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from charset_normalizer import from_bytes

from sftmill.core.recipe import Recipe
from sftmill.core.sections import InputSource

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".text", ""}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
TABLE_SUFFIXES = {".jsonl", ".parquet"}


class Skip(Exception):
    """One input item cannot be used; `reason` is from the module's vocabulary."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Doc:
    uri: str
    text: str
    title: str = ""
    source_kind: str = "file"


def expand_source(source: InputSource, recipe: Recipe) -> list[Path]:
    """The files one `path` input stands for (a file, a folder, or a glob)."""
    resolved = recipe.resolve(source.path)
    if glob.has_magic(source.path):
        return sorted(Path(p) for p in glob.glob(str(resolved), recursive=True) if Path(p).is_file())
    if resolved.is_dir():
        return sorted(p for p in resolved.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [resolved]


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))


def decode_text(raw: bytes) -> str:
    """Text from bytes: a byte-order mark decides (UTF-8/16/32); else UTF-8;
    else the encoding charset-normalizer detects (latin-1, cp1252, …).
    NUL bytes without a BOM mean binary."""
    for bom, encoding in _BOMS:  # UTF-32 LE before UTF-16 LE: its BOM starts the same
        if raw.startswith(bom):
            try:
                return raw.decode(encoding)
            except UnicodeDecodeError as err:
                raise Skip("undecodable", f"not {encoding} at byte {err.start}") from None
    if b"\x00" in raw[:8192]:
        raise Skip("binary", "NUL bytes in the first 8 KiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        utf8_error = err.start

    matches = list(from_bytes(raw))
    best = matches[0] if matches else None
    # Single-byte encodings often tie (cp1250, cp1252, cp1257 read plain Latin
    # text equally well); on a tie take windows-1252, which is what "latin-1"
    # means on the web (WHATWG) and the commonest legacy encoding by far.
    for m in matches:
        if (m.encoding in ("cp1252", "latin_1") and m.chaos <= best.chaos
                and m.coherence >= best.coherence):
            best = m
            break
    if best is None:
        raise Skip("undecodable", f"not UTF-8 at byte {utf8_error}, and no other text "
                   "encoding fits") from None
    return str(best)


def html_to_text(html: str) -> tuple[str, str]:
    import trafilatura

    text = trafilatura.extract(html, include_comments=False, include_tables=True,
                               favor_recall=True) or ""
    title = ""
    meta = trafilatura.extract_metadata(html)
    if meta is not None and meta.title:
        title = meta.title
    return text, title


def pdf_to_text(path: Path) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        return "\n\n".join((page.extract_text() or "") for page in reader.pages)
    except (PdfReadError, ValueError, KeyError) as err:
        raise Skip("read_error", f"PDF: {err}") from None


def read_file(path: Path, max_bytes: int) -> Doc:
    """One local file as a document, or `Skip` with the reason."""
    size = path.stat().st_size
    if size == 0:
        raise Skip("empty", "0 bytes")
    if size > max_bytes:
        raise Skip("too_large", f"{size} bytes > limit {max_bytes}")
    suffix = path.suffix.lower()
    title = ""
    if suffix == ".pdf":
        text = pdf_to_text(path)
    elif suffix in HTML_SUFFIXES:
        text, title = html_to_text(decode_text(path.read_bytes()))
    elif suffix in TEXT_SUFFIXES:
        text = decode_text(path.read_bytes())
    else:
        decode_text(path.read_bytes())  # binary / undecodable take precedence
        raise Skip("unsupported_format", f"suffix {suffix}")
    if not text.strip():
        raise Skip("no_text_extracted" if suffix in HTML_SUFFIXES | {".pdf"} else "empty",
                   "no text")
    return Doc(path.absolute().as_uri(), text, title or path.stem)  # a relative path too


def read_table(path: Path, source: InputSource) -> Iterator[Doc | Skip]:
    """Rows of a JSONL or Parquet file as documents (bad rows become Skips)."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if source.text_column not in table.column_names:
            yield Skip("missing_text_column", f"{path.name} has no column {source.text_column!r}")
            return
        rows = table.to_pylist()
    else:
        rows = []
        with path.open(encoding="utf-8", errors="replace") as lines:
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    yield Skip("bad_row", f"{path.name}:{n}: not JSON")
    for n, row in enumerate(rows, 1):
        text = row.get(source.text_column) if isinstance(row, dict) else None
        if not isinstance(text, str):
            yield Skip("missing_text_column", f"{path.name} row {n}: no {source.text_column!r}")
        elif not text.strip():
            yield Skip("empty", f"{path.name} row {n}: empty text")
        else:
            row_id = row.get(source.id_column) if source.id_column else n
            yield Doc(f"{path.as_uri()}#{row_id}", text, str(row_id), "table")
