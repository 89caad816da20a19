"""A clean exit whatever signal handlers the training process installed.

Two things keep a process from ending when loader workers are alive at interpreter exit:

- Python runs multiprocessing's exit hook, which sends daemon workers SIGTERM and then joins
  them. A worker forked after the main process installed a SIGTERM handler (PyTorch Lightning
  installs one; so do job schedulers' wrappers) inherits that handler: it runs it, usually
  swallows the signal, and the join waits forever. So a worker process first puts every
  handler it inherited back to the default (:func:`reset_inherited_handlers`).
- Workers that are still waiting for tasks when Python exits should be told to stop rather
  than terminated. Every live pool of workers (and torch iterator the loader holds) registers
  here; one ``atexit`` hook, which runs before multiprocessing's own (hooks run in reverse
  order of registration, and multiprocessing registers its hook when it is imported, before
  fastload), stops them all first (:func:`close_at_exit`).
"""

from __future__ import annotations

import atexit
import signal
import threading
import weakref
from typing import Any

__all__ = ["reset_inherited_handlers", "close_at_exit"]

_live: weakref.WeakSet = weakref.WeakSet()
_lock = threading.Lock()
_registered = False


def reset_inherited_handlers(ignore_interrupt: bool) -> None:
    """In a new worker process: every signal handler set in Python (inherited from the main
    process through fork) back to its default, so SIGTERM ends the worker as it should.
    ``ignore_interrupt``: ignore SIGINT instead (Ctrl-C reaches the whole process group;
    the main process handles it and stops its workers)."""
    for sig in signal.valid_signals():
        try:
            handler = signal.getsignal(sig)
        except (OSError, ValueError):
            continue
        if callable(handler) and handler is not signal.default_int_handler:
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError, RuntimeError):
                pass  # a signal that cannot be caught, or not from this thread
    if ignore_interrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def close_at_exit(thing: Any) -> None:
    """Have ``thing.close()`` called at interpreter exit if ``thing`` is still alive then
    (kept by a weak reference: it may go earlier)."""
    global _registered
    with _lock:
        _live.add(thing)
        if not _registered:
            atexit.register(_close_all)
            _registered = True


def _close_all() -> None:
    with _lock:
        things = list(_live)
    for thing in things:
        try:
            thing.close()
        except Exception:
            pass  # exiting: one that cannot be closed must not keep the others open
