"""Recipe: one YAML file per dataset, parsed into pydantic models.

Every model forbids unknown keys, so a typo in a recipe fails before any work
starts.  `load_recipe` also checks what can be checked without running the
pipeline: input paths exist, relative paths resolve against the recipe file,
API keys are named by environment variable (never written in the recipe).
Endpoint reachability is checked separately by `preflight` because it costs
a network round trip.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path

import yaml
from pydantic import Field, ValidationError

from sftmill.core.curation import CurateConfig, Curation
from sftmill.core.endpoints import Embedding, LLMEndpoint, LLMRoles
from sftmill.core.errors import RecipeError, UndeclaredRecipeRead
from sftmill.core.sections import (
    Answers,
    Budget,
    Chunking,
    Conversations,
    Difficulty,
    Domain,
    Export,
    Generation,
    InputSource,
    Limits,
    Personas,
    Price,
    Review,
    Schedule,
    Search,
    Sizes,
    Strict,
    Thresholds,
)

DB_FILE = "sftmill.duckdb"  # a run folder's database


class GeneratorConfig(Strict):
    """What every classic generator's config (Self-Instruct, Evol-Instruct,
    templates, augmentations) has: its run folder, generator endpoint and seed."""

    output_dir: str = Field(description="Run folder (DuckDB file and exports).")
    generator: LLMEndpoint = Field(default_factory=lambda: LLMEndpoint(max_tokens=400))
    seed: int = 0
    curation: Curation = Field(default_factory=Curation,
                               description="The checks the dataset passes before export.")

    def llm_templates(self) -> list[tuple[str, "LLMEndpoint", str, int]]:
        """(config field, endpoint, prompt template, tokens of input it adds
        at least) for every LLM step of the generator: checked against the
        model's context before the run starts (`preflight.check_templates_fit`)."""
        return [("generator", self.generator, "respond", 0)]

    @property
    def db_path(self) -> Path:
        return Path(self.output_dir) / DB_FILE


class Recipe(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    output_dir: str = Field(description="Run directory; relative to the recipe file.")
    domain: Domain
    inputs: list[InputSource] = Field(min_length=1)
    llm: LLMRoles = Field(default_factory=LLMRoles)
    embedding: Embedding = Field(default_factory=Embedding)
    dedup_embedding: Embedding | None = Field(
        default=None,
        description="The embedding model of near-duplicate removal (step 10) when it should "
        "differ from `embedding`: at a million prompts, model 'static:all-MiniLM-L6-v2' (a "
        "static model distilled from MiniLM, ~30x faster on CPU; pair it with "
        "thresholds.dedup_cosine ~0.93, see benchmarks/README.md).  Unset: "
        "`embedding`.")
    sizes: Sizes = Field(default_factory=Sizes)
    generation: Generation = Field(default_factory=Generation)
    personas: Personas = Field(default_factory=Personas,
                               description="Who the prompts are written as; none by default.")
    difficulty: Difficulty = Field(default_factory=Difficulty,
                                   description="Target shares of prompt difficulty; none by default.")
    conversations: Conversations = Field(
        default_factory=Conversations,
        description="Grounded multi-turn conversations; none by default.")
    chunking: Chunking = Field(default_factory=Chunking)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    limits: Limits = Field(default_factory=Limits)
    search: Search = Field(default_factory=Search)
    answers: Answers = Field(default_factory=Answers)
    export: Export = Field(default_factory=Export)
    schedule: Schedule = Field(default_factory=Schedule)
    curation: Curation = Field(default_factory=Curation,
                               description="The checks the dataset passes before export.")
    review: Review = Field(default_factory=Review,
                           description="Human review gates; none by default.")
    budget: Budget = Field(
        default_factory=Budget,
        description="Caps on the run's LLM spending (cost needs prices); none by default.")
    prices: dict[str, Price] = Field(
        default_factory=dict,
        description="Price per model name (as sent to the server; 'llama.cpp:<file>' for the "
        "embedded model): `sftmill plan` and the run's summary show the cost per stage.")
    seed: int = 0
    base_dir: str = Field(default=".", description="Set by the loader: the recipe's folder.")

    def resolve(self, path: str) -> Path:
        """A recipe path made absolute against the recipe file's folder."""
        p = Path(os.path.expanduser(path))
        return p if p.is_absolute() else Path(self.base_dir) / p

    @property
    def run_dir(self) -> Path:
        return self.resolve(self.output_dir)

    @property
    def db_path(self) -> Path:
        return self.run_dir / DB_FILE

    def llm_templates(self) -> list[tuple[str, "LLMEndpoint", str, int]]:
        """Every LLM step of the pipeline as (recipe field, endpoint, prompt
        template, tokens of input it adds at least): a chunk, or `top_k`
        chunks (and an answer) for the answer steps."""
        gen, judge = self.llm.generator, self.llm.judge
        chunk, passages = self.chunking.max_tokens, self.answers.top_k * self.chunking.max_tokens
        generate = "generate_opening" if self.generation.openings else "generate"
        return [("llm.judge", judge, "relevance", chunk), ("llm.generator", gen, "profile", chunk),
                ("llm.generator", gen, "web_queries", 0), ("llm.generator", gen, generate, chunk),
                ("llm.generator", gen, "broaden", 0), ("llm.generator", gen, "rephrase", 0),
                *(("llm.generator", gen, f"evol_{op}", 0)
                  for op in (self.difficulty.evolve_operations if self.difficulty.evolve_share else ())),
                ("llm.judge", judge, "prompt_filter", 0),
                ("llm.generator", gen, "answer_queries", 0),
                ("llm.generator", gen, "answer", passages),
                ("llm.judge", judge, "groundedness", passages + gen.max_tokens)]

    def fingerprint(self, *sections: str) -> str:
        """Stable hash of the named sections (all when none): feeds cache keys."""
        data = self.model_dump(mode="json", exclude={"base_dir"})
        if sections:
            data = {k: data[k] for k in sections}
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def view(self, sections: tuple[str, ...], reader: str) -> "RecipeView":
        """This recipe as `reader` (a stage) may read it: only the named sections."""
        return RecipeView(self, sections, reader)


# What any code may read of a recipe whatever it declared: its name and where its run lives.
IDENTITY = frozenset({"name", "output_dir", "base_dir"})


class RecipeView:
    """A recipe restricted to the sections one stage declared it reads.

    A stage's cache key is made from the sections it declares
    (`stage_task(recipe=...)`); the stage is handed this view, so reading any
    other section fails at once instead of leaving a cached result that does
    not follow it.  Methods and properties (`run_dir`, `db_path`, `resolve`,
    `fingerprint` …) and the recipe's identity read through."""

    __slots__ = ("_recipe", "_sections", "_reader")

    def __init__(self, recipe: Recipe, sections: tuple[str, ...], reader: str):
        self._recipe, self._sections, self._reader = recipe, frozenset(sections), reader

    def __getattr__(self, name: str):
        if name in Recipe.model_fields and name not in self._sections and name not in IDENTITY:
            raise UndeclaredRecipeRead(
                f"{self._reader} reads recipe.{name} but does not declare it "
                f"(declared: {', '.join(sorted(self._sections)) or 'none'})")
        return getattr(self._recipe, name)

    @property
    def recipe(self) -> Recipe:
        """The whole recipe (for what must hash or copy all of it)."""
        return self._recipe


def cache_dir() -> Path:
    """sftmill's cache folder (models it distils, copies of remote run
    folders): $SFTMILL_CACHE, else $XDG_CACHE_HOME/sftmill or ~/.cache/sftmill."""
    root = os.environ.get("SFTMILL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sftmill")
    return Path(root)


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "recipe"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    more = len(err.errors()) - 1
    return f"{where}: {msg}" + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def output_dir_problem(run_dir: Path) -> str | None:
    """Why `run_dir` cannot hold a run (None: it can, or can be created).
    Nothing is created here: validating a recipe leaves no trace."""
    run_dir = Path(run_dir)
    if run_dir.exists():
        if not run_dir.is_dir():
            return f"{run_dir} exists and is not a folder"
        db = run_dir / DB_FILE
        if db.exists() and not db.is_file():
            return f"{db} exists and is not a file"
        if not os.access(run_dir, os.W_OK | os.X_OK):
            return f"{run_dir} is not writable"
        return None
    parent = run_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create {run_dir}: {parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {run_dir}: {parent} is not writable"
    return None


def _check_inputs(recipe: Recipe) -> None:
    problem = output_dir_problem(recipe.run_dir)
    if problem:
        raise RecipeError(f"output_dir: {problem}")
    for i, source in enumerate(recipe.inputs):
        if source.path is None:
            continue
        resolved = recipe.resolve(source.path)
        if glob.has_magic(source.path):
            if not glob.glob(str(resolved), recursive=True):
                raise RecipeError(f"inputs[{i}].path: glob matches no file: {source.path}")
        elif not resolved.exists():
            raise RecipeError(f"inputs[{i}].path: does not exist: {resolved}")
    if recipe.search.backend == "local":
        if recipe.search.local_dir and not recipe.resolve(recipe.search.local_dir).is_dir():
            raise RecipeError(
                f"search.local_dir: not a folder: {recipe.resolve(recipe.search.local_dir)}"
            )
    if recipe.search.backend == "searxng" and not recipe.search.searxng_url:
        raise RecipeError("search.searxng_url: required when search.backend is 'searxng'")
    if recipe.search.backend == "local" and not recipe.search.local_dir:
        raise RecipeError("search.local_dir: required when search.backend is 'local' "
                          "(or set search.backend: none)")
    key_env = recipe.search.key_env()
    if key_env and key_env not in os.environ:
        raise RecipeError(f"search.api_key_env: environment variable {key_env} is not set")
    if recipe.review.gates and recipe.review.tool == "label_studio":
        ls = recipe.review.label_studio
        for key, env in (("url_env", ls.url_env), ("token_env", ls.token_env)):
            if not os.environ.get(env):
                raise RecipeError(f"review.label_studio.{key}: environment variable {env} is not set")
    for role, endpoint in (("generator", recipe.llm.generator), ("judge", recipe.llm.judge)):
        if endpoint.api_key_env and endpoint.api_key_env not in os.environ:
            raise RecipeError(
                f"llm.{role}.api_key_env: environment variable {endpoint.api_key_env} is not set"
            )


def resolve_curation(curation: Curation, base_dir: Path, where: str = "curation") -> Curation:
    """`curation` with its benchmark files resolved against `base_dir`;
    RecipeError when one is missing."""
    paths = []
    for i, name in enumerate(curation.decontamination.benchmarks):
        path = Path(name) if Path(name).is_absolute() else base_dir / name
        if not path.is_file():
            raise RecipeError(f"{where}.decontamination.benchmarks[{i}]: file not found: {path}")
        paths.append(str(path.resolve()))
    if paths == curation.decontamination.benchmarks:
        return curation
    return curation.model_copy(update={"decontamination": curation.decontamination.model_copy(
        update={"benchmarks": paths})})


def read_yaml(path: Path, kind: str) -> object:
    """The YAML in `path` (a recipe, config or spec: `kind`); RecipeError
    with one line when it is missing or not YAML."""
    if not path.is_file():
        raise RecipeError(f"{path}: {kind} not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise RecipeError(f"{path}: not valid YAML: {str(err).strip().splitlines()[0]}") from None


def load_curate_config(path: str | Path | None) -> CurateConfig:
    """`sftmill curate`'s config file (none: every default); RecipeError with one line."""
    if path is None:
        return CurateConfig()
    path = Path(path)
    data = read_yaml(path, "config file") or {}
    try:
        cfg = CurateConfig.model_validate(data)
    except ValidationError as err:
        raise RecipeError(f"{path}: {_format_validation_error(err)}") from None
    return resolve_curation(cfg, path.resolve().parent, "config")


def parse_recipe(data: object, base_dir: Path) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError("recipe: expected a mapping of keys at the top level")
    if "base_dir" in data:
        raise RecipeError("base_dir: unknown key")
    try:
        recipe = Recipe.model_validate({**data, "base_dir": str(base_dir)})
    except ValidationError as err:
        raise RecipeError(_format_validation_error(err)) from None
    _check_inputs(recipe)
    curation = resolve_curation(recipe.curation, base_dir)
    return recipe if curation is recipe.curation else recipe.model_copy(update={"curation": curation})


# Validated recipes by (file, hash of its bytes): a run's command line, flows and subflows
# parse a recipe file once per process, and an edited file is parsed again.
_LOADED: dict[tuple[str, str], Recipe] = {}


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; raise RecipeError with one clear line."""
    path = Path(path)
    raw = path.read_bytes() if path.is_file() else b""
    key = (str(path.resolve()), hashlib.sha256(raw).hexdigest())
    if key not in _LOADED:
        data = read_yaml(path, "recipe file")
        try:
            _LOADED[key] = parse_recipe(data, path.resolve().parent)
        except RecipeError as err:
            raise RecipeError(f"{path}: {err}") from None
    return _LOADED[key]
