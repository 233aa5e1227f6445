"""SIGTERM (``kill``, a scheduler's pre-emption) handled like Ctrl-C: the loop stops, last.pt is
saved with the running state, and the run can be resumed. Only in the main thread, where Python
lets a handler be installed; the previous handler is put back when the loop ends."""
from __future__ import annotations

import contextlib
import signal
import threading


class Interrupted(Exception):
    """Raised in the training loop by SIGTERM; caught beside KeyboardInterrupt."""


@contextlib.contextmanager
def sigterm_interrupts():
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum, frame):
        raise Interrupted()

    old = signal.signal(signal.SIGTERM, on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
