"""Covariance-type algebra of the labelled Gaussian mixture (:mod:`emtl_stream.model.gmm`).

Six covariance types (the table in the gmm module docstring): conversions between
covariances, precisions and precision factors P (Λ = P Pᵀ), their expansion to one
(m, m) factor per component, log-determinants and row-wise Gaussian log-densities.
Every function takes the type's own parameter shape and is pure.
"""

from __future__ import annotations

import numpy as np

from .source import LOG_2PI

#: Supported covariance structures.
COVARIANCE_TYPES = ("full", "tied", "diag", "tied_diag", "spherical", "tied_spherical")
_TIED = frozenset({"tied", "tied_diag", "tied_spherical"})
_MATRIX = frozenset({"full", "tied"})


# --------------------------------------------------------------------------------------
# Shape helpers: expected shapes of the covariance-like arrays per type
# --------------------------------------------------------------------------------------


def _param_shape(cov_type: str, K: int, m: int) -> tuple:
    return {
        "full": (K, m, m),
        "tied": (m, m),
        "diag": (K, m),
        "tied_diag": (m,),
        "spherical": (K,),
        "tied_spherical": (),
    }[cov_type]


# --------------------------------------------------------------------------------------
# Conversions between covariances, precisions and precision factors
# --------------------------------------------------------------------------------------


def _cov_to_prec_chol(cov: np.ndarray, cov_type: str) -> np.ndarray:
    """Precision factor P (Λ = P Pᵀ, upper triangular for matrix types) from covariances."""
    msg = ("LabelledGMM: a fitted covariance is not positive definite (a component "
           "collapsed onto too few or identical points); increase reg_covar, lower the "
           "number of components, or scale the features.")
    if cov_type in _MATRIX:
        mats = cov[None] if cov_type == "tied" else cov
        if not np.all(np.isfinite(mats)):
            raise ValueError(msg)
        try:
            chol = np.linalg.cholesky(mats)  # batched; Σ = C Cᵀ, C lower
        except np.linalg.LinAlgError:
            raise ValueError(msg) from None
        # P = C⁻ᵀ (upper triangular) so that P Pᵀ = C⁻ᵀ C⁻¹ = Σ⁻¹ = Λ.
        eye = np.broadcast_to(np.eye(mats.shape[-1]), mats.shape)
        out = np.swapaxes(np.linalg.solve(chol, eye), -1, -2)
        return out[0] if cov_type == "tied" else out
    if np.any(cov <= 0.0) or not np.all(np.isfinite(cov)):
        raise ValueError(msg)
    return 1.0 / np.sqrt(cov)


def _prec_to_prec_chol(prec: np.ndarray, cov_type: str) -> np.ndarray:
    """Precision factor from precisions (lower Cholesky for matrix types)."""
    if cov_type in _MATRIX:
        mats = prec[None] if cov_type == "tied" else prec
        if not np.allclose(mats, np.swapaxes(mats, -1, -2), rtol=1e-10, atol=0.0):
            raise np.linalg.LinAlgError("precision matrix is not symmetric")
        out = np.linalg.cholesky(mats)  # LinAlgError handled by callers
        return out[0] if cov_type == "tied" else out
    if np.any(prec <= 0.0):
        raise np.linalg.LinAlgError("non-positive precision")
    return np.sqrt(prec)


def _prec_chol_to_prec(prec_chol: np.ndarray, cov_type: str) -> np.ndarray:
    if cov_type == "full":
        return np.einsum("kij,klj->kil", prec_chol, prec_chol)
    if cov_type == "tied":
        return prec_chol @ prec_chol.T
    return prec_chol**2


def _prec_chol_to_cov(prec_chol: np.ndarray, cov_type: str) -> np.ndarray:
    if cov_type in _MATRIX:
        mats = prec_chol[None] if cov_type == "tied" else prec_chol
        out = np.empty_like(mats)
        for k, p in enumerate(mats):
            # Σ = (P Pᵀ)⁻¹ = P⁻ᵀ P⁻¹, through a triangular-agnostic solve.
            pinv = np.linalg.solve(p, np.eye(p.shape[0]))
            out[k] = pinv.T @ pinv
        return out[0] if cov_type == "tied" else out
    return 1.0 / prec_chol**2


def _diag_factor(prec_chol: np.ndarray, cov_type: str, K: int, m: int) -> np.ndarray:
    """Per-component diagonal precision factors, shape (K, m), for the diagonal types."""
    if cov_type == "diag":
        return prec_chol
    if cov_type == "spherical":
        return np.repeat(prec_chol[:, None], m, axis=1)
    if cov_type == "tied_diag":
        return np.broadcast_to(prec_chol, (K, m))
    return np.full((K, m), float(prec_chol))  # tied_spherical


def _matrix_factors(prec_chol: np.ndarray, cov_type: str, K: int, m: int) -> np.ndarray:
    """Every type's precision factor expanded to (K, m, m)."""
    if cov_type == "full":
        return prec_chol.copy()
    if cov_type == "tied":
        return np.repeat(prec_chol[None], K, axis=0)
    d = _diag_factor(prec_chol, cov_type, K, m)
    out = np.zeros((K, m, m))
    idx = np.arange(m)
    out[:, idx, idx] = d
    return out


def _log_det_prec(prec_chol: np.ndarray, cov_type: str, K: int, m: int) -> np.ndarray:
    """Log det Λ_k per component, from the diagonal of the (triangular) factors."""
    if cov_type in _MATRIX:
        mats = prec_chol[None] if cov_type == "tied" else prec_chol
        ld = 2.0 * np.log(np.abs(np.diagonal(mats, axis1=1, axis2=2))).sum(axis=1)
        return np.broadcast_to(ld, (K,)).copy()
    return 2.0 * np.log(_diag_factor(prec_chol, cov_type, K, m)).sum(axis=1)


# --------------------------------------------------------------------------------------
# Probabilities (row-wise, log space)
# --------------------------------------------------------------------------------------


def _log_gauss(X: np.ndarray, means: np.ndarray, prec_chol: np.ndarray,
               cov_type: str) -> np.ndarray:
    """Log N(x_j | μ_k, Λ_k⁻¹), shape (N, K); every row is computed on its own."""
    N, m = X.shape
    K = means.shape[0]
    maha = np.empty((N, K))
    if cov_type in _MATRIX:
        for k in range(K):
            P = prec_chol[k] if cov_type == "full" else prec_chol
            y = (X - means[k]) @ P
            maha[:, k] = np.einsum("ij,ij->i", y, y)
    else:
        D = _diag_factor(prec_chol, cov_type, K, m)
        for k in range(K):
            y = (X - means[k]) * D[k]
            maha[:, k] = np.einsum("ij,ij->i", y, y)
    half_logdet = 0.5 * _log_det_prec(prec_chol, cov_type, K, m)
    return -0.5 * (m * LOG_2PI + maha) + half_logdet
