"""Electrode-shift detection on the classified stream, from the first window on.

:class:`ShiftWatch` runs two tests on the windows the daemon classifies:

* a **likelihood test**: the running median of the marginal log-likelihood
  log p(H x + b) of the last :data:`LL_WINDOWS` windows under the source model,
  compared with a reference level (median and robust spread);
* a **distribution test**: the multi-kernel maximum mean discrepancy (MK-MMD,
  the two-sample statistic the optimal-transport transfer paper uses as a
  distribution cost) between the last :data:`MMD_WINDOWS` mapped windows and the
  source mixture itself. The expectation of a Gaussian kernel under a Gaussian
  component is closed form, so the source side is exact (no sampling) and costs
  nothing per window. The mixture weights are re-fitted on the simplex before the
  statistic is taken, so a stream that dwells in one class (a user at rest) is not
  a "shift": only windows that no mix of source components explains are.

The reference level of both tests is a :class:`ShiftReference`. When the daemon
has one (persisted after the last accepted calibration, or shipped in a model
bundle from held-out training windows), the tests run from the first window, so
an arm that is already shifted when the daemon starts is flagged. Without one, the
reference is taken from the first :data:`LIVE_REFERENCE_WINDOWS` live windows, as
before (a stream shifted from its first sample then cannot be noticed).

On a ring of electrodes a third, **ring test** needs no reference at all: a
sequential likelihood-ratio test (CUSUM) of every ring roll of the live map
against the live map itself. Per window and roll r the evidence is
log p(H R_r x + b) − log p(H x + b), clipped to ±:data:`RING_CLIP` nats (one odd
window cannot decide) and lowered by a drift :data:`RING_DRIFT`; the per-roll sums
(never below zero) fire when one exceeds :data:`RING_THRESHOLD`. A rotated armband
is exactly what a roll explains, while fatigue or a re-grip make no roll better
than the live map. Evidence from a window whose class decision the roll leaves
unchanged counts at :data:`RING_SAME_DECISION_WEIGHT`: a rotation moves the
decision of most movements, while a calibrated map that fits one held movement
loosely is often explained a little better by some roll without any decision
changing. It is confirmed by the likelihood test at
:data:`RING_LL_SPREADS` spreads when a reference exists (without one, a daemon
learning its reference live, it decides alone, so a stream shifted from its first
sample is still noticed), unless the sum has grown past :data:`RING_CONFIRM_BYPASS`
times the threshold.

An event is raised when the ring test fires, or when both the likelihood and MMD
tests are beyond their thresholds for :data:`PERSIST_WINDOWS` consecutive windows
(:data:`RULE`, for a change that is not a roll, e.g. a gain change); one event is
raised until neither has held for :data:`REARM_WINDOWS` windows (hysteresis), and
:meth:`ShiftWatch.reset` starts over after a swap.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

#: Windows in the running median of the likelihood test (1 s at a 50 ms step): a
#: median of 20 ignores a class transition or a movement artefact of a few windows.
LL_WINDOWS = 20
#: The likelihood test fires when the running median falls this many robust
#: spreads below the reference median ...
LL_SPREADS = 4.0
#: ... and at least this many nats per mapped feature (a floor for a reference
#: with a tiny spread, e.g. a model evaluated on its own training data). 0.5 rather
#: than 1: under the "and" rule the MMD test vetoes the likelihood test's false alarms,
#: and at 1 the likelihood test alone misses its 5 s delay for 18 % of shifts.
LL_NATS_PER_FEATURE = 0.5

#: How the two tests are combined. On the 18 CIIL recordings (90 streams, 0.36 h of
#: unshifted data, docs/evaluation.md) either test alone raises tens of false alarms
#: per hour at thresholds that detect within 5 s: windows of a held-out repetition
#: drift away from the training ones in both statistics, but rarely at the same time.
#: Requiring both, for PERSIST_WINDOWS windows, gave no false alarm.
RULE = "and"
#: Consecutive windows (1 s at a 50 ms step) the rule must hold before an event ...
PERSIST_WINDOWS = 20
#: ... and consecutive windows it must not hold before the detector re-arms.
REARM_WINDOWS = 40

#: Windows the MMD is computed over (2 s at a 50 ms step).
MMD_WINDOWS = 40
#: The MMD is computed every this many windows (its cost is O(MMD_WINDOWS²·m)).
MMD_EVERY = 10
#: Kernel bandwidths, as multiples of sqrt(m) in the whitened source space (where a
#: source component has unit covariance, so two of its points lie ~sqrt(2m) apart).
MMD_BANDWIDTHS = (0.5, 1.0, 2.0)
#: The MMD test fires above reference median + this many robust spreads (alone, on
#: the 18 recordings: 81 false alarms per hour at 6, 28 at 9, 11 at 12; see the
#: threshold sweep in docs/evaluation.md; the "and" rule then removes the rest) ...
MMD_SPREADS = 9.0
#: ... and never below this absolute MMD² (kernels are bounded by 1, so this is a
#: scale-free floor for a reference whose batches all look alike).
MMD_FLOOR = 0.02
#: Most projected-gradient iterations for the mixture weights (K is a few components) ...
MIX_ITERATIONS = 200
#: ... stopping early once no weight moves by more than this.
MIX_TOL = 1e-9
#: The exact solver (:func:`_simplex_qp`) stops when no zero weight's multiplier is
#: below minus this (kernel means lie in [0, 1], so this is close to rounding).
MIX_KKT_TOL = 1e-12

#: Ring test: per-window log-likelihood-ratio evidence of a roll is clipped to
#: ± this many nats ...
RING_CLIP = 10.0
#: ... and lowered by this drift (nats per window) before it is summed ...
RING_DRIFT = 4.0
#: ... and the test fires when one roll's sum exceeds this (nats). Chosen on the 18
#: CIIL recordings (docs/evaluation.md): of the (clip, drift, threshold) grid, the
#: fastest setting with no false alarm on the held-out baseline repetitions and
#: few after a calibration.
RING_THRESHOLD = 200.0
#: Positive evidence of a roll that leaves the window's class decision unchanged
#: counts at this share. On the 18 CIIL recordings (docs/evaluation.md) it removed
#: most false alarms after a calibration (a held movement that the calibrated map
#: fits loosely, explained a little better by a roll that would not change the
#: command) at nearly the same delay: a rotation moves the decision of most
#: movements.
RING_SAME_DECISION_WEIGHT = 0.5
#: The ring test is confirmed by the running-median likelihood being this many
#: robust spreads below the reference (when there is one).
RING_LL_SPREADS = 2.0

#: A ring sum this many times :data:`RING_THRESHOLD` fires without the likelihood
#: confirmation. A reference can be lax (a training bundle's held-out windows
#: include the class transitions, so its spread is wide): on one CIIL subject the
#: confirmation held a rotation back for 23 s while the sum kept growing.
RING_CONFIRM_BYPASS = 1.5

#: Without a persisted reference, this many live windows form it (4 s at 50 ms).
LIVE_REFERENCE_WINDOWS = 80
#: 1.4826 · MAD is the standard deviation of a normal sample.
_MAD_TO_SD = 1.4826
_MIN_SPREAD = 1e-6


# ---------------------------------------------------------------- MK-MMD to a mixture
def _project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the probability simplex (sort-based, exact)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    # u_i - css_i / i > 0 holds exactly for a prefix i = 1..ρ of the sorted values
    rho = int(np.count_nonzero(u * np.arange(1, v.size + 1) > css))
    return np.maximum(v - css[rho - 1] / rho, 0.0)


def _simplex_qp(B: np.ndarray, a: np.ndarray, w: np.ndarray,
                max_iter: int = MIX_ITERATIONS) -> tuple[np.ndarray, bool]:
    """Minimise wᵀBw − 2aᵀw over the probability simplex (primal active set).

    Each step solves the problem with the weights outside a support set held at zero
    (one small KKT system), moves towards that solution as far as the weights stay
    non-negative, and adds the zero weight whose multiplier is most negative once none
    is blocking. With a few components this ends in a handful of steps at the exact
    optimum, where a projected-gradient descent to ``MIX_TOL`` takes a hundred or more.

    Parameters
    ----------
    B : ndarray of shape (K, K)
        Positive semi-definite.
    a : ndarray of shape (K,)
    w : ndarray of shape (K,)
        A feasible start (on the simplex); overwritten.
    max_iter : int
        Most steps.

    Returns
    -------
    w : ndarray of shape (K,)
    solved : bool
        False when a restricted problem had no exact solution (a singular B) or
        ``max_iter`` steps did not meet the optimality conditions; ``w`` is still
        feasible then.
    """
    support = w > 0.0
    for _ in range(max_iter):
        idx = np.flatnonzero(support)
        k = idx.size
        kkt = np.zeros((k + 1, k + 1))
        kkt[:k, :k] = B[np.ix_(idx, idx)]
        kkt[:k, k] = -1.0
        kkt[k, :k] = 1.0
        rhs = np.append(a[idx], 1.0)
        # least squares: B restricted to the support may be singular (equal components);
        # without an exact solution the restricted problem has no minimum inside
        sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
        if np.abs(kkt @ sol - rhs).max() > 1e-9 * (1.0 + np.abs(rhs).max()):
            return w, False
        step = sol[:k] - w[idx]
        shrinking = step < 0.0
        if shrinking.any():
            ratio = w[idx][shrinking] / -step[shrinking]
            j = int(np.argmin(ratio))
            if ratio[j] < 1.0:  # a weight reaches zero first: stop there, drop it
                w[idx] += ratio[j] * step
                w[idx[shrinking][j]] = 0.0
                support[idx[shrinking][j]] = False
                w[idx] = np.maximum(w[idx], 0.0)
                continue
        w[idx] = np.maximum(sol[:k], 0.0)
        w /= w.sum()
        # the multipliers of the zero weights: the objective must not fall along any
        zero = np.flatnonzero(~support)
        if zero.size == 0:
            return w, True
        slack = (B @ w - a)[zero] - sol[k]
        j = int(np.argmin(slack))
        if slack[j] >= -MIX_KKT_TOL:
            return w, True
        support[zero[j]] = True
    return w, False


def _best_weights(B: np.ndarray, a: np.ndarray, w: np.ndarray, step: float) -> np.ndarray:
    """Mixture weights minimising wᵀBw − 2aᵀw on the simplex, from the feasible ``w``.

    :func:`_simplex_qp`, or where it gives up (a singular restricted problem), projected
    gradient descent with the fixed ``step`` (1 / largest eigenvalue of B, so it never
    diverges) for at most :data:`MIX_ITERATIONS` steps.
    """
    w, solved = _simplex_qp(B, a, w)
    if not solved:
        for _ in range(MIX_ITERATIONS):
            w_new = _project_simplex(w - 2.0 * step * (B @ w - a))
            done = float(np.abs(w_new - w).max()) <= MIX_TOL
            w = w_new
            if done:
                break
    return w


class MixtureMMD:
    """Exact squared MK-MMD between a sample and a Gaussian mixture.

    Everything is computed in the whitened source space y = Lᵀ z (Λ̄ = L Lᵀ the
    weight-averaged source precision), where the kernels are
    k_s(a, b) = exp(−‖a − b‖² / (2 s²)) with s = c·sqrt(m), c in ``bandwidths``,
    averaged with equal weights. For a component N(ν_k, S_k) in that space

        E k_s(y, Z_k) = det(I + S_k/s²)^(−½) exp(−½ dᵀ (S_k + s² I)⁻¹ d),  d = y − ν_k,
        E k_s(Z_k, Z_l') = det(I + (S_k + S_l)/s²)^(−½) exp(−½ Δᵀ (S_k + S_l + s² I)⁻¹ Δ),

    so MMD²(w) = mean_ij k(y_i, y_j) − 2 wᵀa + wᵀBw is a quadratic in the mixture
    weights w.

    Parameters
    ----------
    components : SourceComponents
        The source model (K components, m features).
    bandwidths : sequence of float
        Bandwidth multiples c of sqrt(m).
    """

    def __init__(self, components, bandwidths=MMD_BANDWIDTHS):
        comp = components
        K, m = comp.means.shape
        w = np.exp(comp.log_weights - np.logaddexp.reduce(comp.log_weights))
        Lam = np.einsum("kij,klj->kil", comp.prec_factor, comp.prec_factor)
        Lam_bar = np.tensordot(w, Lam, axes=1)
        self._L = np.linalg.cholesky(Lam_bar)  # Λ̄ = L Lᵀ; whitening y = Lᵀ z
        self.weights = w
        self.m, self.K = m, K
        self._nu = comp.means @ self._L  # rows ν_k = Lᵀ μ_k
        # Component covariances in the whitened space: S_k = Lᵀ Λ_k⁻¹ L.
        S = np.empty((K, m, m))
        for k in range(K):
            S[k] = self._L.T @ np.linalg.solve(Lam[k], self._L)
        self._S = S
        self._s2 = [float(c) ** 2 * m for c in bandwidths]
        # Per bandwidth and component: Cholesky of (S_k + s² I)⁻¹ and the coefficient.
        self._cross = []
        for s2 in self._s2:
            per = []
            for k in range(K):
                A = S[k] + s2 * np.eye(m)
                cf = np.linalg.cholesky(np.linalg.inv(A))
                logc = -0.5 * np.linalg.slogdet(np.eye(m) + S[k] / s2)[1]
                per.append((cf, logc))
            self._cross.append(per)
        B = np.zeros((K, K))
        for s2 in self._s2:
            for k in range(K):
                for j in range(K):
                    A = S[k] + S[j] + s2 * np.eye(m)
                    d = self._nu[k] - self._nu[j]
                    logc = -0.5 * np.linalg.slogdet(np.eye(m) + (S[k] + S[j]) / s2)[1]
                    B[k, j] += math.exp(logc - 0.5 * d @ np.linalg.solve(A, d))
        self._B = B / len(self._s2)
        # the same factors stacked bandwidth-major for _terms, and the fixed step of
        # the best-mix descent (1 / largest eigenvalue of B)
        self._neg_half_inv_s2 = np.array([-0.5 / s2 for s2 in self._s2])
        self._cross_chol = np.stack([cf for per in self._cross for cf, _ in per])
        self._cross_logc = np.array([logc for per in self._cross for _, logc in per])
        self._nu_rep = np.tile(self._nu, (len(self._s2), 1))
        self._step = 1.0 / max(float(np.linalg.eigvalsh(self._B)[-1]), 1e-12)

    def whiten(self, Z: np.ndarray) -> np.ndarray:
        """Map features (N, m) to the whitened space, shape (N, m).

        Parameters
        ----------
        Z : ndarray of shape (N, m)
            Mapped features.
        """
        return np.asarray(Z, dtype=np.float64) @ self._L

    def window_terms(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whitened windows and their sample-component kernel rows, computed once each.

        The MMD of a batch needs only these per-window pieces and the batch's pairwise
        distances, so a sliding batch (the daemon's: :data:`MMD_WINDOWS` windows every
        :data:`MMD_EVERY`) computes them for its new windows only.

        Parameters
        ----------
        Z : ndarray of shape (N, m)
            Mapped features, all finite.

        Returns
        -------
        Y : ndarray of shape (N, m)
            The whitened windows Lᵀ z.
        E : ndarray of shape (N, n_bandwidths * K)
            E k_s(y_i, Z_k) for every bandwidth s (major) and component k.
        """
        Y = self.whiten(Z)
        return Y, self._kernel_rows(Y)

    def _kernel_rows(self, Y: np.ndarray) -> np.ndarray:
        """E k_s(y_i, Z_k) of whitened windows, shape (N, n_bandwidths * K)."""
        R = np.matmul(Y[None] - self._nu_rep[:, None, :], self._cross_chol)  # (B·K, N, m)
        quad = np.einsum("pij,pij->pi", R, R)
        return np.exp(self._cross_logc[:, None] - 0.5 * quad).T

    def batch_terms(self, Y: np.ndarray, E: np.ndarray) -> tuple[float, np.ndarray]:
        """Sample-sample mean kernel and the sample-component vector a of one batch.

        Parameters
        ----------
        Y, E : ndarray of shape (N, m) and (N, n_bandwidths * K)
            Rows of :meth:`window_terms` (any subset of windows, in any order).

        Returns
        -------
        kxx : float
        a : ndarray of shape (K,)
        """
        N = Y.shape[0]
        sq = np.einsum("ij,ij->i", Y, Y)
        D2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * Y @ Y.T, 0.0)
        # all bandwidths in one array call: per-call overhead is most of its cost
        kxx = float(np.exp(D2[None] * self._neg_half_inv_s2[:, None, None]).sum()) / (N * N)
        nb = len(self._s2)
        a = E.mean(axis=0).reshape(nb, self.K).sum(axis=0) / nb
        return kxx / nb, a

    def mmd2(self, Z: np.ndarray, weights: np.ndarray | None = None) -> float:
        """Squared MK-MMD (V-statistic) of mapped samples to the mixture.

        Parameters
        ----------
        Z : ndarray of shape (N, m)
            Mapped features z = H x + b, all finite.
        weights : ndarray of shape (K,), optional
            Mixture weights; the source model's weights when omitted.

        Returns
        -------
        float
        """
        kxx, a = self.batch_terms(*self.window_terms(Z))
        w = self.weights if weights is None else np.asarray(weights, dtype=np.float64)
        return float(kxx - 2.0 * w @ a + w @ self._B @ w)

    def mmd2_best_mix(self, Z: np.ndarray, start: np.ndarray | None = None,
                      ) -> tuple[float, np.ndarray]:
        """Squared MK-MMD to the closest re-weighting of the mixture.

        Minimises the quadratic MMD²(w) over the probability simplex exactly
        (:func:`_simplex_qp`), falling back to projected gradient descent (step
        1 / largest eigenvalue of B, so it never diverges) should its support degenerate.

        Parameters
        ----------
        Z : ndarray of shape (N, m)
        start : ndarray of shape (K,), optional
            Weights to start the descent from (the previous batch's best mix, which
            overlapping batches barely move); the source model's weights by default.

        Returns
        -------
        mmd2 : float
        weights : ndarray of shape (K,)
        """
        kxx, a = self.batch_terms(*self.window_terms(Z))
        return self.best_mix(kxx, a, start)

    def best_mix(self, kxx: float, a: np.ndarray, start: np.ndarray | None = None,
                 ) -> tuple[float, np.ndarray]:
        """:meth:`mmd2_best_mix` from a batch's :meth:`batch_terms`.

        Parameters
        ----------
        kxx : float
        a : ndarray of shape (K,)
        start : ndarray of shape (K,), optional
            As in :meth:`mmd2_best_mix`.

        Returns
        -------
        mmd2 : float
        weights : ndarray of shape (K,)
        """
        w = self.weights.copy() if start is None else _project_simplex(
            np.asarray(start, dtype=np.float64))
        w = _best_weights(self._B, a, w, self._step)
        return float(max(kxx - 2.0 * w @ a + w @ self._B @ w, 0.0)), w

    def sliding_best_mix(self, Z: np.ndarray, size: int = MMD_WINDOWS,
                         every: int = MMD_EVERY) -> np.ndarray:
        """Best-mix MMD² of every batch ``Z[i:i + size]``, ``i = 0, every, 2·every, ...``.

        Each batch's descent starts from the source weights, as a reference's batches
        are scored; every window's kernel rows are computed once.

        Parameters
        ----------
        Z : ndarray of shape (N, m)
            Mapped features, all finite, N >= size.
        size, every : int
            Batch length and stride.

        Returns
        -------
        ndarray of shape (n_batches,)
        """
        Y, E = self.window_terms(Z)
        return np.array([self.best_mix(*self.batch_terms(Y[i:i + size], E[i:i + size]))[0]
                         for i in range(0, Z.shape[0] - size + 1, every)])


# ---------------------------------------------------------------- reference
@dataclass
class ShiftReference:
    """Reference level of both tests; JSON-safe through :meth:`to_dict`.

    Attributes
    ----------
    ll_median, ll_spread : float
        Median and robust spread (1.4826 MAD) of the running-median log-likelihood
        of windows that fit the map.
    mmd_median, mmd_spread : float or None
        The same for the best-mix MMD² of :data:`MMD_WINDOWS`-window batches
        (None when there were too few windows to form batches).
    n_windows : int
        Windows the reference was computed from.
    source : str
        Where it came from ("heldout", "live").
    """

    ll_median: float
    ll_spread: float
    mmd_median: float | None = None
    mmd_spread: float | None = None
    n_windows: int = 0
    source: str = "heldout"

    def to_dict(self) -> dict:
        """Plain floats and strings, for JSON meta."""
        return {"ll_median": float(self.ll_median), "ll_spread": float(self.ll_spread),
                "mmd_median": None if self.mmd_median is None else float(self.mmd_median),
                "mmd_spread": None if self.mmd_spread is None else float(self.mmd_spread),
                "n_windows": int(self.n_windows), "source": str(self.source)}

    @classmethod
    def from_dict(cls, d: dict) -> "ShiftReference":
        """Inverse of :meth:`to_dict`; a malformed dict raises ValueError naming the field.

        Parameters
        ----------
        d : dict
            A :meth:`to_dict` result.
        """
        if not isinstance(d, dict):
            raise ValueError(f"shift reference must be a dict, got {type(d).__name__}.")

        def num(key, optional=False):
            v = d.get(key)
            if v is None and optional:
                return None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"shift reference field {key!r} must be a finite number, "
                                 f"got {v!r}.")
            return float(v)

        ll_spread = num("ll_spread")
        mmd_spread = num("mmd_spread", optional=True)
        if ll_spread < 0 or (mmd_spread is not None and mmd_spread < 0):
            raise ValueError("shift reference spreads must be >= 0.")
        n = d.get("n_windows", 0)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"shift reference field 'n_windows' must be an int >= 0, got {n!r}.")
        return cls(ll_median=num("ll_median"), ll_spread=ll_spread,
                   mmd_median=num("mmd_median", optional=True), mmd_spread=mmd_spread,
                   n_windows=n, source=str(d.get("source", "heldout")))

    @classmethod
    def from_windows(cls, components, H, b, X_heldout, source: str = "heldout",
                     ) -> "ShiftReference":
        """Build the reference from windows the map fits but was not fitted on, in stream order.

        Parameters
        ----------
        components : SourceComponents or object with ``to_components()``
        H : ndarray of shape (m, n)
        b : ndarray of shape (m,) or None
        X_heldout : ndarray of shape (N, n)
            Held-out target features in stream order (non-finite rows are dropped);
            N ≥ :data:`LL_WINDOWS`.
        source : str
            Recorded in the reference ("heldout", "live").

        Returns
        -------
        ShiftReference
        """
        from ..model.classify import MappedClassifier, as_components

        comp = as_components(components)
        X = np.asarray(X_heldout, dtype=np.float64)
        clf = MappedClassifier(comp, H, b)
        ll = clf.log_marginal(X)
        ok = np.isfinite(ll)
        X, ll = X[ok], ll[ok]
        if ll.size < LL_WINDOWS:
            raise ValueError(f"a shift reference needs at least {LL_WINDOWS} finite windows, "
                             f"got {ll.size}.")
        med = _running_medians(ll, LL_WINDOWS)
        ll_median = float(np.median(med))
        ll_spread = max(_MAD_TO_SD * float(np.median(np.abs(med - ll_median))), _MIN_SPREAD)
        mmd_median = mmd_spread = None
        if ll.size >= MMD_WINDOWS:
            Z = X @ clf.H.T + clf.b
            mm = MixtureMMD(comp)
            vals = mm.sliding_best_mix(Z)
            mmd_median = float(np.median(vals))
            mmd_spread = max(_MAD_TO_SD * float(np.median(np.abs(vals - mmd_median))),
                             _MIN_SPREAD)
        return cls(ll_median, ll_spread, mmd_median, mmd_spread, int(ll.size), source)

    # thresholds, in one place so the events and the docs agree
    def ll_threshold(self, n_features: int, spreads: float = LL_SPREADS,
                     nats_per_feature: float = LL_NATS_PER_FEATURE) -> float:
        """Running-median log-likelihood below which the likelihood test fires.

        Parameters
        ----------
        n_features : int
            Features per window.
        spreads : float
            Robust spreads below the reference median.
        nats_per_feature : float
            Floor of the margin, in nats per feature.
        """
        return self.ll_median - max(spreads * self.ll_spread, nats_per_feature * n_features)

    def mmd_threshold(self, spreads: float = MMD_SPREADS) -> float | None:
        """Best-mix MMD² above which the distribution test fires (None: no MMD reference).

        Parameters
        ----------
        spreads : float
            Robust spreads above the reference median.
        """
        if self.mmd_median is None:
            return None
        return max(self.mmd_median + spreads * self.mmd_spread, MMD_FLOOR)


def _median_of_floats(values) -> float:
    """``np.median`` of a few Python floats, without building an array (per-window path)."""
    v = sorted(values)
    h = len(v) // 2
    return v[h] if len(v) % 2 else (v[h - 1] + v[h]) / 2.0


def _running_medians(v: np.ndarray, w: int) -> np.ndarray:
    """Medians of every full window of ``w`` consecutive values, shape (len(v) − w + 1,)."""
    view = np.lib.stride_tricks.sliding_window_view(v, w)
    return np.median(view, axis=1)


# ---------------------------------------------------------------- watcher
class ShiftWatch:
    """Per-window shift detector (likelihood test + MK-MMD test).

    Parameters
    ----------
    n_features : int
        Source (mapped) feature dimension m.
    reference : ShiftReference, optional
        Persisted reference; without one it is built from the first
        :data:`LIVE_REFERENCE_WINDOWS` live windows.
    components : SourceComponents, optional
        The source model, needed for the MMD test (off without it, or without an
        MMD level in the reference).
    ll_spreads, ll_nats_per_feature, mmd_spreads : float
        Thresholds (defaults :data:`LL_SPREADS`, :data:`LL_NATS_PER_FEATURE`,
        :data:`MMD_SPREADS`); the evaluation sweeps them, the daemon keeps the defaults.
    rule : {"and", "or"}
        "and" (default, :data:`RULE`): an event needs both tests beyond their thresholds
        (the likelihood test alone when the MMD test is unavailable); "or": either.
    persist_windows : int
        Consecutive windows the rule must hold before an event (:data:`PERSIST_WINDOWS`).
    ring_channels : int, optional
        Electrodes on a ring of channel-major features: switches the ring test on (it
        needs ``components`` and the ``x``, ``H``, ``b`` arguments of :meth:`update`).
    ring_clip, ring_drift, ring_threshold, ring_ll_spreads, ring_same_weight : float
        The ring test's settings (:data:`RING_CLIP`, :data:`RING_DRIFT`,
        :data:`RING_THRESHOLD`, :data:`RING_LL_SPREADS`,
        :data:`RING_SAME_DECISION_WEIGHT`).

    Notes
    -----
    :meth:`update` costs a median of :data:`LL_WINDOWS` floats per window, and an
    MMD of :data:`MMD_WINDOWS` windows every :data:`MMD_EVERY` windows.
    """

    def __init__(self, n_features: int, reference: ShiftReference | None = None,
                 components=None, *, ll_spreads: float = LL_SPREADS,
                 ll_nats_per_feature: float = LL_NATS_PER_FEATURE,
                 mmd_spreads: float = MMD_SPREADS, rule: str = RULE,
                 persist_windows: int = PERSIST_WINDOWS, ring_channels: int | None = None,
                 ring_clip: float = RING_CLIP, ring_drift: float = RING_DRIFT,
                 ring_threshold: float = RING_THRESHOLD,
                 ring_ll_spreads: float = RING_LL_SPREADS,
                 ring_same_weight: float = RING_SAME_DECISION_WEIGHT):
        self.n_features = int(n_features)
        self.ring_channels = None if ring_channels is None else int(ring_channels)
        self._ring_thr = (float(ring_clip), float(ring_drift), float(ring_threshold),
                          float(ring_ll_spreads))
        self._ring_same_weight = float(ring_same_weight)
        if not 0.0 <= self._ring_same_weight <= 1.0:
            raise ValueError(f"ring_same_weight must be in [0, 1], got {ring_same_weight!r}.")
        self._ring_clf = None
        self._ring_key = None
        self._ring_idx = None
        self._thr = (float(ll_spreads), float(ll_nats_per_feature), float(mmd_spreads))
        if rule not in ("and", "or"):
            raise ValueError(f"rule must be 'and' or 'or', got {rule!r}.")
        self.rule = rule
        self._persist = max(1, int(persist_windows))
        self._mmd = None
        if components is not None:
            from ..model.classify import as_components

            comp = as_components(components)
            if comp.n_features != self.n_features:
                raise ValueError(f"components have {comp.n_features} features, "
                                 f"n_features is {self.n_features}.")
            self._mmd = MixtureMMD(comp)
            self._comp = comp
        elif self.ring_channels is not None:
            raise ValueError("the ring test needs the source components.")
        self._ll = deque(maxlen=LL_WINDOWS)
        # the MMD batch: whitened windows and kernel rows, each computed once, and the
        # windows that arrived since the last evaluation (computed at the next one)
        self._y = deque(maxlen=MMD_WINDOWS)
        self._e = deque(maxlen=MMD_WINDOWS)
        self._z = deque(maxlen=MMD_WINDOWS)
        self.reset(reference)

    def reset(self, reference: ShiftReference | None = None) -> None:
        """Start over (after every swap) with ``reference`` (None: learn it live).

        Parameters
        ----------
        reference : ShiftReference, optional
            The new reference.
        """
        self.reference = reference
        self._ll.clear()
        self._y.clear()
        self._e.clear()
        self._z.clear()
        self._live_ll: list[float] = []
        self._live_z: list[np.ndarray] = []
        self._since_mmd = 0
        self._mmd_beyond = False
        self._run = 0
        self._calm = 0
        self._flagged = False
        self.last_mmd2: float | None = None
        self._mix = None  # the last best-mix weights (the next descent starts there)
        self._cusum = None
        self.last_ring: float | None = None

    def ring_rows(self, n: int) -> np.ndarray | None:
        """Index rows of the ring test's rolled windows, or None when it does not apply.

        A roll R_r of the electrodes is a permutation of the features, so
        H R_r x = H x[rows[r]]; a caller that classifies the window anyway can score
        ``x[rows]`` in the same call (the daemon does for rings up to
        ``RING_ROWS_INLINE_MAX``, and scores wider ones after publishing the
        prediction) and pass the results as ``ring_ll`` and ``ring_index`` to
        :meth:`update`.

        Parameters
        ----------
        n : int
            Number of features before the map (channels x feature types, channel-major
            within each feature type).

        Returns
        -------
        ndarray of shape (C, n), int, or None
            Row r rolls the electrodes by r (row 0 is the window itself).
        """
        C = self.ring_channels
        if C is None or C < 2 or n % C:
            return None
        if self._ring_idx is None or self._ring_idx.shape[1] != n:
            self._ring_idx = np.stack([np.roll(np.arange(n).reshape(C, n // C), r, axis=0)
                                       .ravel() for r in range(C)])
        return self._ring_idx

    def _ring_evidence(self, x: np.ndarray, H, b):
        """Score every roll: log p(H R_r x + b) and its class decision, each (C,); or None."""
        if H is None or x is None:
            return None
        H = np.asarray(H, dtype=np.float64)
        n = H.shape[1]
        rows = self.ring_rows(n)
        if rows is None or x.shape[0] != n:
            return None
        key = (id(H), H.shape, id(b))
        if self._ring_key != key:  # a new live map: its classifier
            from ..model.classify import MappedClassifier

            m = self.n_features
            bb = np.zeros(m) if b is None else np.asarray(b, dtype=np.float64)
            self._ring_clf = MappedClassifier(self._comp, H, bb)
            self._ring_key = key
            self._ring_keep = (H, b)  # keeps the ids in the key valid
        score = self._ring_clf.classify_window(x, rows)
        return score.row_log_marginals, score.row_index

    def _ring_update(self, ll, index=None) -> bool:
        """Advance the per-roll CUSUM with log p(H R_r x + b), shape (C,); True on a crossing.

        ``index`` (shape (C,)), the class decision under each roll, weighs evidence of
        rolls that leave the decision unchanged by :data:`RING_SAME_DECISION_WEIGHT`.
        """
        if ll is None or not np.all(np.isfinite(ll)):
            return False
        clip, drift, thr, _ = self._ring_thr
        d = np.clip(ll[1:] - ll[0], -clip, clip) - drift
        if index is not None:
            same = (index[1:] == index[0]) & (d > 0.0)
            d[same] *= self._ring_same_weight
        self._cusum = np.maximum(0.0, (0.0 if self._cusum is None else self._cusum) + d)
        self.last_ring = float(self._cusum.max())
        return self.last_ring > thr

    def _learn_live(self, ll: float, z: np.ndarray) -> None:
        self._live_ll.append(ll)
        self._live_z.append(z.copy())
        if len(self._live_ll) < LIVE_REFERENCE_WINDOWS:
            return
        med = _running_medians(np.asarray(self._live_ll), LL_WINDOWS)
        mu = float(np.median(med))
        sd = max(_MAD_TO_SD * float(np.median(np.abs(med - mu))), _MIN_SPREAD)
        mmd_mu = mmd_sd = None
        if self._mmd is not None:
            Z = np.asarray(self._live_z)
            vals = self._mmd.sliding_best_mix(Z)
            mmd_mu = float(np.median(vals))
            mmd_sd = max(_MAD_TO_SD * float(np.median(np.abs(vals - mmd_mu))), _MIN_SPREAD)
        self.reference = ShiftReference(mu, sd, mmd_mu, mmd_sd, len(self._live_ll), "live")
        self._live_ll, self._live_z = [], []

    def update(self, log_marginal: float, z: np.ndarray, t: float, x=None, H=None,
               b=None, ring_ll=None, ring_index=None) -> dict | None:
        """Feed one classified window.

        Parameters
        ----------
        log_marginal : float
            log p(H x + b) under the source model (non-finite windows are ignored).
        z : ndarray of shape (n_features,)
            The mapped features H x + b.
        t : float
            The window's LSL time (reported in the event).
        x : ndarray of shape (n,), optional
            The window's features before the map (the ring test needs them) ...
        H : ndarray of shape (m, n), optional
            ... and the live map (read-only; the rolled maps are cached per map) ...
        b : ndarray of shape (m,), optional
            ... and its offset.
        ring_ll : ndarray of shape (C,), optional
            The ring test's evidence already computed by the caller,
            log p(H x[rows[r]] + b) for the rows of :meth:`ring_rows`; then ``x``,
            ``H`` and ``b`` are not needed ...
        ring_index : ndarray of shape (C,), int, optional
            ... with the class decision of each of those rows.

        Returns
        -------
        dict or None
            The fields of one ``shift_suspected`` event: ``reason``, ``test``
            ("ring", "likelihood+mmd", ...), ``statistic``, ``threshold``, ``baseline``,
            ``spread``, ``reference`` (its origin), ``t``; None when nothing fired.
        """
        ll = float(log_marginal)
        if not math.isfinite(ll):
            return None
        z = np.asarray(z, dtype=np.float64).reshape(-1)
        if z.shape[0] != self.n_features or not np.all(np.isfinite(z)):
            return None
        ring_hit = False
        if self.ring_channels is not None:
            if ring_ll is None and x is not None:
                scored = self._ring_evidence(np.asarray(x, dtype=np.float64).reshape(-1), H, b)
                if scored is not None:
                    ring_ll, ring_index = scored
            if ring_ll is not None:
                ring_hit = self._ring_update(ring_ll, ring_index)
        if self.reference is None:
            self._learn_live(ll, z)
            return self._ring_event(t, None, None) if ring_hit else None
        ref = self.reference
        self._ll.append(ll)
        self._z.append(z)
        ll_beyond = False
        level = thr = None
        if len(self._ll) == LL_WINDOWS:
            level = _median_of_floats(self._ll)
            thr = ref.ll_threshold(self.n_features, self._thr[0], self._thr[1])
            ll_beyond = level < thr
        self._since_mmd += 1
        mthr = ref.mmd_threshold(self._thr[2])
        mmd_on = self._mmd is not None and mthr is not None
        if mmd_on and len(self._y) + len(self._z) >= MMD_WINDOWS and \
                self._since_mmd >= MMD_EVERY:
            self._since_mmd = 0
            Y, E = self._mmd.window_terms(np.asarray(self._z))
            self._y.extend(Y)
            self._e.extend(E)
            self._z.clear()
            self.last_mmd2, self._mix = self._mmd.best_mix(
                *self._mmd.batch_terms(np.asarray(self._y), np.asarray(self._e)),
                start=self._mix)
            self._mmd_beyond = self.last_mmd2 > mthr  # held until the next evaluation
        if self.rule == "and" and mmd_on:
            beyond = ll_beyond and self._mmd_beyond
        else:  # "or", or no MMD available: the likelihood test alone
            beyond = ll_beyond or (mmd_on and self._mmd_beyond)
        if ring_hit and level is not None and \
                self.last_ring <= RING_CONFIRM_BYPASS * self._ring_thr[2] and \
                level >= ref.ll_threshold(self.n_features, self._ring_thr[3], 0.0):
            ring_hit = False  # the windows still fit the live map as well as the reference
        self._run = self._run + 1 if beyond else 0
        self._calm = 0 if (beyond or ring_hit) else self._calm + 1
        event = None
        if ring_hit:
            event = self._ring_event(t, level, ref)
        elif not self._flagged and self._run >= self._persist:
            self._flagged = True
            both = ll_beyond and mmd_on and self._mmd_beyond
            test = "likelihood+mmd" if both else ("likelihood" if ll_beyond else "mmd")
            use_ll = ll_beyond
            event = {"reason": "recent windows fit the source model much worse than the "
                               "reference (" + test + "); the electrodes may have moved",
                     "test": test,
                     "statistic": level if use_ll else self.last_mmd2,
                     "threshold": thr if use_ll else mthr,
                     "baseline": ref.ll_median if use_ll else ref.mmd_median,
                     "spread": ref.ll_spread if use_ll else ref.mmd_spread,
                     "log_likelihood": level, "ll_threshold": thr,
                     "mmd2": self.last_mmd2, "mmd_threshold": mthr,
                     "reference": ref.source, "t": float(t)}
        elif self._flagged and self._calm >= REARM_WINDOWS:
            self._flagged = False
        return event

    def _ring_event(self, t: float, level, ref) -> dict | None:
        """Build the ring test's event (once until re-armed); the sums start over."""
        self._cusum = None
        if self._flagged:
            return None
        self._flagged = True
        self._calm = 0
        return {"reason": "a ring roll of the live map explains recent windows much better "
                          "than the map itself (ring); the electrodes may have moved",
                "test": "ring", "statistic": self.last_ring,
                "threshold": self._ring_thr[2], "baseline": 0.0, "spread": None,
                "log_likelihood": level,
                "ll_threshold": None if ref is None else ref.ll_threshold(
                    self.n_features, self._ring_thr[3], 0.0),
                "mmd2": self.last_mmd2, "mmd_threshold": None if ref is None else
                ref.mmd_threshold(self._thr[2]),
                "reference": "none" if ref is None else ref.source, "t": float(t)}


#: Share of each class's training windows (its last ones, in stream order) held out
#: to compute a training bundle's shift reference.
HELDOUT_SHARE = 0.2


def heldout_reference(fit_model, X, y, heldout_share: float = HELDOUT_SHARE) -> dict | None:
    """Shift reference for a freshly trained model, from held-out training windows.

    The last ``heldout_share`` of each class's windows (in stream order) are held
    out, a model is fitted on the rest with ``fit_model`` and the reference is taken
    on the held-out windows under it with the identity map: the level new windows of
    an unshifted arm reach, not the optimistic in-sample one.

    Parameters
    ----------
    fit_model : callable
        ``fit_model(X, y)`` returns a fitted source model with ``to_components()``
        (the same settings as the model that is shipped).
    X : ndarray of shape (N, n)
        Training windows in stream order.
    y : array-like of shape (N,)
    heldout_share : float
        In (0, 1).

    Returns
    -------
    dict or None
        :meth:`ShiftReference.to_dict`, or None when there are too few windows.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    held = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = int(round(heldout_share * len(idx)))
        if k:
            held[idx[-k:]] = True
    if held.sum() < LL_WINDOWS or len(np.unique(y[~held])) != len(np.unique(y)):
        return None
    comp = fit_model(X[~held], y[~held]).to_components()
    m = comp.n_features
    if X.shape[1] != m:
        return None  # a map to a different source dimension has no identity reference
    return ShiftReference.from_windows(comp, np.eye(m), np.zeros(m), X[held]).to_dict()
