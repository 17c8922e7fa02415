"""What every pipeline stage shares: the Prefect task wrapper (retries,
caching, persisted results), its cache key, and the stage result.

A stage declares what it reads and writes (`stage_task(recipe=..., reads=...,
writes=...)`), and is held to it: it sees only the recipe sections it
declared, and only declared tables come in and go out.  Its cache key is made
from that declaration and never from object identities: the declared recipe
sections, the fingerprints of the tables handed to it, the versions of its
prompt templates, the source of its module, and the ID of the run database
(so a deleted run folder never yields a stale cache hit).  Editing a template
or a recipe section reruns exactly the stages that read it.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any, Callable

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel

from sftmill.core.ids import content_id
from sftmill.core.progress import stage_started
from sftmill.core.recipe import Recipe
from sftmill.core.store import Store, TableRef
from sftmill.llm.errors import RunStop
from sftmill.prompts import load_template

STAGE_RETRIES = 2
# Seconds before each retry; tests shorten them with SFTMILL_TASK_RETRY_DELAYS=0,0.
STAGE_RETRY_DELAYS = [float(x) for x in os.environ.get("SFTMILL_TASK_RETRY_DELAYS", "2,10").split(",")]
CACHE_EXPIRATION = timedelta(days=30)


class UndeclaredTable(RuntimeError):
    """A stage was handed, or returned, a table it did not declare (a programming error)."""


@dataclass(frozen=True)
class StageResult:
    """What a stage task returns (small, so Prefect persists it cheaply)."""

    stage: str
    out: TableRef
    n_in: int
    n_out: int
    seconds: float
    note: str = ""


@lru_cache(maxsize=None)
def _source_hash(fn: Callable) -> str:
    try:
        source = inspect.getsource(inspect.getmodule(fn))
    except (OSError, TypeError):
        source = fn.__qualname__
    return hashlib.sha256(source.encode()).hexdigest()[:12]


def _token(value: Any, sections: tuple[str, ...]) -> Any:
    if isinstance(value, Recipe):
        # The run database's ID too: a stage whose other inputs are not tables
        # (collect reads files) must not come back from the cache after the
        # run folder was deleted.
        return [value.fingerprint(*sections), Store.open(value.db_path).store_id()]
    if isinstance(value, TableRef):
        return [value.table, value.fingerprint, Store.open(value.db_path).store_id()]
    if isinstance(value, StageResult):
        return _token(value.out, sections)
    if isinstance(value, (list, tuple)):
        return [_token(v, sections) for v in value]
    if isinstance(value, BaseModel):
        # A generator's config names its run database (`db_path`): its ID too, as for a recipe.
        db_path = getattr(value, "db_path", None)
        dumped = value.model_dump(mode="json")
        return dumped if db_path is None else [dumped, Store.open(db_path).store_id()]
    return value


def cache_key(fn: Callable, sections: tuple[str, ...], templates: tuple[str, ...],
              parameters: dict[str, Any]) -> str:
    parts = [fn.__module__, fn.__qualname__, _source_hash(fn),
             [load_template(t).version for t in templates]]
    # A parameter named `db_path` is the run database the stage writes: its ID, not its path.
    parts += [[k, Store.open(v).store_id() if k == "db_path" else _token(v, sections)]
              for k, v in sorted(parameters.items())]
    return content_id(*parts)


def stage_task(name: str, *, recipe: tuple[str, ...] = (), reads: tuple[str, ...] = (),
               writes: tuple[str, ...] = (), templates: tuple[str, ...] = (), cached: bool = True):
    """Wrap a stage function as a Prefect task with retries and caching, and
    declare what it reads and writes.

    `recipe`: the recipe sections the stage reads.  Its cache key covers
    those, and the stage is handed a view of the recipe that refuses any other
    section.  `reads`: the tables handed to it (each table argument must be
    one of them); `writes`: the tables it fills (its result names one of
    them, or a table it read and hands on).  `templates`: the prompt templates it renders (their versions are in
    the key).  `cached=False` for stages that write files outside the run
    database (they always run)."""
    unknown = set(recipe) - set(Recipe.model_fields)
    if unknown:
        raise ValueError(f"stage {name!r} declares no recipe section {sorted(unknown)[0]!r}")

    def wrap(fn: Callable) -> Any:
        caching: dict[str, Any] = (
            {"cache_key_fn": lambda _ctx, params: cache_key(fn, recipe, templates, params),
             "cache_expiration": CACHE_EXPIRATION} if cached else {"cache_policy": NO_CACHE})
        return task(
            declared(fn, name, recipe, reads, writes),
            name=name,
            retries=STAGE_RETRIES,
            retry_delay_seconds=STAGE_RETRY_DELAYS,
            retry_condition_fn=_worth_retrying,
            persist_result=True,
            **caching,
        )

    return wrap


def declared(fn: Callable, name: str, sections: tuple[str, ...], reads: tuple[str, ...],
             writes: tuple[str, ...]) -> Callable:
    """`fn` held to its declaration: a recipe argument becomes a view of the
    declared sections; table arguments and the result must be declared."""
    signature = inspect.signature(fn)
    reader = f"stage {name!r}"

    @functools.wraps(fn)
    def run(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        for key, value in bound.arguments.items():
            if isinstance(value, Recipe):
                bound.arguments[key] = value.view(sections, reader)
            elif table_of(value) not in (None, *reads):
                raise UndeclaredTable(f"{reader} is handed table {table_of(value)!r} ({key}) "
                                      f"but reads only {', '.join(reads) or 'none'}")
        stage_started(name)
        result = fn(*bound.args, **bound.kwargs)
        if isinstance(result, StageResult) and result.out.table not in (*writes, *reads):
            raise UndeclaredTable(f"{reader} hands on table {result.out.table!r} "
                                  f"but neither reads nor writes it")
        return result

    return run


def table_of(value: Any) -> str | None:
    """The table a stage argument stands for (None: not a table)."""
    if isinstance(value, StageResult):
        return value.out.table
    return value.table if isinstance(value, TableRef) else None


def _worth_retrying(_task, _task_run, state) -> bool:
    """A stage stopped by the budget or the disk's free space fails at once:
    a retry would stop again."""
    return not isinstance(state.result(raise_on_failure=False), RunStop)


def current_run_id() -> str:
    """The top-level flow run (the pipeline, not its prompt/answer subflows)."""
    try:
        run_id = flow_run.id  # from the run's context: no API call
        if run_id:
            return _root_of(str(run_id))
    except Exception:
        pass
    return uuid.uuid4().hex


@lru_cache(maxsize=256)
def _root_of(run_id: str) -> str:
    """The root of the current flow run `run_id`, asked of Prefect once per
    flow run: Prefect reads it through ~5 API calls each time (0.15 s per
    stage against a server on a busy box, 2.3 s of a 16-stage run)."""
    return str(flow_run.root_flow_run_id or run_id)


class StageTimer:
    """Times a stage and writes its row in `stage_stats`."""

    def __init__(self, store: Store, stage: str):
        self.store, self.stage = store, stage
        self.started = time.perf_counter()

    def done(self, out: TableRef, n_in: int, n_out: int, note: str = "") -> StageResult:
        seconds = time.perf_counter() - self.started
        run_id = current_run_id()
        # A stage that runs again in the same run (chunk, relevance and profile
        # in every web round) gets its own row: chunk, chunk#2, …
        earlier = self.store.scalar(
            "SELECT count(*) FROM stage_stats WHERE run_id = ? AND (stage = ? OR stage LIKE ?)",
            [run_id, self.stage, self.stage + "#%"])
        if earlier:
            self.stage = f"{self.stage}#{earlier + 1}"
        self.store.insert("stage_stats", [{
            "run_id": run_id, "stage": self.stage, "n_in": n_in,
            "n_out": n_out, "seconds": seconds,
        }], replace=True)
        return StageResult(self.stage, out, n_in, n_out, seconds, note)
