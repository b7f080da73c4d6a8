"""Classify target-space windows through a transfer map H with the source model.

:class:`MappedClassifier` is the daemon's per-window hot path: features x →
z = H x + b → class log-posteriors (per-row log-sum-exp) → label index and
probabilities. Every row is processed on its own by the same numba kernel, so a
window's result never depends on the other windows in a batch.

Out-of-range windows are flagged, never classified with confidence: a window whose
mapped features lie farther than ``sqrt(MAX_SQUARED_DISTANCE)`` standard deviations
from every source component (or are NaN/inf, or overflow) gets index −1 and NaN
probabilities and log-marginal. At such distances the component log joints are so
large (|log p| > 1e11) that their differences drop below float64 resolution and the
normalisation would lose ``log L``: samples of ±1e30 gave ``proba = [1, 1, 1, 1, 1]``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._checks import as_float_matrix
from ..errors import ModelError
from .source import LOG_2PI, SourceComponents


#: Squared Mahalanobis distance (in source standard deviations) beyond which a window
#: is out of range for every component; 1e12 is 10^6 standard deviations, far past any
#: real EMG feature yet well inside the range where float64 log joints still resolve
#: posterior differences (ulp of 5e11 is 6e-5).
MAX_SQUARED_DISTANCE = 1e12
#: Largest |Σ proba − 1| accepted from the kernel; a safety net behind the distance test.
PROBA_SUM_TOLERANCE = 1e-3


class WindowScore(NamedTuple):
    """What :meth:`MappedClassifier.classify_window` gives for one window.

    Attributes
    ----------
    index : int
        Most probable class index, −1 if the posterior is not finite.
    proba : ndarray of shape (L,)
        Class probabilities (a new array).
    log_marginal : float
        log p(H x + b) under the source mixture (NaN for a non-finite ``x``).
    z : ndarray of shape (m,)
        The mapped features H x + b.
    row_log_marginals : ndarray of shape (R,) or None
        log p(H x[rows[r]] + b) of the extra rows (NaN where flagged); None without rows.
    row_index : ndarray of shape (R,), int, or None
        The class decision of each extra row (−1 where flagged); None without rows.
    """

    index: int
    proba: np.ndarray
    log_marginal: float
    z: np.ndarray
    row_log_marginals: np.ndarray | None
    row_index: np.ndarray | None


def as_components(source) -> SourceComponents:
    """Return ``source`` as :class:`SourceComponents` (calling ``to_components()`` if needed).

    Parameters
    ----------
    source : SourceComponents or object with ``to_components()``
        E.g. a fitted LabelledGMM or GMLVQ.

    Returns
    -------
    SourceComponents
    """
    if isinstance(source, SourceComponents):
        return source
    to = getattr(source, "to_components", None)
    if callable(to):
        comp = to()
        if isinstance(comp, SourceComponents):
            return comp
    raise TypeError(
        "source must be a SourceComponents or an object with a to_components() method "
        f"returning one (e.g. a fitted LabelledGMM), got {type(source).__name__}."
    )


class MappedClassifier:
    """Source-model classifier applied to mapped target features ``X @ H.T + b``.

    Parameters
    ----------
    source_components : SourceComponents or object with ``to_components()``
        The source lGMM (K components, m features, L classes).
    H : ndarray of shape (m, n)
        Transfer map, target → source.
    b : ndarray of shape (m,), optional
        Offset; zeros when omitted.

    Attributes
    ----------
    classes : ndarray of shape (L,)
    n_features_in : int
        Target dimension n.
    """

    def __init__(self, source_components, H, b=None):
        from ..kernels import estep  # deferred: importing the package compiles nothing

        self._k = estep
        src = as_components(source_components)
        self.source = src
        K, m = src.means.shape
        H = np.ascontiguousarray(H, dtype=np.float64)
        if H.ndim != 2 or H.shape[0] != m:
            raise ValueError(f"H must have shape ({m}, n) for this source model, got {H.shape}.")
        if not np.all(np.isfinite(H)):
            raise ModelError("H contains NaN or inf; refusing to classify with it.")
        b = np.zeros(m) if b is None else np.ascontiguousarray(b, dtype=np.float64).reshape(-1)
        if b.shape != (m,) or not np.all(np.isfinite(b)):
            raise ValueError(f"b must be a finite vector of shape ({m},), got shape {b.shape}.")
        self.H, self.b = H, b
        self.classes = src.classes
        self.n_features_in = H.shape[1]
        # Constant part of each component's log joint.
        self._log_c = np.ascontiguousarray(
            src.log_weights + 0.5 * src.log_det_prec - 0.5 * m * LOG_2PI
        )
        self._log_rho = src.log_label_given_comp
        #: Windows with log p(H x + b) below this are flagged (index −1, NaN proba).
        self.min_log_marginal = float(self._log_c.max() - 0.5 * MAX_SQUARED_DISTANCE)
        self._shared = bool(src.shared_precision)
        if self._shared:
            # Whitening folded into the map: y = Pᵀ(Hx + b) = G x + g, so a window
            # costs m·n + K·m flops instead of K·m².
            P = src.prec_factor[0]
            self._G = np.ascontiguousarray(P.T @ H)
            self._g = np.ascontiguousarray(P.T @ b)
            self._nu = np.ascontiguousarray(src.means @ P)
        L = len(self.classes)
        # Preallocated buffers for classify_one (one caller thread at a time).
        self._buf1 = np.empty(m)
        self._buf2 = np.empty(m)
        self._lj = np.empty(K)
        self._tb = np.empty(K)
        self._proba = np.empty(L)

    # ------------------------------------------------------------------ batch
    def _run(self, X):
        X = as_float_matrix(X, "X", allow_nonfinite=True, n_columns=self.n_features_in)
        out = np.empty((X.shape[0], len(self.classes)))
        if self._shared:
            marg = self._k.mapped_log_posteriors_shared(
                X, self._G, self._g, self._nu, self._log_c, self._log_rho, out)
        else:
            s = self.source
            marg = self._k.mapped_log_posteriors_full(
                X, self.H, self.b, s.means, s.prec_factor, self._log_c, self._log_rho, out)
        with np.errstate(invalid="ignore", over="ignore"):
            off = np.abs(np.exp(out).sum(axis=1) - 1.0)
            bad = ~(marg >= self.min_log_marginal) | ~(off <= PROBA_SUM_TOLERANCE)
        if bad.any():  # out of range, non-finite or overflowed: flagged, never confident
            out[bad] = np.nan
            marg[bad] = np.nan
        return out, marg

    def log_posteriors(self, X) -> np.ndarray:
        """Class log-posteriors log P(y = l | H x + b).

        Parameters
        ----------
        X : array-like of shape (N, n)
            A row with NaN/inf, or out of range (see :data:`MAX_SQUARED_DISTANCE`),
            gives a NaN row; other rows are unaffected.

        Returns
        -------
        ndarray of shape (N, L)
        """
        return self._run(X)[0]

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (N, L), columns in ``classes`` order.

        Parameters
        ----------
        X : array-like of shape (N, n)
            Target-space features, one window per row.

        Returns
        -------
        ndarray of shape (N, L)
        """
        return np.exp(self.log_posteriors(X))

    def predict_index(self, X) -> np.ndarray:
        """Index of the most probable class per row, shape (N,); −1 for a non-finite row.

        Parameters
        ----------
        X : array-like of shape (N, n)
            Target-space features, one window per row.

        Returns
        -------
        ndarray of shape (N,), int
        """
        lp = self.log_posteriors(X)
        idx = np.argmax(np.nan_to_num(lp, nan=-np.inf), axis=1)
        idx[np.isnan(lp).any(axis=1)] = -1
        return idx

    def log_marginal(self, X) -> np.ndarray:
        """Log p(H x + b) under the source mixture, shape (N,) (for shift detection).

        NaN for the rows :meth:`predict_index` flags with −1.

        Parameters
        ----------
        X : array-like of shape (N, n)
            Target-space features, one window per row.

        Returns
        -------
        ndarray of shape (N,)
        """
        return self._run(X)[1]

    # ---------------------------------------------------------------- one row
    def classify_one(self, x):
        """Classify one window.

        Parameters
        ----------
        x : ndarray of shape (n,)
            float64, C-contiguous for the fast path (other inputs are converted).

        Returns
        -------
        index : int
            Most probable class index; −1 (and all-NaN ``proba``) if ``x`` is not
            finite or out of range (see :data:`MAX_SQUARED_DISTANCE`).
        proba : ndarray of shape (L,)
            A view of an internal buffer, overwritten by the next call; copy it to keep it.
        """
        if not (isinstance(x, np.ndarray) and x.dtype == np.float64 and x.flags.c_contiguous
                and x.ndim == 1):
            x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
        if x.shape[0] != self.n_features_in:
            raise ValueError(f"x must have {self.n_features_in} features, got {x.shape[0]}.")
        if self._shared:
            idx = self._k.classify_one_shared(x, self._G, self._g, self._nu, self._log_c,
                                              self._log_rho, self._buf1, self._lj, self._tb,
                                              self._proba)
        else:
            s = self.source
            idx = self._k.classify_one_full(x, self.H, self.b, s.means, s.prec_factor,
                                            self._log_c, self._log_rho, self._buf1, self._buf2,
                                            self._lj, self._tb, self._proba)
        return self._guard_one(int(idx))[0], self._proba

    def _guard_one(self, idx: int) -> tuple[int, float]:
        """Check the kernel's last single-window result; flag it in place if unusable.

        Reads the component log joints the kernel left in the scratch buffer, so it
        allocates nothing. Returns ``(index, log_marginal)``: ``(-1, nan)`` and an
        all-NaN ``proba`` buffer when the window is out of range, non-finite, or its
        probabilities do not sum to 1.
        """
        if idx >= 0:  # the kernel returns −1 for NaN, so the log joints hold no NaN here
            log_marginal = float(np.logaddexp.reduce(self._lj))
            if log_marginal >= self.min_log_marginal and abs(
                    float(self._proba.sum()) - 1.0) <= PROBA_SUM_TOLERANCE:
                return idx, log_marginal
        self._proba[:] = np.nan
        return -1, float("nan")

    def classify_window(self, x, rows=None):
        """Everything the daemon needs of one window, from one kernel call.

        Parameters
        ----------
        x : ndarray of shape (n,)
        rows : ndarray of shape (R, n), int, optional
            Index rows of extra windows ``x[rows[r]]`` scored in the same call (the
            shift watch's rolled windows: a ring roll is a permutation of features).

        Returns
        -------
        WindowScore
            ``(index, proba, log_marginal, z, row_log_marginals, row_index)``.
        """
        x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
        if rows is None:
            X = x.reshape(1, -1)
        else:
            X = np.empty((1 + len(rows), x.shape[0]))
            X[0] = x
            np.take(x, rows, out=X[1:])
        lp, marg = self._run(X)
        lp0 = lp[0]
        proba = np.exp(lp0)
        index = int(np.argmax(lp0)) if np.isfinite(lp0).all() else -1
        z = self.H @ x + self.b
        if rows is None:
            return WindowScore(index, proba, float(marg[0]), z, None, None)
        row_marg = marg[1:]
        return WindowScore(index, proba, float(marg[0]), z, row_marg,
                           _row_decisions(lp[1:], row_marg))

    def score_rows(self, x, rows):
        """Log-marginal and class decision of the windows ``x[rows[r]]`` only.

        The rows :meth:`classify_window` scores beside the window, in a call of their
        own: the daemon publishes a wide window's prediction first and scores its
        rolled windows after (at 64 electrodes they cost more than the decision).

        Parameters
        ----------
        x : ndarray of shape (n,)
        rows : ndarray of shape (R, n), int

        Returns
        -------
        row_log_marginals : ndarray of shape (R,)
            NaN where a row is flagged (see :meth:`log_posteriors`).
        row_index : ndarray of shape (R,), int
            Class index of each row, -1 where flagged.
        """
        x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
        lp, marg = self._run(np.take(x, rows))
        return marg, _row_decisions(lp, marg)


def _row_decisions(lp: np.ndarray, marg: np.ndarray) -> np.ndarray:
    """Class index per row of log-posteriors ``lp`` (R, L); -1 where ``marg`` is NaN."""
    row_index = np.argmax(lp, axis=1)
    row_index[np.isnan(marg)] = -1  # flagged rows are NaN throughout
    return row_index
