"""SIGINT and SIGTERM as one exception, so an interrupted command unwinds like a failed one.

The exception runs every ``finally`` and ``except BaseException`` on its way out: the temporary file of
:func:`tmdeploy.fileio.atomic_write` is removed, a half-built Triton repository is dropped, a server is
stopped. The command line then prints one line and exits 128 + the signal number (130, 143).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; a KeyboardInterrupt so code that stops on Ctrl-C stops on both."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def handled(exiting: bool = False):
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted`; the previous handlers come back after.

    ``exiting``: the process exits after the block, so from its end on both signals are ignored instead.
    The command's outcome is settled by then, and the interpreter's tear-down (torch's finalizers take a
    while) would otherwise die by the signal, exit -2 and no message, after its files were written.
    Signal handlers belong to the main thread: elsewhere (a test calling the CLI from a thread) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_IGN if exiting else handler)


@contextlib.contextmanager
def deferred():
    """Within the block, SIGINT and SIGTERM wait: the block finishes (a commit of several renames that must
    not stop halfway; a child process started and its handle kept, so that nothing is left that no one
    stops), and a signal that came meanwhile is then delivered to the handler in force before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: arrived.append(signum)) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if arrived:
            signal.raise_signal(arrived[0])


def _raise(signum, frame):
    for other in SIGNALS:  # a second signal must not interrupt the clean-up the first one started
        signal.signal(other, signal.SIG_IGN)
    raise Interrupted(signum)


class _AlternateStack(ctypes.Structure):  # stack_t of sigaltstack(2)
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def alternate_stack_kept():
    """The calling thread's alternate signal stack as it was before the block.

    OpenVINO's CPU plugin registers an alternate stack of its own in the thread that compiles a model, and may
    free it while it is still registered. The next SIGINT or SIGTERM to that thread then dies by SIGSEGV before
    any handler runs, since Python's handlers run on the alternate stack (SA_ONSTACK): measured here after an
    optimize with OpenVINO candidates. Python has no binding of sigaltstack(2), hence ctypes; where libc is
    not at hand the block runs as it is."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        sigaltstack = libc.sigaltstack
    except (OSError, AttributeError):
        yield
        return
    saved = _AlternateStack()
    if sigaltstack(None, ctypes.byref(saved)) != 0:
        yield
        return
    try:
        yield
    finally:
        sigaltstack(ctypes.byref(saved), None)
