"""Small dense linear-algebra and log-space helpers written for nopython mode.

The transfer and classification kernels call these from inside other kernels, so
they avoid Python objects and allocate only where the docstring says so.

NaN handling: :func:`logsumexp_row` returns NaN when any entry is NaN and
``-inf`` when every entry is ``-inf``; nothing is silently dropped.
"""

from __future__ import annotations

import math

import numpy as np

from ._jit import F1, F2, kernel


@kernel(f"float64({F1})")
def logsumexp_row(v):
    """Compute log Σ_i exp(v_i), shifted by the row maximum.

    Parameters
    ----------
    v : ndarray of shape (n,)

    Returns
    -------
    float
        NaN if any entry is NaN; ``-inf`` if all entries are ``-inf`` (or n = 0);
        ``+inf`` if any entry is ``+inf``.
    """
    mx = -np.inf
    for i in range(v.shape[0]):
        x = v[i]
        if x != x:
            return np.nan
        if x > mx:
            mx = x
    if mx == -np.inf:
        return -np.inf
    if mx == np.inf:
        return np.inf
    s = 0.0
    for i in range(v.shape[0]):
        if v[i] != -np.inf:  # exp(-inf) = 0: skip the call (crisp labels make most entries -inf)
            s += math.exp(v[i] - mx)
    return mx + math.log(s)


@kernel(f"{F2}({F2})")
def cholesky_lower(A):
    """Lower Cholesky factor L with A = L Lᵀ (A symmetric positive definite).

    Parameters
    ----------
    A : ndarray of shape (n, n)

    Returns
    -------
    L : ndarray of shape (n, n)
        New array. Rows from the first non-positive pivot on are NaN, so a
        caller detects failure with ``np.isfinite(L[-1, -1])``.
    """
    n = A.shape[0]
    L = np.zeros((n, n))
    for j in range(n):
        s = A[j, j]
        for p in range(j):
            s -= L[j, p] * L[j, p]
        if not s > 0.0:
            for i in range(j, n):
                for p in range(n):
                    L[i, p] = np.nan
            return L
        d = math.sqrt(s)
        L[j, j] = d
        for i in range(j + 1, n):
            t = A[i, j]
            for p in range(j):
                t -= L[i, p] * L[j, p]
            L[i, j] = t / d
    return L


@kernel(f"void({F2}, {F2})")
def cho_solve_inplace(L, B):
    """Overwrite B (n, r) with A⁻¹ B where A = L Lᵀ (forward then back substitution).

    Parameters
    ----------
    L : ndarray of shape (n, n)
        Lower Cholesky factor from :func:`cholesky_lower`.
    B : ndarray of shape (n, r)
        Right-hand sides; overwritten with the solution.
    """
    n = L.shape[0]
    r = B.shape[1]
    for c in range(r):
        for i in range(n):
            t = B[i, c]
            for p in range(i):
                t -= L[i, p] * B[p, c]
            B[i, c] = t / L[i, i]
        for i in range(n - 1, -1, -1):
            t = B[i, c]
            for p in range(i + 1, n):
                t -= L[p, i] * B[p, c]
            B[i, c] = t / L[i, i]


@kernel(f"{F2}({F2})")
def spd_inverse(A):
    """Inverse of a symmetric positive-definite matrix through its Cholesky factor.

    Parameters
    ----------
    A : ndarray of shape (n, n)

    Returns
    -------
    ndarray of shape (n, n)
        All NaN when A is not numerically positive definite.
    """
    n = A.shape[0]
    L = cholesky_lower(A)
    out = np.eye(n)
    if n > 0 and not np.isfinite(L[n - 1, n - 1]):
        out[:, :] = np.nan
        return out
    cho_solve_inplace(L, out)
    return out
