"""Generalised matrix LVQ source classifiers (GMLVQ, LGMLVQ) and their lGMM limit.

A prototype-based classifier with prototypes w_k and metric

    d_k(x) = (x − w_k)ᵀ Ω_kᵀ Ω_k (x − w_k) = ‖(x − w_k) Ω_kᵀ‖²

(one shared Ω for :class:`GMLVQ`, one Ω_k per prototype for :class:`LGMLVQ`)
is trained by minimising the GLVQ cost (Sato & Yamada 1996; Schneider, Biehl &
Hammer 2009)

    E = (1/N) Σ_j Φ(μ_j),   μ_j = (d⁺_j − d⁻_j) / (d⁺_j + d⁻_j)

where d⁺_j (d⁻_j) is the distance of x_j to its closest prototype of the right
(a wrong) class and Φ a sigmoid of slope ``beta`` (or the identity). The cost and
its analytic gradient over (prototypes, Ω) go to ``scipy.optimize.minimize``
(L-BFGS-B).

Trace normalisation (Σ_i Λ_ii = tr ΩᵀΩ = 1, per prototype for LGMLVQ) is a
reparametrisation: the optimiser sees an unconstrained Ω̂ and the cost uses
Ω = Ω̂ / ‖Ω̂‖_F, so the gradient is projected by the chain rule and no step can
leave the constraint.

Internally the data are centred and divided by one global scale. That is an
exact reparametrisation for both models (every distance is divided by the same
s², μ_j does not change) which keeps the prototype gradient well scaled
whatever the feature units; fitted attributes are reported in the caller's units.

:meth:`to_components` applies the scaling trick of Paassen et al. (2018): the LVQ
model is the σ → 0 limit of a labelled Gaussian mixture with means = prototypes,
crisp labels, uniform weights and precisions Λ_k = Ω_kᵀΩ_k / σ².

This is a clean-room implementation from the formulas; no code of the GPLv3
reference package or of sklearn-lvq is used.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
from scipy import optimize

from .._atomic import atomic_write, model_file_error, read_model_npz
from .._checks import as_float_matrix, ensure_float, ensure_int
from ..errors import FitConvergenceWarning, ModelError
from ._fitted import check_is_fitted, check_stop
from ..logs import logger
from .source import SourceComponents

__all__ = ["GMLVQ", "LGMLVQ"]

#: Format tag written into saved models.
LVQ_FORMAT = "emtl_stream.lvq/1"

#: σ² of the default conversion, as a fraction of the median squared distance of a
#: training point to its nearest prototype (see :meth:`GMLVQ.to_components`).
DEFAULT_SIGMA2_FRACTION = 0.01

# Keeps μ_j defined when a point sits exactly on both of its prototypes.
_TINY = 1e-300


# ---------------------------------------------------------------------------
# cost and gradient (pure functions of arrays; the tests check them against
# finite differences and a plain-loop twin)
# ---------------------------------------------------------------------------

def _distances(X, W, omegas):
    """Squared distances under per-prototype metrics.

    Parameters
    ----------
    X : ndarray of shape (N, m)
    W : ndarray of shape (K, m)
    omegas : ndarray of shape (K, r, m)

    Returns
    -------
    d : ndarray of shape (N, K)
    D : ndarray of shape (K, N, m)
        Differences x_j − w_k, prototype-major (reused by the gradient).
    """
    D = X[None, :, :] - W[:, None, :]
    # batched matmul (K, N, m) @ (K, m, r): much faster than a 3-operand einsum
    P = D @ np.transpose(omegas, (0, 2, 1))
    return np.sum(P * P, axis=2).T, D


def _phi(mu, beta):
    """Φ(μ) and Φ'(μ): logistic sigmoid of slope ``beta``, or identity if None."""
    if beta is None:
        return mu, np.ones_like(mu)
    # 1/(1+exp(−βμ)) with |βμ| ≤ |β| since μ ∈ [−1, 1]: no overflow for sane β.
    f = 0.5 * (1.0 + np.tanh(0.5 * beta * mu))
    return f, beta * f * (1.0 - f)


def _unpack(theta, K, r, m, local, learn_metric, fixed_omega):
    W = theta[: K * m].reshape(K, m)
    if not learn_metric:
        return W, fixed_omega
    if local:
        return W, theta[K * m:].reshape(K, r, m)
    return W, theta[K * m:].reshape(1, r, m)


def _cost_grad(theta, X, same, r, local, beta, learn_metric=True, fixed_omega=None):
    """GLVQ cost and its gradient with respect to the packed parameters.

    Parameters
    ----------
    theta : ndarray of shape (K*m + n_omega,)
        Prototypes (row-major, K × m) followed by the *unnormalised* Ω̂
        ((r, m) for a global metric, (K, r, m) for local ones). Without
        ``learn_metric`` only the prototypes.
    X : ndarray of shape (N, m)
    same : ndarray of shape (N, K), bool
        ``same[j, k]`` is True when prototype k carries the label of x_j.
    r : int
        Rows of each Ω.
    local : bool
        One Ω per prototype (LGMLVQ) or one shared Ω (GMLVQ).
    beta : float or None
        Sigmoid slope; None for Φ = identity.
    learn_metric : bool
        If False, ``fixed_omega`` of shape (K or 1, r, m) is used and not differentiated.

    Returns
    -------
    cost : float
    grad : ndarray of shape theta.shape
    """
    N, m = X.shape
    K = same.shape[1]
    W, raw = _unpack(theta, K, r, m, local, learn_metric, fixed_omega)
    if learn_metric:
        norms = np.sqrt(np.einsum("krm,krm->k", raw, raw))
        om = raw / norms[:, None, None]
    else:
        om = raw
    om_k = np.broadcast_to(om, (K, r, m))
    d, D = _distances(X, W, om_k)

    rows = np.arange(N)
    jp = np.argmin(np.where(same, d, np.inf), axis=1)
    jm = np.argmin(np.where(same, np.inf, d), axis=1)
    dp, dm = d[rows, jp], d[rows, jm]
    denom = dp + dm + _TINY
    mu = (dp - dm) / denom
    f, fp = _phi(mu, beta)
    cost = float(f.mean())

    # dE/dd⁺ and dE/dd⁻ per point, spread into an (N, K) coefficient matrix.
    C = np.zeros((N, K))
    C[rows, jp] = fp * 2.0 * dm / denom**2 / N
    C[rows, jm] = -fp * 2.0 * dp / denom**2 / N

    # d d_jk / d w_k = −2 Λ_k (x_j − w_k)
    lam = np.transpose(om_k, (0, 2, 1)) @ om_k                      # (K, m, m)
    v = (C.T[:, None, :] @ D)                                       # (K, 1, m): Σ_j C_jk D_kj
    gW = -2.0 * (v @ lam)[:, 0, :]
    if not learn_metric:
        return cost, gW.ravel()

    # d d_jk / d Ω_k = 2 Ω_k (x_j − w_k)(x_j − w_k)ᵀ
    S = np.transpose(D, (0, 2, 1)) @ (C.T[:, :, None] * D)          # (K, m, m)
    if local:
        G = 2.0 * (om @ S)
    else:
        G = 2.0 * (om[0] @ S.sum(axis=0))[None]
    # Chain rule through Ω = Ω̂/‖Ω̂‖: remove the radial part, divide by the norm.
    radial = np.einsum("krm,krm->k", G, om)
    gO = (G - radial[:, None, None] * om) / norms[:, None, None]
    return cost, np.concatenate([gW.ravel(), gO.ravel()])


# ---------------------------------------------------------------------------
# estimators
# ---------------------------------------------------------------------------

class _BaseLVQ:
    """Shared machinery of :class:`GMLVQ` and :class:`LGMLVQ`."""

    _local = False

    def __init__(self, prototypes_per_class=1, *, max_iter=2500, gtol=1e-5, beta=2.0,
                 omega_rank=None, random_state=None, sigma=None, learn_metric=True):
        self.prototypes_per_class = prototypes_per_class
        self.max_iter = max_iter
        self.gtol = gtol
        self.beta = beta
        self.omega_rank = omega_rank
        self.random_state = random_state
        self.sigma = sigma
        self.learn_metric = learn_metric

    # -- parameters ---------------------------------------------------------

    def get_params(self) -> dict:
        """Hyper-parameters as a JSON-serialisable dict."""
        return {
            "prototypes_per_class": self.prototypes_per_class,
            "max_iter": self.max_iter,
            "gtol": self.gtol,
            "beta": self.beta,
            "omega_rank": self.omega_rank,
            "random_state": self.random_state,
            "sigma": self.sigma,
            "learn_metric": self.learn_metric,
        }

    def _check_params(self, m: int) -> int:
        ensure_int(self.prototypes_per_class, "prototypes_per_class", minimum=1)
        ensure_int(self.max_iter, "max_iter", minimum=0)
        ensure_float(self.gtol, "gtol", minimum=0.0, strict_min=True)
        if self.beta is not None:
            ensure_float(self.beta, "beta", minimum=0.0, strict_min=True)
        if self.sigma is not None:
            ensure_float(self.sigma, "sigma", minimum=0.0, strict_min=True)
        if self.random_state is not None:
            ensure_int(self.random_state, "random_state", minimum=0)
        if not isinstance(self.learn_metric, bool):
            raise TypeError(f"learn_metric must be bool, got {self.learn_metric!r}.")
        if self.omega_rank is None:
            return m
        r = ensure_int(self.omega_rank, "omega_rank", minimum=1)
        if r > m:
            raise ValueError(f"omega_rank must be <= the number of features ({m}), got {r}; "
                             "use None for a full-rank metric.")
        if not self.learn_metric and r != m:
            raise ValueError(f"omega_rank={r} needs learn_metric=True (a fixed metric is the "
                             "identity, of full rank); set omega_rank=None.")
        return r

    # -- fitting ------------------------------------------------------------

    def fit(self, X, y, *, should_stop=None):
        """Fit prototypes and metric(s) on labelled data.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Finite feature vectors.
        y : array-like of shape (n_samples,)
            Class labels (strings or integers); at least two classes.
        should_stop : callable, optional
            Asked before the optimisation and after every L-BFGS iteration; when it
            returns True the fit raises :class:`~emtl_stream.errors.FitCancelled` and
            the model keeps its previous state.

        Returns
        -------
        self
        """
        X = as_float_matrix(X, "X", min_rows=2)
        N, m = X.shape
        r = self._check_params(m)
        y = np.asarray(y)
        if y.shape != (N,):
            raise ValueError(f"y must have shape ({N},) to match X, got {y.shape}.")
        if y.dtype == object:
            y = y.astype(str)
        classes, y_idx = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"{type(self).__name__} needs at least two classes in y, got only "
                             f"{classes.tolist()}; record more than one class.")
        c = self.prototypes_per_class
        counts = np.bincount(y_idx, minlength=len(classes))
        if counts.min() < c:
            bad = classes[int(np.argmin(counts))]
            raise ValueError(f"class {bad!r} has {int(counts.min())} point(s), fewer than "
                             f"prototypes_per_class={c}; lower prototypes_per_class or add data.")

        # One global centre and scale (exact reparametrisation, see module docstring).
        centre = X.mean(axis=0)
        scale = float(np.sqrt(np.mean((X - centre) ** 2)))
        if not scale > 0.0:
            raise ValueError("X is constant (every row equal); nothing to classify.")
        Xs = (X - centre) / scale

        rng = np.random.default_rng(self.random_state)
        proto_labels = np.repeat(np.arange(len(classes)), c)
        K = len(proto_labels)
        W0 = np.empty((K, m))
        for cl in range(len(classes)):
            Xl = Xs[y_idx == cl]
            W0[cl * c:(cl + 1) * c] = Xl.mean(axis=0)
            if c > 1:
                # Identical starting prototypes would get identical gradients: break
                # the tie with a seeded jitter of a tenth of the class spread.
                W0[cl * c:(cl + 1) * c] += 0.1 * Xl.std(axis=0) * rng.standard_normal((c, m))
        omega0 = self._initial_omega(Xs, r)
        n_om = K if self._local else 1
        fixed = None
        if self.learn_metric:
            theta0 = np.concatenate([W0.ravel(), np.tile(omega0, (n_om, 1, 1)).ravel()])
        else:
            fixed = omega0[None]
            theta0 = W0.ravel()
        same = proto_labels[None, :] == y_idx[:, None]

        args = (Xs, same, r, self._local, self.beta, self.learn_metric, fixed)
        name = type(self).__name__
        check_stop(should_stop, name)
        if self.max_iter == 0:
            cost, _ = _cost_grad(theta0, *args)
            theta, nit, ok, msg = theta0, 0, False, "max_iter=0"
        else:
            options = {"maxiter": int(self.max_iter), "gtol": float(self.gtol)}
            res = optimize.minimize(_cost_grad, theta0, args=args, jac=True, method="L-BFGS-B",
                                    options=options,
                                    callback=lambda _: check_stop(should_stop, name))
            theta, cost, nit = res.x, float(res.fun), int(res.nit)
            ok, msg = res.status == 0, res.message
        W, raw = _unpack(theta, K, r, m, self._local, self.learn_metric, fixed)
        om = raw / np.sqrt(np.einsum("krm,krm->k", raw, raw))[:, None, None]

        self.classes_ = classes
        self.prototype_labels_ = proto_labels
        self.prototypes_ = centre + scale * W
        self._set_omega(om)
        self.n_iter_ = nit
        self.cost_ = float(cost)
        self.converged_ = bool(ok)
        self.n_features_in_ = m
        d = self.decision_function(X)
        self.default_sigma_ = self._auto_sigma(d)
        logger.info("%s fit: %d prototypes, %d features, %d iterations, cost %.4g, converged %s",
                    type(self).__name__, K, m, nit, cost, ok)
        if not ok:
            warnings.warn(f"{type(self).__name__} stopped after {nit} iterations without reaching "
                          f"gtol={self.gtol} ({msg}); increase max_iter.",
                          FitConvergenceWarning, stacklevel=2)
        return self

    def _initial_omega(self, Xs, r):
        m = Xs.shape[1]
        if r == m:
            return np.eye(m) / np.sqrt(m)
        # A low-rank metric starts on the r leading principal directions (an identity
        # block would silently drop the last m − r features).
        _, _, Vt = np.linalg.svd(Xs - Xs.mean(axis=0), full_matrices=False)
        return Vt[:r] / np.sqrt(r)

    @staticmethod
    def _auto_sigma(d):
        dmin = d.min(axis=1)
        med = float(np.median(dmin))
        if not med > 0.0:
            pos = dmin[dmin > 0]
            med = float(pos.mean()) if pos.size else 1.0
        return float(np.sqrt(DEFAULT_SIGMA2_FRACTION * med))

    # -- prediction ---------------------------------------------------------

    def _check_fitted(self):
        check_is_fitted(self, "prototypes_")

    def decision_function(self, X) -> np.ndarray:
        """Squared distance of every row to every prototype under its metric.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_prototypes)
            Smaller is closer; column k belongs to ``prototype_labels_[k]``.
        """
        self._check_fitted()
        X = as_float_matrix(X, "X", n_columns=self.n_features_in_)
        K = len(self.prototype_labels_)
        om = np.broadcast_to(self._omegas(), (K,) + self._omegas().shape[1:])
        return _distances(X, self.prototypes_, om)[0]

    def predict(self, X) -> np.ndarray:
        """Label of the nearest prototype, shape (n_samples,)."""
        d = self.decision_function(X)
        return self.classes_[self.prototype_labels_[np.argmin(d, axis=1)]]

    def score(self, X, y) -> float:
        """Accuracy of :meth:`predict` on ``(X, y)``."""
        return float(np.mean(self.predict(X) == np.asarray(y)))

    # -- conversion ---------------------------------------------------------

    def to_components(self, sigma=None, min_rel=1e-3) -> SourceComponents:
        """Return the labelled-GMM form of this model (the paper's scaling trick).

        Means are the prototypes, labels crisp, weights uniform and the precisions
        Λ_k = Ω_kᵀΩ_k / σ² with ``prec_factor[k] = Ω_kᵀ / σ`` (zero-padded to
        m × m when Ω has rank r < m), so Λ_k = P_k P_kᵀ as
        :class:`~emtl_stream.model.source.SourceComponents` expects.

        Parameters
        ----------
        sigma : float, optional
            Width of the Gaussians. σ → 0 is the LVQ limit: the responsibilities
            among the prototypes of one class become one-hot (nearest prototype)
            and the class posterior's argmax becomes the LVQ prediction. Defaults
            to the constructor's ``sigma`` or, if that is None too, to
            ``default_sigma_`` = sqrt(0.01 · median over the training points of the
            squared distance to their nearest prototype). With that choice a
            same-class prototype that is farther by only 10 % of a typical distance
            gets exp(−0.1/0.02) ≈ 0.7 % of the responsibility, i.e. the E-step is
            practically hard, yet the log-likelihood stays finite and smooth. (A
            fixed σ = 1 with trace-normalised Ω, as in the reference package,
            makes distances tiny compared with σ² and the assignment near-uniform.)
        min_rel : float
            Eigenvalues of each Λ_k below ``min_rel`` × its largest eigenvalue are
            raised to that floor *for the log-determinant only*. A rank-deficient
            metric (low ``omega_rank``, or an Ω that learned to ignore features)
            then has a finite ``log_det_prec`` instead of −inf; Λ_k itself is
            untouched. For shared metrics the value is the same for every
            component and cancels in every posterior; for local metrics it
            bounds the bias a near-singular metric gives its own component.

        Returns
        -------
        SourceComponents
        """
        self._check_fitted()
        if sigma is None:
            sigma = self.sigma if self.sigma is not None else self.default_sigma_
        sigma = ensure_float(sigma, "sigma", minimum=0.0, strict_min=True)
        min_rel = ensure_float(min_rel, "min_rel", minimum=0.0, maximum=1.0, strict_min=True)
        K, m = self.prototypes_.shape
        om = np.broadcast_to(self._omegas(), (K,) + self._omegas().shape[1:])
        r = om.shape[1]
        P = np.zeros((K, m, m))
        P[:, :, :r] = np.transpose(om, (0, 2, 1)) / sigma
        log_det = np.empty(K)
        for k in range(K):
            lam = om[k].T @ om[k] / sigma**2
            ev = np.linalg.eigvalsh(lam)
            ev = np.maximum(ev, min_rel * ev.max())
            log_det[k] = np.sum(np.log(ev))
        L = len(self.classes_)
        log_rho = np.full((L, K), -np.inf)
        log_rho[self.prototype_labels_, np.arange(K)] = 0.0
        return SourceComponents(
            means=self.prototypes_.copy(),
            prec_factor=P,
            log_det_prec=log_det,
            log_weights=np.full(K, -np.log(K)),
            log_label_given_comp=log_rho,
            classes=self.classes_.copy(),
            shared_precision=not self._local,
        )

    # -- persistence --------------------------------------------------------

    def save(self, path) -> Path:
        """Write the fitted model atomically to ``path`` (.npz, no pickle).

        The arrays go in as plain ``.npz`` entries; hyper-parameters and scalar
        fitted values as one JSON string. The file is written to a temporary
        name in the same folder, fsync'ed and renamed over ``path``, then the folder
        is fsync'ed (:func:`emtl_stream._atomic.atomic_write`).

        Returns
        -------
        pathlib.Path
        """
        self._check_fitted()
        path = Path(path)
        classes = self.classes_
        if classes.dtype.kind not in "UiufbS":
            raise ModelError(f"cannot save classes of dtype {classes.dtype} without pickle; "
                             "use string or integer labels.")
        header = {
            "format": LVQ_FORMAT,
            "kind": type(self).__name__,
            "params": self.get_params(),
            "fitted": {"n_iter_": self.n_iter_, "cost_": self.cost_,
                       "converged_": self.converged_, "default_sigma_": self.default_sigma_},
        }
        arrays = {
            "prototypes": self.prototypes_,
            "prototype_labels": self.prototype_labels_,
            "omegas": self._omegas(),
            "classes": classes,
            "header_json": np.asarray(json.dumps(header)),
        }
        return atomic_write(path, lambda fh: np.savez(fh, **arrays))

    @classmethod
    def load(cls, path):
        """Read a model written by :meth:`save`.

        Raises
        ------
        ModelError
            The file is missing, corrupted or not a saved model of this class (the
            message names the path).
        """
        path = Path(path)
        what = f"a {cls.__name__} model"
        z = read_model_npz(path, what)
        try:
            header = json.loads(str(z["header_json"]))
            arrays = {k: z[k] for k in ("prototypes", "prototype_labels", "omegas", "classes")}
        except (ValueError, KeyError, TypeError) as exc:
            raise model_file_error(path, what, exc) from exc
        if header.get("format") != LVQ_FORMAT:
            raise model_file_error(path, what, ValueError(
                f"format {header.get('format')!r}, expected {LVQ_FORMAT!r}"))
        if header.get("kind") != cls.__name__:
            raise model_file_error(path, what, ValueError(
                f"it holds a {header.get('kind')} model; load it with "
                f"{header.get('kind')}.load, not {cls.__name__}.load"))
        self = cls(**header["params"])
        self.classes_ = arrays["classes"]
        self.prototypes_ = np.ascontiguousarray(arrays["prototypes"], dtype=np.float64)
        self.prototype_labels_ = arrays["prototype_labels"].astype(np.intp)
        self._set_omega(np.ascontiguousarray(arrays["omegas"], dtype=np.float64))
        self.n_features_in_ = self.prototypes_.shape[1]
        for key, value in header["fitted"].items():
            setattr(self, key, value)
        return self

    # subclass hooks
    def _set_omega(self, om):  # pragma: no cover - overridden
        raise NotImplementedError

    def _omegas(self):  # pragma: no cover - overridden
        raise NotImplementedError


class GMLVQ(_BaseLVQ):
    """Generalised matrix LVQ: prototypes and one global metric Λ = ΩᵀΩ.

    Parameters
    ----------
    prototypes_per_class : int
        Prototypes per class, initialised at the class mean (plus a small seeded
        jitter when more than one).
    max_iter : int
        L-BFGS-B iteration limit.
    gtol : float
        L-BFGS-B projected-gradient tolerance on the mean cost.
    beta : float or None
        Slope of the logistic Φ; None for Φ = identity (plain GLVQ cost).
    omega_rank : int, optional
        Rows r of Ω (a rank-r metric); None for r = n_features.
    random_state : int, optional
        Seed of the prototype jitter.
    sigma : float, optional
        Default σ of :meth:`to_components`; None for the data-driven default.
    learn_metric : bool
        If False, Ω stays at I/√m and only prototypes move (GLVQ).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    prototypes_ : ndarray of shape (n_prototypes, n_features)
    prototype_labels_ : ndarray of shape (n_prototypes,)
        Class index (into ``classes_``) of each prototype.
    omega_ : ndarray of shape (r, n_features)
        With trace(ΩᵀΩ) = 1.
    n_iter_ : int
    cost_ : float
        Final mean GLVQ cost.
    converged_ : bool
    default_sigma_ : float
        σ used by :meth:`to_components` when none is given.
    """

    _local = False

    @property
    def relevances_(self) -> np.ndarray:
        """Λ = ΩᵀΩ, shape (n_features, n_features)."""
        return self.omega_.T @ self.omega_

    def _set_omega(self, om):
        self.omega_ = np.ascontiguousarray(om.reshape(om.shape[-2:]))

    def _omegas(self):
        return self.omega_[None]


class LGMLVQ(_BaseLVQ):
    """Localised GMLVQ: one metric Λ_k = Ω_kᵀΩ_k per prototype.

    Same parameters as :class:`GMLVQ`; each Ω_k is trace-normalised on its own.

    Attributes
    ----------
    omegas_ : ndarray of shape (n_prototypes, r, n_features)
    (the others as in :class:`GMLVQ`)
    """

    _local = True

    @property
    def relevances_(self) -> np.ndarray:
        """Λ_k = Ω_kᵀΩ_k, shape (n_prototypes, n_features, n_features)."""
        return np.einsum("kri,krj->kij", self.omegas_, self.omegas_)

    def _set_omega(self, om):
        self.omegas_ = np.ascontiguousarray(om)

    def _omegas(self):
        return self.omegas_
