"""Progress reporting for long stages.

Stage code calls `progress(stage, total)` and `.advance()`; what is shown
depends on the reporter installed: the CLI installs a rich progress display
on a terminal, and lines on standard error otherwise; everywhere else
progress goes to the Prefect run logger (or Python logging).  Lines: one when
a stage starts (`stage_started`, called by every stage task), one when its
work is counted, then at most one every `LOG_EVERY_S` seconds (done / total,
the stage's live status such as requests/s, an ETA), and one when it ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Iterator, Protocol

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext

# Seconds between two progress lines of one stage (SFTMILL_PROGRESS_SECONDS sets it).
LOG_EVERY_S = float(os.environ.get("SFTMILL_PROGRESS_SECONDS") or 15)


class Reporter(Protocol):
    def started(self, stage: str) -> None: ...
    def start(self, stage: str, total: int) -> object: ...
    def advance(self, handle: object, n: int = 1) -> None: ...
    def status(self, handle: object, text: str) -> None: ...  # a live line, e.g. rates
    def finish(self, handle: object, note: str = "") -> None: ...


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a run, else the `sftmill` logger."""
    try:
        return get_run_logger()
    except Exception:  # outside a Prefect run
        return logging.getLogger("sftmill")


def clock(seconds: float) -> str:
    """4 s, 3 min 20 s, 1 h 05 min."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress_line(handle: dict, now: float) -> str:
    """stage: done/total (percent) · status · ETA."""
    done, total = handle["done"], handle["total"]
    elapsed = now - handle["started"]
    parts = [f"{handle['stage']}: {done}/{total} ({100 * done // max(1, total)}%)"]
    if handle["status"]:
        parts.append(handle["status"])
    if 0 < done < total:
        parts.append(f"ETA {clock(elapsed / done * (total - done))}")
    return " · ".join(parts)


class LogReporter:
    """Progress as log lines, at most one per stage every `every` seconds."""

    def __init__(self, every: float = LOG_EVERY_S) -> None:
        self._lock = threading.Lock()
        self.every = every

    def emit(self, handle: dict | None, text: str) -> None:
        (handle["logger"] if handle else run_logger()).info("%s", text)

    def started(self, stage: str) -> None:
        self.emit(None, f"{stage}: started")

    def start(self, stage: str, total: int) -> object:
        now = time.monotonic()
        handle = {"stage": stage, "total": total, "done": 0, "status": "", "logger": run_logger(),
                  "started": now, "logged": now}
        self.emit(handle, f"{stage}: {total} items")
        return handle

    def advance(self, handle: object, n: int = 1) -> None:
        now = time.monotonic()
        with self._lock:
            handle["done"] += n
            if now - handle["logged"] < self.every or handle["done"] >= handle["total"]:
                return
            handle["logged"] = now
        self.emit(handle, progress_line(handle, now))

    def status(self, handle: object, text: str) -> None:
        handle["status"] = text

    def finish(self, handle: object, note: str = "") -> None:
        took = clock(time.monotonic() - handle["started"])
        self.emit(handle, f"{handle['stage']}: {handle['done']}/{handle['total']} done in {took}"
                  + (f" ({note})" if note else ""))


class PrefectReporter(LogReporter):
    """Logs like LogReporter and, inside a Prefect task run, keeps a progress
    artifact up to date so the UI shows how far a long stage is."""

    def start(self, stage: str, total: int) -> object:
        handle = super().start(stage, total)
        handle["artifact"] = None
        try:
            if TaskRunContext.get() is not None:
                handle["artifact"] = create_progress_artifact(
                    progress=0.0, description=f"{stage}: {total} items")
        except Exception:  # no API to talk to: the log lines still say it
            handle["artifact"] = None
        handle["shown"] = 0
        return handle

    def advance(self, handle: object, n: int = 1) -> None:
        super().advance(handle, n)
        percent = 100 * handle["done"] // max(1, handle["total"])
        if handle.get("artifact") is not None and percent >= handle["shown"] + 5:
            handle["shown"] = percent
            self._update(handle, float(percent))

    def finish(self, handle: object, note: str = "") -> None:
        super().finish(handle, note)
        if handle.get("artifact") is not None:
            self._update(handle, 100.0)

    @staticmethod
    def _update(handle: dict, percent: float) -> None:
        try:
            update_progress_artifact(artifact_id=handle["artifact"], progress=percent)
        except Exception:
            handle["artifact"] = None


_reporter: Reporter = PrefectReporter()


def set_reporter(reporter: Reporter) -> Reporter:
    global _reporter
    previous, _reporter = _reporter, reporter
    return previous


class _Handle:
    def __init__(self, reporter: Reporter, token: object):
        self._reporter, self._token = reporter, token
        self.note = ""

    def advance(self, n: int = 1) -> None:
        self._reporter.advance(self._token, n)

    def status(self, text: str) -> None:
        self._reporter.status(self._token, text)


def stage_started(stage: str) -> None:
    """Say that a stage begins its work (not for a stage taken from the cache)."""
    _reporter.started(stage)


@contextlib.contextmanager
def progress(stage: str, total: int) -> Iterator[_Handle]:
    reporter = _reporter
    handle = _Handle(reporter, reporter.start(stage, total))
    try:
        yield handle
    finally:
        reporter.finish(handle._token, handle.note)
