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
