"""Load what a later stage needs while the current ones wait on their calls.

Importing a library or loading a model can take seconds of one core
(sentence-transformers and torch ~8 s, scikit-learn with the offensive-language
model ~2.5 s, matplotlib ~1.3 s).  Done by the stage that needs it, that time
adds to the run; done in a background thread while earlier stages wait on a
server, it is hidden.  A stage that needs the thing meanwhile waits for it
(the import lock, or the loader's own lock); a failure here is left for that
stage to meet and report.
"""

from __future__ import annotations

import threading
from typing import Callable

_WHEN_WAITING: "list[tuple[str, list[Callable[[], object]]]]" = []
_LOCK = threading.Lock()


def when_waiting(name: str, loaders: "list[Callable[[], object]]") -> None:
    """`warm_up` these once the process next waits on LLM calls
    (`start_waiting_work`, called by `LLM.chat_chunks` when it has sent its
    first requests): not while a stage renders its prompts, and not at all
    when no later stage sends a batch (a rerun whose stages come back from
    Prefect's cache)."""
    if loaders:
        with _LOCK:  # one entry per name: a flow run again before any call replaces its own
            _WHEN_WAITING[:] = [(n, ls) for n, ls in _WHEN_WAITING if n != name]
            _WHEN_WAITING.append((name, list(loaders)))


def start_waiting_work() -> None:
    with _LOCK:
        todo = _WHEN_WAITING[:]
        _WHEN_WAITING.clear()
    for name, loaders in todo:
        warm_up(name, loaders)


def warm_up(name: str, loaders: "list[Callable[[], object]]") -> threading.Thread | None:
    """Call each of `loaders` in one background thread named `name`;
    failures are ignored (the stage that needs the thing reports them)."""
    if not loaders:
        return None

    def load() -> None:
        for loader in loaders:
            try:
                loader()
            except Exception:  # noqa: BLE001 — reported where the thing is used
                pass

    # Not a daemon: a command that ends first waits for it (a thread stopped
    # mid-import by the interpreter's shutdown can crash the exit).
    thread = threading.Thread(target=load, name=name)
    thread.start()
    return thread
