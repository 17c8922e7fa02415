"""The dataset card's YAML header, as the Hugging Face Hub and `datasets` read
it: a run folder pushed as it is shows the Hub's viewer and metadata, and
`datasets.load_dataset(RUN_DIR)` loads it.  The card is written twice, as
`card.md` and as `README.md` (the name the Hub and `datasets` look for).

The header names the data (`configs`: `dataset.parquet` as the train split),
its features (read from the Parquet file's own schema, so they always agree),
license and language (the recipe's `export` section), task categories, the
size category and tags.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from sftmill.core.files import write_atomic

DATA_FILE = "dataset.parquet"
CARD_FILES = ("card.md", "README.md")
TASK_CATEGORIES = ["text-generation", "question-answering"]
# The Hub's size categories: upper bounds and names.
SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"))


def size_category(n: int) -> str:
    return next((name for bound, name in SIZES if n < bound), "10M<n<100M")


def feature(arrow_type) -> str | dict:
    """A `datasets` feature in the card's YAML form, for an Arrow type."""
    import pyarrow as pa

    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_null(arrow_type):
        return "null"
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return {"float": "float32", "double": "float64", "halffloat": "float16"}.get(
            str(arrow_type), str(arrow_type))
    if pa.types.is_struct(arrow_type):
        return {"struct": fields(arrow_type)}
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        inner = arrow_type.value_type
        return {"list": fields(inner) if pa.types.is_struct(inner) else feature(inner)}
    raise ValueError(f"no dataset card feature for Arrow type {arrow_type}")


def fields(struct_or_schema) -> list[dict]:
    """[{name, dtype | list | struct}] for each field."""
    out = []
    for field in struct_or_schema:
        kind = feature(field.type)
        out.append({"name": field.name, **({"dtype": kind} if isinstance(kind, str) else kind)})
    return out


def card_header(run_dir: Path, pretty_name: str, license: str = "other",
                language: list[str] | tuple[str, ...] = ("en",)) -> str:
    """The YAML front matter of `run_dir`'s card (empty before its Parquet file exists)."""
    import pyarrow.parquet as pq

    data = run_dir / DATA_FILE
    if not data.is_file():
        return ""
    meta = pq.read_metadata(data)
    header = {
        "pretty_name": pretty_name,
        "license": license,
        "language": list(language),
        "task_categories": TASK_CATEGORIES,
        "tags": ["synthetic", "sft", "sftmill"],
        "size_categories": [size_category(meta.num_rows)],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": "train", "path": DATA_FILE}]}],
        "dataset_info": {"features": fields(meta.schema.to_arrow_schema()),
                         "splits": [{"name": "train", "num_examples": meta.num_rows}]},
    }
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n\n"


def split_header(text: str) -> tuple[dict, str]:
    """(the YAML front matter as a dict, the rest) of a card's text."""
    if text.startswith("---\n") and "\n---\n" in text[4:]:
        head, body = text[4:].split("\n---\n", 1)
        return yaml.safe_load(head) or {}, body.lstrip("\n")
    return {}, text


def write_card_files(run_dir: Path, body: str, pretty_name: str | None = None,
                     license: str | None = None, language: list[str] | None = None) -> Path:
    """`card.md` and `README.md`: the header (for the folder's Parquet file as
    it is now) and `body`.  Names left None keep the current card's (a card
    refreshed after a review keeps its recipe's license)."""
    card = run_dir / CARD_FILES[0]
    known = split_header(card.read_text(encoding="utf-8"))[0] if card.is_file() else {}
    header = card_header(run_dir, pretty_name or known.get("pretty_name") or run_dir.name,
                         license or known.get("license") or "other",
                         language or known.get("language") or ["en"])
    data = (header + body).encode("utf-8")
    for name in CARD_FILES:
        write_atomic(run_dir / name, [data])
    return card
