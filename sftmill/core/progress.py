"""Progress reporting for long stages.

Stage code calls `progress(stage, total)` and `.advance()`; what is shown
depends on the reporter installed: the CLI installs a rich progress display,
everywhere else progress goes to the Prefect run logger (or Python logging)
every 10 %.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Iterator, Protocol

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext


class Reporter(Protocol):
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


class LogReporter:
    def __init__(self) -> None:
        self._lock = threading.Lock()

    def start(self, stage: str, total: int) -> object:
        logger = run_logger()
        logger.info("%s: %d items", stage, total)
        return {"stage": stage, "total": total, "done": 0, "logged": 0, "status": "",
                "logger": logger}

    def advance(self, handle: object, n: int = 1) -> None:
        with self._lock:
            handle["done"] += n
            total = max(1, handle["total"])
            tenth = handle["done"] * 10 // total
            if tenth > handle["logged"]:
                handle["logged"] = tenth
                status = f" ({handle['status']})" if handle["status"] else ""
                handle["logger"].info("%s: %d/%d%s", handle["stage"], handle["done"],
                                      handle["total"], status)

    def status(self, handle: object, text: str) -> None:
        handle["status"] = text

    def finish(self, handle: object, note: str = "") -> None:
        run_logger().info("%s: done %s", handle["stage"], note)


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


@contextlib.contextmanager
def progress(stage: str, total: int) -> Iterator[_Handle]:
    reporter = _reporter
    handle = _Handle(reporter, reporter.start(stage, total))
    try:
        yield handle
    finally:
        reporter.finish(handle._token, handle.note)
