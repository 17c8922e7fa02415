"""One recipe across many workers: the inputs in N shards, each shard's
prompt flow and then answer flow a flow run of its own through a deployment
(so any worker of the pool, on any machine, takes it), merged in between
(near-duplicates across shards) and at the end (one dataset and card).
The shards' run folders must be on storage every worker reaches: the
recipe's `output_dir` on a shared path, or object storage (`storage`, an
fsspec URL such as `s3://bucket/runs/x`; sftmill.core.remote syncs each shard's
folder to the worker that runs it).  A shard whose run fails or
crashes is retried alone (the UI's Retry, or `prefect flow-run retry ID`):
its completed stages come back from its cache and its completed LLM calls
from its own call table; this flow waits for it (`wait_hours`).
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sftmill.core import remote
from sftmill.core.recipe import load_recipe
from sftmill.tasks import shard


class ShardParams(BaseModel):
    """A sharded run: the recipe, how many shards, which deployments run them."""

    model_config = ConfigDict(extra="forbid")

    recipe_path: str = Field(description="Recipe YAML file, as seen by the workers.")
    shards: int = Field(default=2, ge=1, le=1000, description="Shards of the inputs (files).")
    prompts_deployment: str = Field(default="sftmill-prompts/prompts",
                                    description="Deployment that runs a shard's prompt flow.")
    answers_deployment: str = Field(default="sftmill-answers/answers",
                                    description="Deployment that runs a shard's answer flow.")
    storage: str | None = Field(
        default=None, description="Object storage for the shards' folders and the merged dataset "
        "(an fsspec URL such as s3://bucket/runs/example; credentials and endpoint from the "
        "workers' environment, e.g. AWS_ENDPOINT_URL for MinIO).  Unset: the recipe's output_dir, "
        "which must then be a path every worker reaches.")
    wait_hours: float = Field(default=24, gt=0, description="How long to wait for a failed "
                              "shard run to be retried before this run fails.")
    poll_s: float = Field(default=5, gt=0, le=600, description="Seconds between looks at the shards.")

    @field_validator("storage")
    @classmethod
    def _a_url(cls, value: str | None) -> str | None:
        if value is not None and not remote.is_remote(value):
            raise ValueError("an object-storage URL such as s3://bucket/runs/name (a shared path: "
                             "leave storage unset and put the recipe's output_dir there)")
        return value


@task(name="plan-shards", cache_policy=NO_CACHE)
def plan(recipe_path: str, shards: int, storage: str | None) -> list[str]:
    """The shards' recipes: paths, or (with `storage`) URLs of folders uploaded there."""
    paths = shard.plan_shards(load_recipe(recipe_path), shards, self_contained=bool(storage))
    if not storage:
        return [str(p) for p in paths]
    urls = [f"{storage.rstrip('/')}/shards/shard-{k}" for k in range(len(paths))]
    for path, url in zip(paths, urls):
        remote.push(path.parent, url)
    return [f"{url}/recipe.yaml" for url in urls]


@task(name="merge-prompts", cache_policy=NO_CACHE)
def merge_prompts(recipe_path: str, shard_recipes: list[str]) -> dict:
    with remote.local_recipes(shard_recipes) as local:
        return shard.merge_prompts(load_recipe(recipe_path), [Path(p) for p in local])


@task(name="merge-exports", cache_policy=NO_CACHE)
def merge_exports(recipe_path: str, shard_recipes: list[str], merged: dict, storage: str | None) -> dict:
    recipe = load_recipe(recipe_path)
    with remote.local_recipes(shard_recipes, write=False) as local:  # read: nothing to push back
        done = shard.merge_exports(recipe, [Path(p) for p in local], merged)
    if storage:
        remote.put_files([recipe.run_dir / "dataset.jsonl", recipe.run_dir / "card.md"], storage)
    return done


def run_shards(deployment: str, shard_recipes: list[str], params: ShardParams) -> None:
    """One flow run of `deployment` per shard; back when all completed."""
    logger = get_run_logger()
    runs = [run_deployment(deployment, parameters={"params": {"recipe_path": path}}, timeout=0,
                           flow_run_name=f"{path.rsplit('/', 2)[-2]}-{deployment.split('/')[-1]}")
            for path in shard_recipes]
    deadline, told = None, set()
    with get_client(sync_client=True) as client:
        while True:
            now = [client.read_flow_run(run.id) for run in runs]
            if all(r.state.is_completed() for r in now):
                return
            stuck = [(k, r, r.state) for k, r in enumerate(now)
                     if r.state.is_final() and not r.state.is_completed()]
            for k, run, s in stuck:
                if (run.id, run.run_count, s.type) not in told:  # once per attempt
                    told.add((run.id, run.run_count, s.type))
                    logger.warning(f"shard {k}: flow run {run.name} is {s.name}; retry it alone "
                                   f"(UI: Retry, or `prefect flow-run retry {run.id}`) and this run "
                                   "goes on")
            deadline = (deadline or time.monotonic() + params.wait_hours * 3600) if stuck else None
            if deadline and time.monotonic() > deadline:
                raise RuntimeError(f"{len(stuck)} shard run(s) not retried within "
                                   f"{params.wait_hours} h: " + ", ".join(r.name for _, r, _ in stuck))
            time.sleep(params.poll_s)


@flow(name="sftmill-sharded")
def sharded(params: ShardParams) -> dict:
    """Plan the shards → each shard's prompt flow (a flow run per shard) →
    near-duplicates across shards → each shard's answer flow → one dataset
    and card."""
    shard_recipes = plan(params.recipe_path, params.shards, params.storage)
    run_shards(params.prompts_deployment, shard_recipes, params)
    merged = merge_prompts(params.recipe_path, shard_recipes)
    run_shards(params.answers_deployment, shard_recipes, params)
    return merge_exports(params.recipe_path, shard_recipes, merged, params.storage)
