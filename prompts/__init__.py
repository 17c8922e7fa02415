"""Prompt templates: one Jinja2 file per LLM step in this package
(`sftmill.prompts`, the repository's `prompts/` folder), with the JSON schema
of the expected answer beside it; they ship as package data.

    prompts/<step>.jinja2        {% block system %}…{% endblock %}
                                 {% block user %}…{% endblock %}
    prompts/<step>.schema.json   JSON schema of the answer

`StrictUndefined` makes a missing variable fail loudly.  A template's version
is a hash of both files; it travels into every row the step produces.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

PROMPTS_DIR = Path(os.environ.get("SFTMILL_PROMPTS_DIR") or Path(__file__).resolve().parent)


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    template: jinja2.Template
    schema: dict[str, Any] | None
    version: str

    def messages(self, _skeleton: bool = False, **variables: Any) -> list[dict[str, str]]:
        """Render the template's blocks into chat messages."""
        template = self.template
        if type(template.globals) is not dict:
            # Jinja keeps them as a ChainMap over the environment's, which every
            # context copies key by key (a quarter of a render in profiles): a
            # plain dict, once (sftmill adds no globals after loading).
            template.globals = dict(template.globals)
        context = template.new_context(variables)  # one for both blocks, as Jinja's own render
        out = []
        for role in ("system", "user"):
            block = template.blocks.get(role)
            if block is None:
                continue
            text = "".join(block(context)).strip()
            if text:
                out.append({"role": role, "content": text})
        if not _skeleton and not any(m["role"] == "user" for m in out):
            raise ValueError(f"prompt template {self.name} rendered no user message")
        return out

    def skeleton(self) -> list[dict[str, str]]:
        """The template's fixed text alone (every variable empty, every loop
        run zero times): the least any prompt rendered from it can be."""
        folder = Path(self.template.filename).parent
        lenient = _environment(folder, strict=False).get_template(Path(self.template.filename).name)
        return PromptTemplate(self.name, lenient, self.schema, self.version).messages(_skeleton=True)


def _environment(folder: Path, strict: bool = True) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined if strict else jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


@lru_cache(maxsize=64)
def load_template(name: str, folder: str | None = None) -> PromptTemplate:
    base = Path(folder) if folder else PROMPTS_DIR
    source = base / f"{name}.jinja2"
    if not source.is_file():
        raise FileNotFoundError(f"prompt template not found: {source}")
    schema_file = base / f"{name}.schema.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8")) if schema_file.is_file() else None
    digest = hashlib.sha256(source.read_bytes())
    if schema_file.is_file():
        digest.update(schema_file.read_bytes())
    template = _environment(base).get_template(source.name)
    return PromptTemplate(name, template, schema, f"{name}@{digest.hexdigest()[:10]}")


def template_names(folder: str | None = None) -> list[str]:
    base = Path(folder) if folder else PROMPTS_DIR
    return sorted(p.name[: -len(".jinja2")] for p in base.glob("*.jinja2"))


def with_schema(template: PromptTemplate, schema: dict[str, Any]) -> PromptTemplate:
    """The same template expecting a narrowed schema (an enum of the recipe's
    subdomains, an exact list length); the version stays the file's."""
    return PromptTemplate(template.name, template.template, schema, template.version)


def exact_items(schema: dict[str, Any], field: str, n: int, at_least: int | None = None,
                ) -> dict[str, Any]:
    """A copy of `schema` whose array `field` must hold exactly `n` items
    (or from `at_least` to `n`: an answer cut off by the token budget then
    still parses, with the items it completed — see `batch.whole_items`)."""
    out = copy.deepcopy(schema)
    out["properties"][field]["minItems"] = n if at_least is None else at_least
    out["properties"][field]["maxItems"] = n
    return out
