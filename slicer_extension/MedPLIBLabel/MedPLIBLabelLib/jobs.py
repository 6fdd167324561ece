"""Background jobs for slow server calls, without Qt.

The worker thread only runs the given function (HTTP, file I/O, numpy); it must never touch Qt, VTK or MRML.
The Slicer widget polls :meth:`JobRunner.poll` from a ``qt.QTimer`` on the main thread, which runs the callbacks
there. Cancelling is cooperative: an HTTP call cannot be interrupted, so a cancelled job's thread finishes in the
background and its result is discarded (``on_discard`` then runs in the worker, e.g. to delete a result file).

Why :meth:`JobRunner.poll` waits ``POLL_YIELD_S`` on the job: Slicer's PythonQt keeps the GIL while Qt's event loop
idles, so a worker thread only runs while the main thread executes Python. Without a short blocking wait (which
releases the GIL) a 20 MB transfer crawls at the pace of the timer ticks.

Example (in the widget)::

    self.runner = JobRunner()
    self.runner.submit(client.infer, "medplib", image_id, params, on_done=self.onResult, on_error=self.onError)
    self.timer.timeout.connect(self.runner.poll)     # shows/updates progress via runner.status_text()
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

__all__ = ["BackgroundJob", "JobRunner", "JobCancelled", "Busy", "PROGRESS_DELAY_S", "POLL_YIELD_S", "POLL_MS"]

PROGRESS_DELAY_S = 2.0  # show a progress dialog only for jobs slower than this (as SlicerNNInteractive)
POLL_MS = 50  # the widget's QTimer interval while a job runs
POLL_YIELD_S = 0.02  # each poll releases the GIL this long (the worker's share: ~40 % of the wall time)


class JobCancelled(Exception):
    """Raised by :meth:`BackgroundJob.result` for a cancelled job."""


class Busy(RuntimeError):
    """A job is already running; one request at a time."""

    user_message = "A request to the MedPLIB server is still running. Wait for it or cancel it first."


class BackgroundJob:
    """Runs ``fn(*args, **kwargs)`` in a daemon thread, started at construction.

    ``done``: finished (or cancelled); ``result()``: the return value (re-raises the function's exception, raises
    :class:`JobCancelled` after ``cancel()``); ``error``: the exception or None; ``elapsed``: seconds since the
    start (frozen at the end); ``show_progress``: True while running for more than ``progress_delay`` seconds.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any, progress_delay: float = PROGRESS_DELAY_S,
                 name: str = "", on_discard: Optional[Callable[[Any], None]] = None, **kwargs: Any):
        self.fn = fn
        self.on_discard = on_discard  # gets the result of a cancelled job (to remove its files)
        self._lock = threading.Lock()
        self._taken = False
        self.name = name or getattr(fn, "__name__", "job")
        self.progress_delay = float(progress_delay)
        self._args, self._kwargs = args, kwargs
        self._finished = threading.Event()
        self._cancelled = threading.Event()
        self._result: Any = None
        self._error: Optional[BaseException] = None
        self._t0 = time.monotonic()
        self._t1: Optional[float] = None
        self._thread = threading.Thread(target=self._run, name=f"MedPLIBLabel-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        result, error = None, None
        try:
            result = self.fn(*self._args, **self._kwargs)
        except BaseException as exc:  # reported to the main thread, never raised in the worker
            error = exc
        with self._lock:  # against cancel(): a result is either delivered or discarded, never both or neither
            discard = self._cancelled.is_set()
            if not discard:
                self._result, self._error = result, error
            self._t1 = time.monotonic()
            self._args = self._kwargs = ()  # type: ignore[assignment]
            self._finished.set()
        if discard and error is None:
            self._discard(result)

    def _discard(self, result: Any) -> None:
        if self.on_discard is not None and result is not None:
            try:
                self.on_discard(result)
            except Exception:  # clean-up of a dropped result must never raise anywhere
                pass

    # ------------------------------------------------------------------ state
    @property
    def done(self) -> bool:
        """True when the function returned or raised, or the job was cancelled."""
        return self._finished.is_set() or self._cancelled.is_set()

    @property
    def running(self) -> bool:
        return not self.done

    @property
    def finished(self) -> bool:
        """True when the worker thread has actually ended (a cancelled job may still be running)."""
        return self._finished.is_set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def error(self) -> Optional[BaseException]:
        """The function's exception (None while running, on success, or after cancel)."""
        return None if self._cancelled.is_set() else self._error

    @property
    def elapsed(self) -> float:
        end = self._t1 if self._t1 is not None else time.monotonic()
        return end - self._t0

    @property
    def show_progress(self) -> bool:
        return self.running and self.elapsed >= self.progress_delay

    # ------------------------------------------------------------------ control
    def cancel(self) -> None:
        """Discard the result; the thread finishes on its own (then ``on_discard`` gets its result)."""
        with self._lock:
            already = self._cancelled.is_set()
            self._cancelled.set()
            late = self._finished.is_set() and not self._taken and not already
            result, self._result = self._result, None
        if late:  # finished but never delivered: discard it here
            self._discard(result)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until done (or ``timeout`` seconds); True when done. Do not call from Slicer's main thread
        with a long timeout."""
        if self._cancelled.is_set():
            return True
        return self._finished.wait(timeout)

    def result(self, timeout: Optional[float] = None) -> Any:
        """The function's return value; re-raises its exception; :class:`JobCancelled` when cancelled;
        ``TimeoutError`` when not done within ``timeout``."""
        if not self.wait(timeout):
            raise TimeoutError(f"job {self.name} still running after {timeout} s")
        if self._cancelled.is_set():
            raise JobCancelled(f"job {self.name} was cancelled")
        if self._error is not None:
            raise self._error
        self._taken = True
        return self._result

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else "failed" if self._error else "done" if self.done else "running"
        return f"BackgroundJob({self.name}, {state}, {self.elapsed:.1f}s)"


class JobRunner:
    """One job at a time, polled from the main thread.

    ``submit`` raises :class:`Busy` while a job runs (a cancelled job no longer counts). ``poll()`` returns
    "idle", "running" or the final state of the job it just completed ("done", "error", "cancelled") and runs
    its ``on_done(result)`` / ``on_error(exc)`` callback on the calling (main) thread.
    """

    def __init__(self, progress_delay: float = PROGRESS_DELAY_S):
        self.progress_delay = progress_delay
        self.job: Optional[BackgroundJob] = None
        self._on_done: Optional[Callable[[Any], None]] = None
        self._on_error: Optional[Callable[[BaseException], None]] = None

    @property
    def busy(self) -> bool:
        return self.job is not None and self.job.running

    def submit(self, fn: Callable[..., Any], *args: Any, on_done: Optional[Callable[[Any], None]] = None,
               on_error: Optional[Callable[[BaseException], None]] = None, name: str = "",
               on_discard: Optional[Callable[[Any], None]] = None, **kwargs: Any) -> BackgroundJob:
        if self.busy:
            raise Busy(f"job {self.job.name} is still running")  # type: ignore[union-attr]
        self._on_done, self._on_error = on_done, on_error
        self.job = BackgroundJob(fn, *args, progress_delay=self.progress_delay, name=name, on_discard=on_discard,
                                 **kwargs)
        return self.job

    def cancel(self) -> bool:
        """Cancel the running job (its result will be dropped); True if there was one."""
        job = self.job
        if job is None or job.done:
            return False
        job.cancel()
        self.job, self._on_done, self._on_error = None, None, None
        return True

    def poll(self, yield_s: float = POLL_YIELD_S) -> str:
        """Deliver a finished job's result. While it runs, block up to ``yield_s`` seconds on it first: the wait
        releases the GIL, the only time the worker runs inside Slicer (see the module docstring)."""
        job = self.job
        if job is None:
            return "idle"
        if not job.done and yield_s > 0:
            job.wait(yield_s)
        if not job.done:
            return "running"
        on_done, on_error = self._on_done, self._on_error
        self.job, self._on_done, self._on_error = None, None, None
        if job.cancelled:
            return "cancelled"
        if job.error is not None:
            if on_error is not None:
                on_error(job.error)
            return "error"
        job._taken = True
        if on_done is not None:
            on_done(job._result)
        return "done"

    @property
    def show_progress(self) -> bool:
        return self.job is not None and self.job.show_progress

    def status_text(self, what: str = "Waiting for MedPLIB") -> str:
        """E.g. "Waiting for MedPLIB... 3 s" while a job runs, else ""."""
        if not self.busy:
            return ""
        return f"{what}... {int(self.job.elapsed)} s"  # type: ignore[union-attr]
