"""The daemon's ``event`` messages: publishing, the queue before binding, rate limits.

:class:`Events` is a plain object driven by explicit calls. It publishes through
a ``send(topic, message)`` callable bound once the publisher exists, keeps the
events found before that (a refused map at start-up) until then, and owns the
rate limits of repeated announcements (``bad_input``).
"""

from __future__ import annotations

import math
import time

from ..logs import logger

#: At most one ``bad_input`` event of each kind (NaN/inf windows, speed) per this
#: many seconds.
BAD_INPUT_EVENT_S = 1.0


class Events:
    """Publish, queue and rate-limit the daemon's events.

    Parameters
    ----------
    clock : callable
        The LSL local clock; stamps ``t_pub``.
    monotonic : callable, optional
        The clock of the rate limits (default :func:`time.monotonic`).
    """

    def __init__(self, clock, monotonic=time.monotonic):
        self.clock = clock
        self._monotonic = monotonic
        self._send = None
        self._pending: list[tuple[str, dict]] = []
        self._announced_at: dict[str, float] = {}
        self._nonfinite_total = 0  # skipped windows already counted in an event

    @property
    def bound(self) -> bool:
        """Whether events are published (after :meth:`bind`)."""
        return self._send is not None

    def bind(self, send) -> None:
        """Publish from now on (the queue waits for :meth:`flush`).

        Parameters
        ----------
        send : callable
            ``send(topic, message)``, e.g. ``Publisher.publish``.
        """
        self._send = send

    def flush(self) -> None:
        """Publish the events queued before :meth:`bind`, in order."""
        pending, self._pending = self._pending, []
        for kind, fields in pending:
            self.emit(kind, **fields)

    def unbind(self) -> None:
        """Stop publishing (the publisher is closed); later events are dropped."""
        self._send = None

    def emit(self, kind: str, **fields) -> None:
        """Publish one ``event`` (logged too); dropped while not bound.

        Parameters
        ----------
        kind : str
            One of ``protocol.EVENT_KINDS``.
        **fields
            The event's fields.
        """
        from ..io import protocol

        if self._send is None:
            return
        logger.info("event %s %s", kind, fields)
        self._send("event", protocol.event_msg(kind, t_pub=float(self.clock()), **fields))

    def queue(self, kind: str, **fields) -> None:
        """Publish at the next :meth:`flush` (at once if bound and nothing is queued).

        Parameters
        ----------
        kind : str
        **fields
        """
        if self._send is not None and not self._pending:
            self.emit(kind, **fields)
        else:
            self._pending.append((kind, fields))

    def due(self, key: str) -> bool:
        """Return True at most once per :data:`BAD_INPUT_EVENT_S` for each ``key``.

        Parameters
        ----------
        key : str
            The kind of announcement.
        """
        now = self._monotonic()
        if now - self._announced_at.get(key, -math.inf) <= BAD_INPUT_EVENT_S:
            return False
        self._announced_at[key] = now
        return True

    def nonfinite_skipped(self, total: int) -> None:
        """Announce windows skipped for NaN/inf samples (rate-limited).

        Parameters
        ----------
        total : int
            Windows the pipeline skipped so far; the event counts every one since
            the previous event, not only the last chunk's.
        """
        if self.due("nonfinite"):
            since, self._nonfinite_total = total - self._nonfinite_total, total
            self.emit("bad_input", reason=f"{since} window(s) with NaN/inf samples skipped",
                      skipped_total=total)

    def reset_nonfinite(self) -> None:
        """Count skipped windows from zero again (a new pipeline)."""
        self._nonfinite_total = 0

    def bad_speed(self, reason: str) -> None:
        """Announce a window the speed could not use (rate-limited).

        Parameters
        ----------
        reason : str
        """
        if self.due("speed"):
            self.emit("bad_input", reason=f"speed: {reason}")
