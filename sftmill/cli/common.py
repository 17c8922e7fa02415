"""What every command shares: the Typer app, the console, one-line failures, the run
database claimed by this process, recipes loaded and checked, progress (bars on a terminal,
lines in a log), and tracebacks kept out of the console (in the run's log file)."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sftmill.core.errors import RecipeError
from sftmill.core.progress import LogReporter, set_reporter
from sftmill.core.recipe import DB_FILE, load_curate_config, load_recipe, output_dir_problem
from sftmill.core.store import Store, StoreBusyError
from sftmill.tasks.curation.checks.decontam import check_benchmarks
from sftmill.tasks.curation.checks.fluency import fluency_unavailable
from sftmill.tasks.preflight import preflight

app = typer.Typer(
    help="sftmill: turn raw domain texts into supervised fine-tuning (SFT) data "
    "with Prefect flows.  Every intermediate table lives in one DuckDB file in the "
    "recipe's output_dir; re-running a recipe reuses every finished stage and "
    "every LLM call that already succeeded.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
if not console.is_terminal:  # a log file: text and tables as wide as they are, not cut at 80
    console.soft_wrap, console.width = True, 1000


def fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def claim(db_path: Path):
    """The run database, opened by this process; one line if another holds it."""
    problem = output_dir_problem(db_path.parent)
    if problem:
        fail(f"output folder: {problem}")
    try:
        return Store.open(db_path)
    except StoreBusyError as err:
        fail(str(err))


def run_db(run_dir: Path):
    """An existing run's database."""
    db = run_dir / DB_FILE
    if not db.is_file():
        fail(f"{run_dir}: no sftmill.duckdb here")
    return claim(db)


def load_checked(recipe_path: Path, skip_preflight: bool = False):
    try:
        recipe = load_recipe(recipe_path)
        if not skip_preflight:
            preflight(recipe)
    except RecipeError as err:
        fail(str(err))
    return recipe


class RichReporter:
    """Progress bars per stage, drawn by rich."""

    def __init__(self, progress):
        self.progress = progress

    def started(self, stage: str) -> None:
        pass  # a stage with work to count gets its bar

    def start(self, stage: str, total: int):
        return self.progress.add_task(stage, total=total, stage=stage)

    def advance(self, handle, n: int = 1) -> None:
        self.progress.advance(handle, n)

    def status(self, handle, text: str) -> None:
        stage = self.progress.tasks[[t.id for t in self.progress.tasks].index(handle)].fields["stage"]
        self.progress.update(handle, description=f"{stage} · {text}")

    def finish(self, handle, note: str = "") -> None:
        task = self.progress.tasks[[t.id for t in self.progress.tasks].index(handle)]
        desc = task.fields.get("stage", task.description) + (f" ({note})" if note else "")
        self.progress.update(handle, completed=task.total, description=desc)


def checked_curate_config(path: Path | None):
    """A curation config file (`sftmill curate`, `mix`, a generator's
    --curation) with its benchmark files readable, or one line naming the problem."""
    try:
        cfg = load_curate_config(path)
        check_benchmarks(cfg.decontamination, "config")
        if cfg.fluency.enabled and (problem := fluency_unavailable(cfg.fluency.model)):
            raise RecipeError(f"config: fluency: {problem}")
    except RecipeError as err:
        fail(str(err))
    return cfg


class LineReporter(LogReporter):
    """Progress as timestamped lines on standard error, for a log file, CI or
    a scheduler (rich's bars draw only at the end when there is no terminal)."""

    def emit(self, handle, text: str) -> None:
        console.print(f"{time.strftime('%H:%M:%S')} {text}", highlight=False, soft_wrap=True,
                      markup=False)


@contextlib.contextmanager
def showing_progress() -> Iterator[None]:
    """Progress of the flow run inside: bars on a terminal, else lines."""
    with contextlib.ExitStack() as stack:
        if console.is_terminal:
            reporter = RichReporter(stack.enter_context(Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=console)))
        else:
            reporter = LineReporter()
        previous = set_reporter(reporter)
        try:
            yield
        finally:
            set_reporter(previous)


RUN_LOG = "sftmill.log"


class FirstLines(logging.Formatter):
    """A console formatter's output without tracebacks: each record in its own lines only."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


@contextlib.contextmanager
def tracebacks_to(run_dir: Path) -> Iterator[Path]:
    """While a command runs: the console's log lines lose their tracebacks,
    and every warning and error goes, traceback and all, to `sftmill.log` in
    `run_dir`, the path yielded (a write that fails there, a full disk say, is
    dropped: it must not print one)."""
    log = run_dir.resolve() / RUN_LOG
    root = logging.getLogger()
    to_file = logging.FileHandler(log, delay=True, encoding="utf-8")
    to_file.setLevel(logging.WARNING)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_file.handleError = lambda record: None
    consoles = [h for h in root.handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    formats = [h.formatter for h in consoles]
    for handler in consoles:
        handler.setFormatter(FirstLines(handler.formatter))
    root.addHandler(to_file)
    try:
        yield log
    finally:
        root.removeHandler(to_file)
        to_file.close()
        for handler, fmt in zip(consoles, formats):
            handler.setFormatter(fmt)

