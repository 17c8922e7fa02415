"""Flow parameters as a pydantic model: the Prefect UI renders it as a form
with descriptions, enums and bounds."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sftmill.core.errors import RecipeError
from sftmill.core.recipe import Recipe, load_recipe, parse_recipe
from sftmill.tasks.stages.sizing import needed_profiles

Stage = Literal["collect", "chunk", "relevance", "profile", "web_queries", "search_fetch",
                "generate", "broaden", "rephrase", "evolve", "prompt_filter", "dedup", "answer_search",
                "retrieve", "answer", "answer_checks", "curate", "preferences"]


class RunParams(BaseModel):
    """What a run needs: a recipe (a path on the worker, or inline YAML) and
    optional overrides."""

    model_config = ConfigDict(extra="forbid")

    recipe_path: str | None = Field(
        default=None, description="Recipe YAML file, as seen by the process that runs the flow.")
    recipe_yaml: str | None = Field(
        default=None, description="A whole recipe inline (used instead of recipe_path); "
        "relative paths in it resolve against the worker's working directory.")
    target_prompts: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Override sizes.target_prompts.")
    generator_base_url: str | None = Field(
        default=None, description="Override llm.generator.base_url (an OpenAI-compatible "
        "server such as vLLM or Ollama); sets the generator's backend to 'openai'.")
    generator_model: str | None = Field(default=None, description="Override llm.generator.model.")
    judge_base_url: str | None = Field(
        default=None, description="Override llm.judge.base_url; sets the judge's backend to 'openai'.")
    judge_model: str | None = Field(default=None, description="Override llm.judge.model.")
    refresh: list[Stage] = Field(
        default_factory=list, description="Stages to recompute even when their cached result "
        "is valid (LLM calls that already succeeded still come from the run's call table).")

    preview: int | None = Field(
        default=None, ge=1, le=100, description="Make about this many records the shortest "
        "way, in RUN_DIR/preview: five prompts per record wanted, eight per profile, a few "
        "chunks judged and profiled, no web round, no extended search, no review gate.")
    review: Literal["wait", "use", "skip"] = Field(
        default="wait", description="At a review gate (recipe's review.gates): wait until "
        "every sampled item is reviewed (a served run pauses with a form), use the reviews so "
        "far, or skip the review.")

    @model_validator(mode="after")
    def _one_recipe(self) -> "RunParams":
        if not (self.recipe_path or self.recipe_yaml):
            raise ValueError("give recipe_path or recipe_yaml")
        return self

    def load(self) -> Recipe:
        """The recipe with the overrides applied, validated (once per process
        for a recipe file without overrides: `load_recipe` keeps it)."""
        if self.recipe_yaml:
            base = parse_recipe(yaml.safe_load(self.recipe_yaml), Path.cwd())
        else:
            base = load_recipe(self.recipe_path)
        overrides = self.model_dump(include={"target_prompts", "generator_base_url", "generator_model",
                                             "judge_base_url", "judge_model", "preview"},
                                    exclude_none=True)
        if not overrides:
            return base
        data = base.model_dump(mode="json", exclude={"base_dir"})
        if self.target_prompts:
            data["sizes"]["target_prompts"] = self.target_prompts
        if self.preview:
            preview_of(data, base, self.preview)
        for role in ("generator", "judge"):
            url, model = getattr(self, f"{role}_base_url"), getattr(self, f"{role}_model")
            if url:
                data["llm"][role].update(backend="openai", base_url=url)
            if model:
                data["llm"][role]["model"] = model
        try:
            return parse_recipe(data, Path(base.base_dir))
        except RecipeError as err:
            raise RecipeError(f"run parameters: {err}") from None


PROMPTS_PER_RECORD = 5  # prompts asked per record wanted (the example on SmolLM2-135M: 6 records of 25)
PREVIEW_PROMPTS_PER_PROFILE = 8  # fewer profiles: each costs the embedded model ~5 s


def preview_of(data: dict, base: Recipe, records: int) -> None:
    """Change a recipe's settings (`data`, in place) into its preview's."""
    sizes = data["sizes"]
    sizes["target_prompts"] = PROMPTS_PER_RECORD * records
    sizes["prompts_per_profile"] = max(sizes["prompts_per_profile"], PREVIEW_PROMPTS_PER_PROFILE)
    profiles = needed_profiles(base.model_copy(update={"sizes": base.sizes.model_copy(update={
        "target_prompts": sizes["target_prompts"], "prompts_per_profile": sizes["prompts_per_profile"]})}))
    sizes.update(max_chunks=profiles + 1, profile_margin=1.0, max_rounds=0)
    data["answers"]["queries_per_prompt"] = 0
    data["review"]["gates"] = []
    data["output_dir"] = str(base.run_dir / "preview")


def stage(task, name: str, refresh: list[str]):
    """`task`, made to ignore its cache when the run asks to refresh `name`."""
    return task.with_options(refresh_cache=True) if name in refresh else task
