"""Post-processing of one classified window: rejection and majority voting.

A plain object driven by :meth:`PostProcessor.process`, no sockets or threads.
A window whose classification failed (index −1, a non-finite confidence, or
probabilities that do not sum to 1) is not a prediction: it returns ``None``,
consumes no sequence number and never enters the vote deque, so the vote cannot
pick the invalid index −1.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

import numpy as np

#: A posterior whose probabilities do not sum to 1 within this is not a posterior
#: (e.g. every log-joint underflowed the same way for an absurd input) and is dropped.
PROBA_SUM_TOL = 1e-6


@dataclass(frozen=True)
class Decision:
    """The published outcome of one window.

    Parameters
    ----------
    seq : int
        Sequence number (1, 2, ...; only valid windows get one).
    index : int
        Class index after voting.
    confidence : float
        Probability of the window's own most probable class, before voting.
    rejected : bool
        ``confidence`` below the rejection threshold.
    """

    seq: int
    index: int
    confidence: float
    rejected: bool


class PostProcessor:
    """Rejection threshold and majority vote over the last windows.

    Parameters
    ----------
    reject_below : float
        ``[classify] reject_below``: a window whose confidence is below it is
        published with ``rejected: true`` (0 disables rejection).
    vote_windows : int
        ``[classify] vote_windows``: majority over this many windows (1 = no voting).
        Ties go to the class seen first among the tied ones (``Counter`` order).
    """

    def __init__(self, reject_below: float = 0.0, vote_windows: int = 1):
        self.reject_below = float(reject_below)
        self.votes: collections.deque = collections.deque(maxlen=max(1, int(vote_windows)))
        self.seq = 0

    def reset_votes(self) -> None:
        """Forget the vote history (after a swap the old map's votes mean nothing)."""
        self.votes.clear()

    def process(self, index: int, proba) -> Decision | None:
        """Turn one window's classification into a decision, or ``None`` if it is invalid.

        Parameters
        ----------
        index : int
            The window's most probable class, −1 if classification failed.
        proba : array-like of shape (L,)
        """
        proba = np.asarray(proba)
        if index < 0 or index >= proba.shape[0]:
            return None
        confidence = float(proba[index])
        if not math.isfinite(confidence) or not abs(float(proba.sum()) - 1.0) <= PROBA_SUM_TOL:
            return None
        if self.votes.maxlen > 1:
            self.votes.append(int(index))
            index = collections.Counter(self.votes).most_common(1)[0][0]
        self.seq += 1
        return Decision(self.seq, int(index), confidence, confidence < self.reject_below)
