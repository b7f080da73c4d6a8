"""The fit worker: one background thread, at most one fit, cancellable.

:class:`FitWorker` submits a fit job (:mod:`.jobs`) with its own cancel event,
hands its result back to the loop thread when it is done (:meth:`FitWorker.collect`)
and cancels it on request: a job that is still running is told to stop at its
next check and left to end on its own, with a fresh thread for the next fit, so
nothing queues behind it and its result is never used.
"""

from __future__ import annotations

import concurrent.futures
import threading
from dataclasses import dataclass

from .jobs import FitCancelled


@dataclass
class Fit:
    """A fit running in the worker."""

    kind: str  # "transfer" | "unlabelled" | "train"
    burst: int | None
    future: concurrent.futures.Future
    cancel: threading.Event
    purpose: str


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="emtl-fit")


class FitWorker:
    """Run fit jobs one at a time in a background thread.

    Attributes
    ----------
    fit : Fit or None
        The fit submitted and not yet collected or cancelled.
    """

    def __init__(self):
        self._pool = _executor()
        self.fit: Fit | None = None

    def submit(self, fit_kind: str, burst, purpose: str, fn, /, *args, **kwargs) -> Fit:
        """Start ``fn(*args, cancel=event, **kwargs)`` in the worker thread.

        Parameters
        ----------
        fit_kind : str
            "transfer", "unlabelled" or "train".
        burst : int or None
            The stored burst the fit uses.
        purpose : str
            The session's purpose.
        fn : callable
            A job of :mod:`.jobs`.
        *args, **kwargs
            Its arguments. The first four parameters are positional-only so that a
            job's own keywords (``train_job``'s ``kind``) cannot collide with them.
        """
        cancel = threading.Event()
        future = self._pool.submit(fn, *args, cancel=cancel, **kwargs)
        self.fit = Fit(fit_kind, burst, future, cancel, purpose)
        return self.fit

    def collect(self):
        """Take the finished fit, if there is one.

        Returns
        -------
        tuple of (Fit, object) or None
            The fit and its result; None while it runs, when there is none, or when
            the job ended by its cancel check.

        Raises
        ------
        Exception
            Whatever the job raised (other than :class:`~.jobs.FitCancelled`).
        """
        fit = self.fit
        if fit is None or not fit.future.done():
            return None
        self.fit = None
        try:
            return fit, fit.future.result()
        except FitCancelled:
            return None

    def cancel(self) -> bool:
        """Cancel the fit; True if there was one."""
        fit, self.fit = self.fit, None
        if fit is None:
            return False
        fit.cancel.set()
        if not fit.future.cancel():  # running: leave it, start a fresh thread
            self._pool.shutdown(wait=False)
            self._pool = _executor()
        return True

    def shutdown(self) -> None:
        """Tell a running fit to stop and release the thread (does not wait)."""
        if self.fit is not None:
            self.fit.cancel.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
