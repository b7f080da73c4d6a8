"""Shift watch: flags windows that have become much less likely under the source model.

The reference level is the median marginal log-likelihood of windows and a robust
spread (1.4826 MAD). It comes either from a persisted :class:`ShiftReference`
(taken after the last accepted calibration, or from held-out training windows)
or, when there is none, from the first live windows after a reset. A running
median over the last windows that falls more than ``max(4 spreads, 1 nat per
feature)`` below the reference raises one ``shift_suspected``; the watch re-arms
when the level comes back within 2 spreads.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

import numpy as np

#: Windows whose log-likelihoods make the reference when none is given (4 s at a 50 ms step).
REFERENCE_WINDOWS = 80
#: Windows in the running median compared against the reference (2 s at a 50 ms step).
RECENT_WINDOWS = 40
#: Alarm when the running median is this many robust spreads below the reference ...
ALARM_SPREADS = 4.0
#: ... and at least this many nats per mapped feature below it.
ALARM_NATS_PER_FEATURE = 1.0
#: Re-arm once the running median is back within this many spreads.
REARM_SPREADS = 2.0
#: Floor of the spread so a constant reference cannot alarm on rounding.
MIN_SPREAD = 1e-6
#: 1.4826 × MAD estimates a standard deviation for Gaussian data.
MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class ShiftReference:
    """Reference log-likelihood level of unshifted windows.

    Parameters
    ----------
    median : float
        Median marginal log-likelihood.
    spread : float
        Robust spread (1.4826 MAD), > 0.
    n_windows : int
        Windows it was computed from.
    """

    median: float
    spread: float
    n_windows: int = 0

    @classmethod
    def from_log_likelihoods(cls, values) -> "ShiftReference":
        """Reference from marginal log-likelihoods of unshifted windows (finite ones used)."""
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            raise ValueError("a shift reference needs at least one finite log-likelihood")
        mu = float(np.median(v))
        sd = float(MAD_TO_SD * np.median(np.abs(v - mu)))
        return cls(mu, max(sd, MIN_SPREAD), int(v.size))

    def to_dict(self) -> dict:
        """JSON-able form (stored in a map's or a bundle's meta)."""
        return {"median": self.median, "spread": self.spread, "n_windows": self.n_windows}

    @classmethod
    def from_dict(cls, d) -> "ShiftReference":
        """Inverse of :meth:`to_dict`; ``ValueError`` on a malformed or non-finite entry."""
        try:
            mu, sd, n = float(d["median"]), float(d["spread"]), int(d.get("n_windows", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed shift reference {d!r}: {exc}") from None
        if not (math.isfinite(mu) and math.isfinite(sd) and sd > 0):
            raise ValueError(f"shift reference needs a finite median and a positive spread: {d!r}")
        return cls(mu, sd, n)


class ShiftWatch:
    """Likelihood-level shift detector fed one classified window at a time.

    Parameters
    ----------
    n_features : int
        Mapped feature dimension m (sets the nats-per-feature part of the margin).
    reference : ShiftReference, optional
        Known reference level; without one it is learnt from the first
        :data:`REFERENCE_WINDOWS` finite windows.
    """

    def __init__(self, n_features: int, reference: ShiftReference | None = None):
        self.n_features = int(n_features)
        self._recent: collections.deque = collections.deque(maxlen=RECENT_WINDOWS)
        self._learning: list[float] = []
        self.reference = reference
        self.flagged = False

    def reset(self, reference: ShiftReference | None = None) -> None:
        """Start over (after every swap), with ``reference`` or learning a new one."""
        self.reference = reference
        self._learning = []
        self._recent.clear()
        self.flagged = False

    def update(self, log_marginal: float, z: np.ndarray, t: float) -> dict | None:
        """Feed one classified window; returns the fields of one ``shift_suspected`` event, or None.

        Parameters
        ----------
        log_marginal : float
            log p(H x + b) of the window (non-finite values are ignored).
        z : ndarray of shape (m,)
            The mapped features (unused by this detector).
        t : float
            LSL time of the window's last sample.
        """
        ll = float(log_marginal)
        if not math.isfinite(ll):
            return None
        if self.reference is None:
            self._learning.append(ll)
            if len(self._learning) >= REFERENCE_WINDOWS:
                self.reference = ShiftReference.from_log_likelihoods(self._learning)
                self._learning = []
            return None
        self._recent.append(ll)
        if len(self._recent) < self._recent.maxlen:
            return None
        mu, sd = self.reference.median, self.reference.spread
        level = float(np.median(self._recent))
        margin = max(ALARM_SPREADS * sd, ALARM_NATS_PER_FEATURE * self.n_features)
        if not self.flagged and level < mu - margin:
            self.flagged = True
            return {"log_likelihood": level, "baseline": mu, "spread": sd, "t": float(t),
                    "reason": "recent windows are much less likely under the source model "
                              "than after the last calibration; consider recalibrating"}
        if self.flagged and level > mu - REARM_SPREADS * sd:
            self.flagged = False
        return None
