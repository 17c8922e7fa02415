"""The LLM layer's event loop: one per process, in a thread of its own, that every backend's
requests run on; the calling thread waits on its futures (merging the call journal meanwhile), with
the heap set aside from the cyclic garbage collector while a batch is in flight."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import contextvars
import gc
import logging
import sys
import threading
from typing import Any, Callable, Sequence

_SET_ASIDE = 0  # batches in flight that set the heap aside
_SET_ASIDE_LOCK = threading.Lock()


@contextlib.contextmanager
def heap_set_aside():
    """While a batch's calls are in flight, the objects alive when it began
    are out of the cyclic garbage collector's reach (`gc.freeze`), and what
    the batch keeps joins them with every chunk sent and every few seconds
    after (`chat_chunks`): a full collection walks only what was allocated
    since.  A full collection holds the interpreter lock, and the LLM loop
    waits on it with every answer: in a 20k-prompt run they took 150–590 ms
    each, 7 s in all, each a dip in the requests sent (almost none found
    anything to free).  When the last batch in flight ends, the objects go
    back (`gc.unfreeze`)."""
    global _SET_ASIDE
    with _SET_ASIDE_LOCK:
        gc.freeze()  # a nested batch (the answer stage's judge) sets aside what came since
        _SET_ASIDE += 1
    try:
        yield
    finally:
        with _SET_ASIDE_LOCK:
            _SET_ASIDE -= 1
            if _SET_ASIDE == 0:
                gc.unfreeze()


MERGE_EVERY_S = 2.0  # journal → llm_calls while a batch runs
_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def llm_loop() -> asyncio.AbstractEventLoop:
    """The process's event loop for LLM I/O, running in a daemon thread:
    connections, concurrency limits and what they learned live across the
    stages of a run instead of being rebuilt for every batch."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="sftmill-llm", daemon=True).start()
            _LOOP = loop
            atexit.register(_close_loop, loop)
        return _LOOP


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """At exit: close the loop's HTTP session (its connections), then stop it."""
    transport = sys.modules.get("sftmill.llm.transport")
    if transport is not None and loop.is_running():
        try:
            asyncio.run_coroutine_threadsafe(transport.close_shared(loop), loop).result(timeout=5)
        except Exception:  # exiting anyway
            pass
    loop.call_soon_threadsafe(loop.stop)


def submit(coro) -> concurrent.futures.Future:
    """Start a coroutine on the LLM loop from sync code; it sees the caller's
    context variables (Prefect's run context, say)."""
    loop = llm_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise RuntimeError("called on the LLM loop itself: await the coroutine")
    done: concurrent.futures.Future = concurrent.futures.Future()
    context = contextvars.copy_context()

    def start() -> None:
        task = loop.create_task(coro, context=context)

        def finish(t: asyncio.Task) -> None:
            if t.cancelled():
                done.cancel()
            elif t.exception() is not None:
                done.set_exception(t.exception())
            else:
                done.set_result(t.result())

        task.add_done_callback(finish)

    loop.call_soon_threadsafe(start)
    return done


def wait_for(futures: Sequence[concurrent.futures.Future],
             tick: Callable[[], Any] | None = None, every_s: float | None = None) -> None:
    """Wait until every future is done, calling `tick` on this thread every
    `every_s` meanwhile."""
    while True:
        _, pending = concurrent.futures.wait(futures, timeout=every_s or MERGE_EVERY_S)
        if not pending:
            return
        if tick is not None:
            try:
                tick()
            except Exception as err:  # the final tick reports a real problem
                logging.getLogger(__name__).warning("periodic work while waiting failed: %s", err)


def run_sync(coro, tick: Callable[[], Any] | None = None):
    """Run a coroutine on the LLM loop from sync code and wait for it."""
    done = submit(coro)
    wait_for([done], tick)
    return done.result()
