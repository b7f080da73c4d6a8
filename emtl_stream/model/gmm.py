"""Labelled Gaussian mixture source model (lGMM), trained by expectation maximisation.

The joint density of a feature vector x and a label y = l is

    p(x, y=l) = Σ_k π_k ρ_{l,k} N(x | μ_k, Λ_k⁻¹)

(algorithm.md §1). With ``n_components_per_class=c`` every component belongs to
exactly one class (ρ one-hot, K = c·L) and a training point only feeds the
components of its own class; with ``n_components=K`` the label distribution ρ is
learned. LDA is ``covariance_type="tied"`` with one component per class.

Everything is computed in log space: log-densities through Cholesky factors of
the precisions (log det from their diagonals) and per-row log-sum-exp, so a row's
prediction never depends on the other rows of a batch (the reference trainer's
per-component shift across the batch, reference-notes.md W1/W2, is not repeated).

Parameter shapes follow scikit-learn's ``GaussianMixture`` for the four types it
has and extend them naturally (K components, m features):

=================  ====================  =========================
covariance_type    covariances_          precisions_cholesky_
=================  ====================  =========================
``full``           (K, m, m)             (K, m, m), Λ_k = P_k P_kᵀ
``tied``           (m, m)                (m, m)
``diag``           (K, m)                (K, m), 1/σ
``tied_diag``      (m,)                  (m,)
``spherical``      (K,)                  (K,)
``tied_spherical`` ()                    ()
=================  ====================  =========================
"""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path

import numpy as np

from scipy.special import logsumexp

from .._atomic import atomic_write, model_file_error, read_model_npz
from .._checks import as_float_matrix, check_option, ensure_float, ensure_int
from ..errors import FitConvergenceWarning, ModelError
from ..logs import logger
from ._covariance import (
    _MATRIX,
    _TIED,
    COVARIANCE_TYPES,
    _cov_to_prec_chol,
    _diag_factor,
    _log_det_prec,
    _log_gauss,
    _matrix_factors,
    _param_shape,
    _prec_chol_to_cov,
    _prec_chol_to_prec,
    _prec_to_prec_chol,
)
from ._fitted import check_is_fitted, check_stop
from ._gmm_init import _init_block_resp, _kmeans_plusplus  # noqa: F401 (tests import it here)
from .source import SourceComponents

__all__ = ["LabelledGMM", "COVARIANCE_TYPES"]

_INIT_PARAMS = ("k-means++", "kmeans", "random", "random_from_data")
_FILE_FORMAT = "emtl_stream.LabelledGMM/1"
# Added to every component's soft count (as scikit-learn does) so that an empty
# component gives a finite mean instead of 0/0.
_NK_EPS = 10.0 * np.finfo(np.float64).eps


def _log_rho(rho: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(rho)


# --------------------------------------------------------------------------------------
# The estimator
# --------------------------------------------------------------------------------------


class LabelledGMM:
    """Labelled Gaussian mixture classifier and transfer-EM source model.

    Parameters
    ----------
    n_components_per_class : int, default=1
        Components per class with crisp labels (K = n_components_per_class · n_classes).
        Ignored when ``component_labels_init`` is given (then K is its length).
    covariance_type : {"full", "tied", "diag", "tied_diag", "spherical", "tied_spherical"}
        Structure of the component covariances; ``"tied"`` with one component per
        class is LDA.
    n_components : int, optional
        If given, K components with a *learned* label distribution ρ (not crisp);
        ``n_components_per_class`` must then stay 1.
    reg_covar : float, default=1e-6
        Added to the diagonal of every covariance estimate.
    max_iter : int, default=100
        Maximum number of EM iterations (M-steps) per initialisation.
    tol : float, default=1e-6
        Stop when |Δℓ| / |ℓ| < tol, ℓ the mean log-likelihood mean_j log p(x_j, y_j).
    n_init : int, default=1
        Number of initialisations; the one with the best final ℓ is kept.
    init_params : {"k-means++", "kmeans", "random", "random_from_data"}
        How the initial responsibilities are drawn, within each class for crisp labels
        ("k-means++": nearest k-means++ seed; "kmeans": plus Lloyd iterations).
    random_state : int, numpy.random.Generator, numpy.random.RandomState or None
        Seed of initialisation and :meth:`sample` (``np.random.default_rng``); the
        global numpy RNG is never used.
    hard_assignments : bool, default=False
        Classification EM: responsibilities are one-hot at the most probable component.
    weight_concentration_prior : float or array of shape (K,), optional
        Dirichlet concentration α ≥ 1 of the weights (MAP: π_k ∝ N_k + α_k − 1).
    mean_prior : array of shape (m,), optional
        Mean m₀ of the normal prior on the means (default: data mean when the mean
        prior is active).
    mean_precision_prior : float, optional
        κ₀ > 0; μ_k | Σ_k ~ N(m₀, Σ_k / κ₀). Default 1 when ``mean_prior`` is given.
    covariance_prior : array, optional
        Inverse-Wishart scale Ψ₀: (m, m) for full/tied, (m,) for diag/tied_diag, a
        float for the spherical types (default: the data covariance).
    degrees_of_freedom_prior : float, optional
        Inverse-Wishart ν₀ (default m when the covariance prior is active).
    weights_init, means_init, precisions_init : arrays, optional
        Initial weights (K,), means (K, m) and precisions (shape of ``precisions_``);
        they replace what ``init_params`` produces.
    component_labels_init : array of shape (K,), optional
        Class value of every component (crisp labels); default: blocks of
        ``n_components_per_class`` in sorted class order.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Sorted unique training labels (strings or integers kept).
    means_ : ndarray of shape (n_components, n_features)
    weights_ : ndarray of shape (n_components,)
    covariances_, precisions_, precisions_cholesky_ : ndarray
        Shapes per covariance type, see the module docstring; Λ = P Pᵀ.
    component_labels_ : ndarray of shape (n_components,)
        Class index (into ``classes_``) of every component (crisp) or its most
        probable class (learned ρ).
    label_distribution_ : ndarray of shape (n_classes, n_components)
        ρ_{l,k} = P(y = classes_[l] | k).
    converged_ : bool
    n_iter_ : int
        M-steps of the kept initialisation.
    lower_bound_ : float
        Mean log-likelihood of the kept initialisation's final parameters.
    lower_bounds_ : list of float
        ℓ before the first and after every M-step of the kept initialisation.

    Notes
    -----
    With priors the M-step is the MAP update of the normal-inverse-Wishart /
    Dirichlet model; for the diagonal and spherical types the prior acts per
    feature (the diagonal of Ψ₀, ν₀ + 2 instead of ν₀ + m + 1) and the spherical
    variance is the mean of the diagonal estimate. Convergence and
    ``lower_bound_`` always use the likelihood, not the penalised objective.
    """

    def __init__(self, n_components_per_class=1, covariance_type="tied", *, n_components=None,
                 reg_covar=1e-6, max_iter=100, tol=1e-6, n_init=1, init_params="k-means++",
                 random_state=None, hard_assignments=False,
                 weight_concentration_prior=None, mean_prior=None, mean_precision_prior=None,
                 covariance_prior=None, degrees_of_freedom_prior=None,
                 weights_init=None, means_init=None, precisions_init=None,
                 component_labels_init=None):
        self.n_components_per_class = n_components_per_class
        self.covariance_type = covariance_type
        self.n_components = n_components
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.init_params = init_params
        self.random_state = random_state
        self.hard_assignments = hard_assignments
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_prior = mean_prior
        self.mean_precision_prior = mean_precision_prior
        self.covariance_prior = covariance_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.component_labels_init = component_labels_init

    # ------------------------------------------------------------------ parameters

    def get_params(self, deep: bool = True) -> dict:
        """Return the constructor arguments as a dict (scikit-learn convention).

        Parameters
        ----------
        deep : bool
            Accepted for scikit-learn compatibility; there are no nested estimators.

        Returns
        -------
        dict
        """
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def set_params(self, **params) -> "LabelledGMM":
        """Set constructor arguments; unknown names raise ``ValueError``.

        Parameters
        ----------
        **params
            Constructor arguments by name.

        Returns
        -------
        self
        """
        valid = self.get_params()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"LabelledGMM has no parameter {key!r}; valid: {sorted(valid)}.")
            setattr(self, key, value)
        return self

    def _check_hyper(self):
        check_option(self.covariance_type, COVARIANCE_TYPES, "covariance_type")
        check_option(self.init_params, _INIT_PARAMS, "init_params")
        ensure_int(self.n_components_per_class, "n_components_per_class", minimum=1)
        if self.n_components is not None:
            ensure_int(self.n_components, "n_components", minimum=1)
            if self.n_components_per_class != 1:
                raise ValueError(
                    f"give either n_components (learned label distribution) or "
                    f"n_components_per_class (crisp labels), not both; got n_components="
                    f"{self.n_components}, n_components_per_class={self.n_components_per_class}.")
            if self.component_labels_init is not None:
                raise ValueError("component_labels_init only applies to crisp labels; "
                                 "leave n_components=None to use it.")
        ensure_float(self.reg_covar, "reg_covar", minimum=0.0)
        ensure_int(self.max_iter, "max_iter", minimum=1)
        ensure_float(self.tol, "tol", minimum=0.0)
        ensure_int(self.n_init, "n_init", minimum=1)

    # ------------------------------------------------------------------ fitting

    def _rng(self, rng=None) -> np.random.Generator:
        """Return a Generator from ``rng`` or ``random_state``; never numpy's global RNG."""
        source = self.random_state if rng is None else rng
        if isinstance(source, np.random.Generator):
            return source
        if isinstance(source, np.random.RandomState):
            # Share the RandomState's bit generator, so draws advance its state.
            return np.random.Generator(source._bit_generator)
        try:
            return np.random.default_rng(source)
        except (TypeError, ValueError):
            raise TypeError(f"random_state must be None, an int, a numpy.random.Generator or "
                            f"RandomState, got {type(source).__name__} {source!r}.") from None

    def fit(self, X, y, *, should_stop=None) -> "LabelledGMM":
        """Fit the mixture by (MAP) EM on labelled data.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Finite feature vectors.
        y : array-like of shape (n_samples,)
            Class labels (strings or integers).
        should_stop : callable, optional
            Asked before every initialisation and EM iteration; when it returns True
            the fit raises :class:`~emtl_stream.errors.FitCancelled` and the model
            keeps its previous state.

        Returns
        -------
        self : LabelledGMM
        """
        self._check_hyper()
        X = as_float_matrix(X, "X", min_rows=1)
        y = np.asarray(y)
        if y.shape != (X.shape[0],):
            raise ValueError(f"y must have shape ({X.shape[0]},) to match X, got {y.shape}.")
        try:
            classes, y_idx = np.unique(y, return_inverse=True)
        except TypeError:
            raise ValueError("y must hold comparable labels of one type (no None or mixed "
                             "str/int); LabelledGMM is fitted on labelled data only.") from None
        y_idx = y_idx.ravel()
        N, m = X.shape
        L = len(classes)
        cov_type = self.covariance_type
        crisp = self.n_components is None
        counts = np.bincount(y_idx, minlength=L)

        if crisp:
            comp_labels = self._initial_component_labels(classes)
            K = len(comp_labels)
            per_class = np.bincount(comp_labels, minlength=L)
            if np.any(per_class == 0):
                missing = classes[per_class == 0].tolist()
                raise ValueError(f"component_labels_init gives no component to class(es) "
                                 f"{missing}; every class needs at least one component.")
            short = np.flatnonzero(counts < per_class)
            if short.size:
                l0 = short[0]
                raise ValueError(
                    f"class {classes[l0]!r} has {counts[l0]} training point(s) but "
                    f"{per_class[l0]} component(s); lower n_components_per_class or record "
                    f"more data for that class.")
        else:
            K = int(self.n_components)
            comp_labels = None
            if N < K:
                raise ValueError(f"X has {N} rows but n_components={K}; lower n_components "
                                 f"or provide more data.")
        onehot_y = np.zeros((N, L))
        onehot_y[np.arange(N), y_idx] = 1.0
        prior = self._resolve_priors(X, K, m)
        inits = self._check_inits(K, m)

        rng = self._rng()
        best = None
        for init in range(int(self.n_init)):
            check_stop(should_stop, "LabelledGMM")
            params = self._initialise(X, y_idx, onehot_y, comp_labels, K, L, rng, prior, inits)
            params, trace, n_iter, converged = self._em(X, y_idx, onehot_y, params, prior, init,
                                                        should_stop)
            logger.debug("LabelledGMM init %s: mean log-likelihood %s after %s iterations "
                         "(converged: %s)", init, trace[-1], n_iter, converged)
            if best is None or trace[-1] > best[1][-1]:
                best = (params, trace, n_iter, converged)
        params, trace, n_iter, converged = best
        if not converged:
            warnings.warn(
                f"LabelledGMM did not converge in max_iter={self.max_iter} iterations (relative "
                f"change of the mean log-likelihood still >= tol={self.tol}); increase max_iter "
                f"or tol.", FitConvergenceWarning, stacklevel=2)
        self._set_fitted(classes, *params, cov_type=cov_type)
        if crisp:
            self.component_labels_ = comp_labels.copy()
        self.converged_ = bool(converged)
        self.n_iter_ = int(n_iter)
        self.lower_bound_ = float(trace[-1])
        self.lower_bounds_ = [float(v) for v in trace]
        return self

    def _initial_component_labels(self, classes) -> np.ndarray:
        L = len(classes)
        if self.component_labels_init is None:
            return np.repeat(np.arange(L), int(self.n_components_per_class))
        cl = np.asarray(self.component_labels_init)
        if cl.ndim != 1 or cl.size == 0:
            raise ValueError(f"component_labels_init must be 1-D class values, "
                             f"got shape {cl.shape}.")
        idx = np.searchsorted(classes, cl)
        idx = np.clip(idx, 0, L - 1)
        if not np.all(classes[idx] == cl):
            unknown = cl[classes[idx] != cl].tolist()
            raise ValueError(f"component_labels_init holds label(s) {unknown} that are not in y "
                             f"(classes {classes.tolist()}).")
        return idx.astype(np.intp)

    def _resolve_priors(self, X, K, m) -> dict:
        cov_type = self.covariance_type
        prior = {"alpha": None, "kappa": 0.0, "m0": None, "psi": None, "nu": None}
        if self.weight_concentration_prior is not None:
            alpha = np.broadcast_to(np.asarray(self.weight_concentration_prior, float), (K,)).copy()
            if not np.all(np.isfinite(alpha)) or np.any(alpha < 1.0):
                raise ValueError(
                    f"weight_concentration_prior must be >= 1 (the MAP weights are (N_k + α − 1)"
                    f"/(N + Σ(α − 1))), got {self.weight_concentration_prior!r}.")
            prior["alpha"] = alpha
        if self.mean_prior is not None or self.mean_precision_prior is not None:
            kappa = 1.0 if self.mean_precision_prior is None else self.mean_precision_prior
            prior["kappa"] = ensure_float(kappa, "mean_precision_prior", minimum=0.0,
                                          strict_min=True)
            m0 = X.mean(axis=0) if self.mean_prior is None else np.asarray(self.mean_prior, float)
            if m0.shape != (m,) or not np.all(np.isfinite(m0)):
                raise ValueError(f"mean_prior must be a finite array of shape ({m},), "
                                 f"got shape {m0.shape}.")
            prior["m0"] = m0
        if self.covariance_prior is not None or self.degrees_of_freedom_prior is not None:
            nu = self.degrees_of_freedom_prior
            nu = float(m) if nu is None else nu
            lo = m - 1.0 if cov_type in _MATRIX else 0.0
            prior["nu"] = ensure_float(nu, "degrees_of_freedom_prior", minimum=lo, strict_min=True)
            if self.covariance_prior is None:
                emp = np.atleast_2d(np.cov(X.T, bias=True))
                psi = {"full": emp, "tied": emp}.get(cov_type, np.diag(emp).copy())
                if cov_type in ("spherical", "tied_spherical"):
                    psi = float(np.mean(np.diag(emp)))
            else:
                psi = np.asarray(self.covariance_prior, float)
            want = ((m, m) if cov_type in _MATRIX
                    else (m,) if cov_type in ("diag", "tied_diag") else ())
            psi = np.asarray(psi, float)
            if psi.shape != want or not np.all(np.isfinite(psi)):
                raise ValueError(f"covariance_prior for covariance_type={cov_type!r} must be a "
                                 f"finite array of shape {want}, got shape {psi.shape}.")
            prior["psi"] = psi
        return prior

    def _check_inits(self, K, m) -> dict:
        out = {}
        if self.weights_init is not None:
            w = np.asarray(self.weights_init, float)
            if w.shape != (K,) or np.any(w <= 0) or abs(w.sum() - 1.0) > 1e-6:
                raise ValueError(f"weights_init must be {K} positive numbers summing to 1, "
                                 f"got {w!r}.")
            out["weights"] = w / w.sum()
        if self.means_init is not None:
            mu = np.asarray(self.means_init, float)
            if mu.shape != (K, m) or not np.all(np.isfinite(mu)):
                raise ValueError(f"means_init must be finite with shape {(K, m)}, got {mu.shape}.")
            out["means"] = mu.copy()
        if self.precisions_init is not None:
            shape = _param_shape(self.covariance_type, K, m)
            p = np.asarray(self.precisions_init, float)
            if p.shape != shape:
                raise ValueError(f"precisions_init for covariance_type={self.covariance_type!r} "
                                 f"must have shape {shape}, got {p.shape}.")
            try:
                out["prec_chol"] = _prec_to_prec_chol(p, self.covariance_type)
            except np.linalg.LinAlgError:
                raise ValueError("precisions_init must be symmetric positive definite.") from None
        return out

    def _initialise(self, X, y_idx, onehot_y, comp_labels, K, L, rng, prior, inits):
        N = X.shape[0]
        resp = np.zeros((N, K))
        if comp_labels is not None:
            for cl in range(L):
                rows = np.flatnonzero(y_idx == cl)
                cols = np.flatnonzero(comp_labels == cl)
                resp[np.ix_(rows, cols)] = _init_block_resp(X[rows], len(cols),
                                                            self.init_params, rng)
            rho = np.zeros((L, K))
            rho[comp_labels, np.arange(K)] = 1.0
        else:
            resp = _init_block_resp(X, K, self.init_params, rng)
            rho = None
        weights, means, cov, prec_chol, rho_new = self._m_step(X, onehot_y, resp, prior,
                                                                learn_rho=rho is None)
        rho = rho_new if rho is None else rho
        if "weights" in inits:
            weights = inits["weights"].copy()
        if "means" in inits:
            means = inits["means"].copy()
        if "prec_chol" in inits:
            prec_chol = inits["prec_chol"].copy()
            cov = _prec_chol_to_cov(prec_chol, self.covariance_type)
        return weights, means, cov, prec_chol, rho

    def _e_step(self, X, y_idx, params):
        """Log-responsibilities (N, K) and the mean log-likelihood mean_j log p(x_j, y_j)."""
        weights, means, _, prec_chol, rho = params
        with np.errstate(divide="ignore"):
            log_w = np.log(weights)
        log_a = _log_gauss(X, means, prec_chol, self.covariance_type) + log_w
        log_a = log_a + _log_rho(rho)[y_idx]
        log_norm = logsumexp(log_a, axis=1)
        return log_a - log_norm[:, None], float(np.mean(log_norm))

    def _em(self, X, y_idx, onehot_y, params, prior, init, should_stop=None):
        learn_rho = self.n_components is not None
        log_resp, ll = self._e_step(X, y_idx, params)
        trace = [ll]
        converged = False
        n_iter = 0
        for n_iter in range(1, int(self.max_iter) + 1):
            check_stop(should_stop, "LabelledGMM")
            resp = self._resp_from_log(log_resp)
            w, mu, cov, pc, rho = self._m_step(X, onehot_y, resp, prior, learn_rho)
            params = (w, mu, cov, pc, rho if learn_rho else params[4])
            log_resp, ll_new = self._e_step(X, y_idx, params)
            trace.append(ll_new)
            change = abs(ll_new - ll) / max(abs(ll), np.finfo(float).tiny)
            logger.debug("LabelledGMM init %s iteration %s: mean log-likelihood %.10g "
                         "(relative change %.3g)", init, n_iter, ll_new, change)
            ll = ll_new
            if change < self.tol:
                converged = True
                break
        return params, trace, n_iter, converged

    def _resp_from_log(self, log_resp):
        if self.hard_assignments:
            resp = np.zeros_like(log_resp)
            resp[np.arange(log_resp.shape[0]), np.argmax(log_resp, axis=1)] = 1.0
            return resp
        return np.exp(log_resp)

    def _m_step(self, X, onehot_y, resp, prior, learn_rho):
        """(MAP) parameter update from responsibilities resp (N, K)."""
        cov_type = self.covariance_type
        N, m = X.shape
        K = resp.shape[1]
        nk = resp.sum(axis=0) + _NK_EPS
        # weights
        if prior["alpha"] is None:
            weights = nk / nk.sum()
        else:
            a1 = prior["alpha"] - 1.0
            weights = (nk + a1) / (nk.sum() + a1.sum())
        # means
        sx = resp.T @ X
        kappa, m0 = prior["kappa"], prior["m0"]
        means = sx / nk[:, None] if kappa == 0.0 else (sx + kappa * m0) / (nk + kappa)[:, None]
        # covariances: numerator (scatter + prior terms) / denominator
        has_mean_prior = kappa > 0.0
        psi, nu = prior["psi"], prior["nu"]
        if cov_type in _MATRIX:
            scat = np.empty((K, m, m))
            for k in range(K):
                d = X - means[k]
                scat[k] = (resp[:, k, None] * d).T @ d
                if has_mean_prior:
                    dm = means[k] - m0
                    scat[k] += kappa * np.outer(dm, dm)
            iw_extra = 0.0 if nu is None else nu + m + 1.0
        else:
            scat = np.empty((K, m))
            for k in range(K):
                scat[k] = resp[:, k] @ (X - means[k]) ** 2
                if has_mean_prior:
                    scat[k] += kappa * (means[k] - m0) ** 2
            iw_extra = 0.0 if nu is None else nu + 2.0
        psi_full = None
        if psi is not None:
            psi_full = psi if cov_type in _MATRIX else np.broadcast_to(psi, (m,))
        if cov_type in _TIED:
            num = scat.sum(axis=0) + (0.0 if psi_full is None else psi_full)
            den = nk.sum() + (K if has_mean_prior else 0.0) + iw_extra
        else:
            num = scat + (0.0 if psi_full is None else psi_full)
            den = nk + (1.0 if has_mean_prior else 0.0) + iw_extra
            den = den[:, None, None] if cov_type == "full" else den[:, None]
        cov = num / den
        if cov_type in _MATRIX:
            idx = np.arange(m)
            cov[..., idx, idx] += self.reg_covar
        else:
            cov = cov + self.reg_covar
            if cov_type in ("spherical", "tied_spherical"):
                cov = cov.mean(axis=-1)
        prec_chol = _cov_to_prec_chol(cov, cov_type)
        rho = None
        if learn_rho:
            rho = (onehot_y.T @ resp) / nk  # ρ_{l,k} ∝ Σ_{j:y_j=l} γ_kj
            rho = rho / rho.sum(axis=0, keepdims=True)
        return weights, means, cov, prec_chol, rho

    def _set_fitted(self, classes, weights, means, cov, prec_chol, rho, *, cov_type):
        self.classes_ = np.asarray(classes)
        self.weights_ = np.asarray(weights, float)
        self.means_ = np.asarray(means, float)
        self.covariances_ = np.asarray(cov, float)
        self.precisions_cholesky_ = np.asarray(prec_chol, float)
        self.precisions_ = _prec_chol_to_prec(self.precisions_cholesky_, cov_type)
        self.label_distribution_ = np.asarray(rho, float)
        self.component_labels_ = np.argmax(self.label_distribution_, axis=0).astype(np.intp)
        self._fitted_cov_type = cov_type

    # ------------------------------------------------------------------ prediction

    def _check_fitted(self):
        check_is_fitted(self, "means_", "call fit(X, y) or build it with "
                        "LabelledGMM.from_params(...)")

    def _log_joint_comp(self, X) -> np.ndarray:
        """Log π_k + log N(x | k), shape (N, K)."""
        self._check_fitted()
        X = as_float_matrix(X, "X", n_columns=self.means_.shape[1])
        with np.errstate(divide="ignore"):
            log_w = np.log(self.weights_)
        return _log_gauss(X, self.means_, self.precisions_cholesky_, self._fitted_cov_type) + log_w

    def _log_joint_class(self, X) -> np.ndarray:
        """Log p(x, y = classes_[l]), shape (N, L)."""
        lj = self._log_joint_comp(X)
        log_rho = _log_rho(self.label_distribution_)
        return logsumexp(lj[:, None, :] + log_rho[None, :, :], axis=2)

    def predict_log_proba(self, X) -> np.ndarray:
        """Class log-posteriors log P(y | x), shape (n_samples, n_classes) in ``classes_`` order.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        lj = self._log_joint_class(X)
        return lj - logsumexp(lj, axis=1, keepdims=True)

    def predict_proba(self, X) -> np.ndarray:
        """Class posteriors P(y | x).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Rows sum to 1; columns follow ``classes_``.
        """
        return np.exp(self.predict_log_proba(X))

    def predict(self, X) -> np.ndarray:
        """Most probable class of every row, shape (n_samples,), values from ``classes_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        self._check_fitted()
        return self.classes_[np.argmax(self._log_joint_class(X), axis=1)]

    def score_samples(self, X) -> np.ndarray:
        """Log p(x) (label marginal) of every row, shape (n_samples,).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        return logsumexp(self._log_joint_comp(X), axis=1)

    def score(self, X, y=None) -> float:
        """Mean log p(x, y) over the rows, or mean log p(x) when ``y`` is None.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,), optional
            Labels from ``classes_``.

        Returns
        -------
        float
        """
        if y is None:
            return float(np.mean(self.score_samples(X)))
        lj = self._log_joint_class(X)
        y_idx = self._label_index(y, lj.shape[0])
        return float(np.mean(lj[np.arange(lj.shape[0]), y_idx]))

    def _label_index(self, y, n) -> np.ndarray:
        y = np.asarray(y)
        if y.shape != (n,):
            raise ValueError(f"y must have shape ({n},), got {y.shape}.")
        idx = np.clip(np.searchsorted(self.classes_, y), 0, len(self.classes_) - 1)
        bad = self.classes_[idx] != y
        if np.any(bad):
            raise ValueError(f"y holds label(s) {np.unique(y[bad]).tolist()} unknown to the model "
                             f"(classes {self.classes_.tolist()}).")
        return idx

    def sample(self, n_samples=1, class_=None, rng=None):
        """Draw labelled samples from the mixture.

        Parameters
        ----------
        n_samples : int
        class_ : label, optional
            Draw from p(x | y = class_) only.
        rng : numpy.random.Generator or int, optional
            Random source; default ``np.random.default_rng(random_state)``.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,)
        """
        self._check_fitted()
        n_samples = ensure_int(n_samples, "n_samples", minimum=0)
        gen = self._rng(rng)
        K, m = self.means_.shape
        rho = self.label_distribution_
        if class_ is None:
            p_comp = self.weights_
        else:
            cl = int(self._label_index(np.asarray([class_]), 1)[0])
            p_comp = self.weights_ * rho[cl]
        p_comp = p_comp / p_comp.sum()
        comp = gen.choice(K, size=n_samples, p=p_comp)
        cov = self.covariances_
        ct = self._fitted_cov_type
        X = np.empty((n_samples, m))
        y_idx = np.empty(n_samples, dtype=np.intp)
        for k in range(K):
            rows = np.flatnonzero(comp == k)
            if rows.size == 0:
                continue
            z = gen.standard_normal((rows.size, m))
            if ct in _MATRIX:
                c = cov[k] if ct == "full" else cov
                X[rows] = self.means_[k] + z @ np.linalg.cholesky(c).T
            else:
                sd = 1.0 / _diag_factor(self.precisions_cholesky_, ct, K, m)[k]
                X[rows] = self.means_[k] + z * sd
            if class_ is None:
                p_lab = rho[:, k] / rho[:, k].sum()
                y_idx[rows] = gen.choice(len(self.classes_), size=rows.size, p=p_lab)
            else:
                y_idx[rows] = cl
        return X, self.classes_[y_idx]

    # ------------------------------------------------------------------ conversions

    @classmethod
    def from_params(cls, means, precisions, weights, component_labels, classes,
                    covariance_type="tied") -> "LabelledGMM":
        """Build a fitted model with crisp labels from given parameters.

        Parameters
        ----------
        means : array of shape (n_components, n_features)
        precisions : array
            Shape of ``precisions_`` for ``covariance_type`` (e.g. (m, m) for tied).
        weights : array of shape (n_components,)
            Positive, summing to 1.
        component_labels : array of shape (n_components,)
            Class value of every component.
        classes : array of shape (n_classes,)
            All class values (order of predictions follows ``np.unique(classes)``).
        covariance_type : str

        Returns
        -------
        LabelledGMM
        """
        check_option(covariance_type, COVARIANCE_TYPES, "covariance_type")
        means = np.asarray(means, float)
        if means.ndim != 2 or not np.all(np.isfinite(means)):
            raise ModelError(f"means must be a finite (n_components, n_features) array, "
                             f"got shape {means.shape}.")
        K, m = means.shape
        weights = np.asarray(weights, float)
        if weights.shape != (K,) or np.any(~(weights > 0)) or abs(weights.sum() - 1.0) > 1e-6:
            raise ModelError(f"weights must be {K} positive numbers summing to 1, got {weights!r}.")
        prec = np.asarray(precisions, float)
        shape = _param_shape(covariance_type, K, m)
        if prec.shape != shape or not np.all(np.isfinite(prec)):
            raise ModelError(f"precisions for covariance_type={covariance_type!r} must be finite "
                             f"with shape {shape}, got {prec.shape}.")
        try:
            prec_chol = _prec_to_prec_chol(prec, covariance_type)
        except np.linalg.LinAlgError:
            raise ModelError("precisions must be symmetric positive definite.") from None
        classes_ = np.unique(np.asarray(classes))
        comp = np.asarray(component_labels)
        if comp.shape != (K,):
            raise ModelError(f"component_labels must have shape ({K},), got {comp.shape}.")
        idx = np.clip(np.searchsorted(classes_, comp), 0, len(classes_) - 1)
        if not np.all(classes_[idx] == comp):
            raise ModelError(f"component_labels {comp[classes_[idx] != comp].tolist()} are not in "
                             f"classes {classes_.tolist()}.")
        rho = np.zeros((len(classes_), K))
        rho[idx, np.arange(K)] = 1.0
        counts = np.bincount(idx, minlength=len(classes_))
        model = cls(n_components_per_class=int(counts[0]) if np.all(counts == counts[0]) else 1,
                    covariance_type=covariance_type,
                    component_labels_init=None if np.all(counts == counts[0]) else comp.tolist())
        model._set_fitted(classes_, weights / weights.sum(), means,
                          _prec_chol_to_cov(prec_chol, covariance_type), prec_chol, rho,
                          cov_type=covariance_type)
        model.precisions_ = prec.copy()
        model.component_labels_ = idx.astype(np.intp)
        model.converged_, model.n_iter_ = True, 0
        model.lower_bound_, model.lower_bounds_ = float("nan"), []
        return model

    def to_components(self) -> SourceComponents:
        """Return the model as transfer EM consumes it (precision factors expanded to (K, m, m))."""
        self._check_fitted()
        K, m = self.means_.shape
        ct = self._fitted_cov_type
        with np.errstate(divide="ignore"):
            log_w = np.log(self.weights_)
        return SourceComponents(
            means=self.means_,
            prec_factor=_matrix_factors(self.precisions_cholesky_, ct, K, m),
            log_det_prec=_log_det_prec(self.precisions_cholesky_, ct, K, m),
            log_weights=log_w,
            log_label_given_comp=_log_rho(self.label_distribution_),
            classes=self.classes_,
            shared_precision=ct in _TIED,
        )

    # ------------------------------------------------------------------ persistence

    _ARRAYS = ("classes_", "means_", "weights_", "covariances_", "precisions_",
               "precisions_cholesky_", "label_distribution_", "component_labels_",
               "lower_bounds_")

    def save(self, path) -> Path:
        """Write the fitted model to one ``.npz`` file atomically.

        The file holds plain arrays and a JSON string (hyper-parameters, class
        names, fit summary); it loads with ``allow_pickle=False``.

        Parameters
        ----------
        path : str or Path

        Returns
        -------
        Path
        """
        self._check_fitted()
        path = Path(path)
        hyper = {}
        for key, value in self.get_params().items():
            if isinstance(value, np.ndarray):
                value = value.tolist()
            elif isinstance(value, (np.generic,)):
                value = value.item()
            elif key == "random_state" and not (value is None or isinstance(value, int)):
                value = None  # a Generator's state is not part of the model
            hyper[key] = value
        meta = {
            "format": _FILE_FORMAT,
            "hyper_parameters": hyper,
            "covariance_type": self._fitted_cov_type,
            "classes": self.classes_.tolist(),
            "converged": bool(self.converged_),
            "n_iter": int(self.n_iter_),
            "lower_bound": float(self.lower_bound_),
        }
        arrays = {name: np.asarray(getattr(self, name)) for name in self._ARRAYS}
        if arrays["classes_"].dtype.kind == "O":
            arrays["classes_"] = arrays["classes_"].astype(str)
        arrays["meta"] = np.asarray(json.dumps(meta))
        atomic_write(path, lambda fh: np.savez(fh, **arrays))
        logger.debug("LabelledGMM saved to %s", path)
        return path

    @classmethod
    def load(cls, path) -> "LabelledGMM":
        """Read a model written by :meth:`save`.

        Parameters
        ----------
        path : str or Path
            A ``.npz`` file written by :meth:`save`.

        Raises
        ------
        ModelError
            The file is missing, corrupted, incomplete or inconsistent (the message
            names the path).
        """
        path = Path(path)
        data = read_model_npz(path, "a LabelledGMM")
        try:
            arrays = {name: data[name] for name in cls._ARRAYS}
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != _FILE_FORMAT:
                raise ValueError(f"unknown format {meta.get('format')!r}")
            model = cls(**meta["hyper_parameters"])
            ct = check_option(meta["covariance_type"], COVARIANCE_TYPES, "covariance_type")
            K, m = arrays["means_"].shape
            L = len(arrays["classes_"])
            expect = {
                "weights_": (K,), "covariances_": _param_shape(ct, K, m),
                "precisions_": _param_shape(ct, K, m),
                "precisions_cholesky_": _param_shape(ct, K, m),
                "label_distribution_": (L, K), "component_labels_": (K,),
            }
            for name, shape in expect.items():
                if arrays[name].shape != shape:
                    raise ValueError(f"{name} has shape {arrays[name].shape}, expected {shape}")
            for name in ("means_", "weights_", "covariances_", "precisions_",
                         "precisions_cholesky_", "label_distribution_"):
                if not np.all(np.isfinite(arrays[name])):
                    raise ValueError(f"{name} contains NaN or inf")
        except (ModelError, ValueError, KeyError, TypeError) as exc:
            raise model_file_error(path, "a LabelledGMM", exc) from exc
        model.classes_ = arrays["classes_"]
        for name in ("means_", "weights_", "covariances_", "precisions_",
                     "precisions_cholesky_", "label_distribution_"):
            setattr(model, name, np.asarray(arrays[name], float))
        model.component_labels_ = arrays["component_labels_"].astype(np.intp)
        model.lower_bounds_ = [float(v) for v in arrays["lower_bounds_"]]
        model._fitted_cov_type = ct
        model.converged_ = bool(meta["converged"])
        model.n_iter_ = int(meta["n_iter"])
        model.lower_bound_ = float(meta["lower_bound"])
        return model

    def __repr__(self) -> str:  # noqa: D105
        nondefault = []
        sig = inspect.signature(type(self).__init__).parameters
        defaults = {k: v.default for k, v in sig.items() if k != "self"}
        for key, value in self.get_params().items():
            if value is not defaults[key] and not (
                    np.isscalar(value) and np.isscalar(defaults[key]) and value == defaults[key]):
                nondefault.append(f"{key}={value!r}" if not isinstance(value, np.ndarray)
                                  else f"{key}=<array {value.shape}>")
        return f"LabelledGMM({', '.join(nondefault)})"
