"""When to try connecting to the EMG stream, and why it is not connected.

:class:`ConnectPolicy` holds the connect back-off and the reasons the daemon
reports (a refused stream, a lost one) as a plain object: the daemon tells it
what happened and asks it when to try again, what to announce and what
``status.stream.reason`` says.
"""

from __future__ import annotations

#: First and largest delay between two connect attempts (s).
CONNECT_BACKOFF_S = (0.5, 5.0)
#: Delay before retrying a stream that was refused (wrong channel count or rate).
REFUSED_RETRY_S = 5.0
#: ``status.stream.reason`` while nothing has been found or refused yet.
NOT_FOUND_YET = "no matching stream found yet"


class ConnectPolicy:
    """Connect back-off and the reason the stream is not connected.

    Attributes
    ----------
    refused_reason : str
        Why the last stream found was refused ("" when none was).
    lost_reason : str
        Why the connected stream was lost ("" while connected).
    backoff_s : float
        Delay after the next failed attempt.
    """

    def __init__(self):
        self.refused_reason = ""
        self.lost_reason = ""
        self.backoff_s = CONNECT_BACKOFF_S[0]
        self._next_try = 0.0

    def may_try(self, now: float) -> bool:
        """Return whether a connect attempt is due.

        Parameters
        ----------
        now : float
            Monotonic time (s).
        """
        return now >= self._next_try

    def refused(self, reason: str, now: float) -> bool:
        """Record a refused stream; retry after :data:`REFUSED_RETRY_S`.

        Parameters
        ----------
        reason : str
            Why it was refused.
        now : float
            Monotonic time (s).

        Returns
        -------
        bool
            True when the reason is new (announce it once, not at every retry).
        """
        self._next_try = now + REFUSED_RETRY_S
        return self.refused_seen(reason)

    def refused_seen(self, reason: str) -> bool:
        """Record a refusal met while reconnecting; True when the reason is new.

        Parameters
        ----------
        reason : str
        """
        if reason == self.refused_reason:
            return False
        self.refused_reason = reason
        return True

    def not_found(self, now: float) -> None:
        """Record an attempt that found nothing; double the back-off up to its cap.

        Parameters
        ----------
        now : float
            Monotonic time (s).
        """
        self._next_try = now + self.backoff_s
        self.backoff_s = min(self.backoff_s * 2, CONNECT_BACKOFF_S[1])

    def connected(self) -> None:
        """Record a connection: the back-off and the reasons start over."""
        self.backoff_s = CONNECT_BACKOFF_S[0]
        self.refused_reason = ""
        self.lost_reason = ""

    def lost(self, reason: str) -> None:
        """Record the loss of the connected stream.

        Parameters
        ----------
        reason : str
            What ``status.stream.reason`` says until it is back.
        """
        self.lost_reason = reason

    def reason(self) -> str:
        """Why the stream is not connected: a refusal, a loss, or none found."""
        return self.refused_reason or self.lost_reason or NOT_FOUND_YET
