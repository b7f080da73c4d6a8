"""E-step and classification kernels: mapped log-joints and per-row log-sum-exp.

Everything is in log space and normalised **per row** (per point), never per
component across the batch (the reference's W1-W3), so a row's result never
depends on the other rows.

Shapes: N rows, K components, m source features, L classes.

NaN/inf policy: a NaN or ±inf anywhere in a row of the mapped data makes every
output of that row NaN (explicitly, not by accident of BLAS arithmetic); other
rows are untouched. Otherwise an entry whose prior term is ``-inf`` (a label the
component cannot carry) stays ``-inf`` without computing its distance.
"""

from __future__ import annotations

import math

import numpy as np

from ._jit import F1, F2, F3, kernel
from .linalg import logsumexp_row


@kernel(f"boolean({F1})")
def _row_finite(v):
    """Return True when every entry of v is finite."""
    for i in range(v.shape[0]):
        x = v[i]
        if not (x - x == 0.0):
            return False
    return True


@kernel(f"void({F2}, {F2}, {F2}, {F2})")
def log_joint_shared(Y, nu, log_base, out):
    """out[j, k] = log_base[j, k] − ½‖y_j − ν_k‖² for a shared precision Λ = P Pᵀ.

    Parameters
    ----------
    Y : ndarray of shape (N, m)
        Whitened mapped data, ``(X̃ H̃ᵀ) @ P``.
    nu : ndarray of shape (K, m)
        Whitened means, ``means @ P``.
    log_base : ndarray of shape (N, K)
        Per-row constant terms (log prior, label term, ½ log det Λ, −½ m log 2π).
    out : ndarray of shape (N, K)
        Written in place.
    """
    N, m = Y.shape
    K = nu.shape[0]
    for j in range(N):
        if not _row_finite(Y[j]):
            out[j, :] = np.nan
            continue
        for k in range(K):
            base = log_base[j, k]
            if base == -np.inf:
                out[j, k] = -np.inf
                continue
            s = 0.0
            for i in range(m):
                d = Y[j, i] - nu[k, i]
                s += d * d
            out[j, k] = base - 0.5 * s


@kernel(f"void({F2}, {F2}, {F3}, {F2}, {F2})")
def log_joint_full(Z, means, prec_factor, log_base, out):
    """out[j, k] = log_base[j, k] − ½‖(z_j − μ_k) P_k‖² for per-component precisions.

    Each component only processes the rows whose ``log_base`` is finite (crisp
    labels make most pairs impossible), through one BLAS product per component.

    Parameters
    ----------
    Z : ndarray of shape (N, m)
        Mapped data ``X̃ H̃ᵀ``.
    means : ndarray of shape (K, m)
    prec_factor : ndarray of shape (K, m, m)
        Λ_k = P_k P_kᵀ.
    log_base : ndarray of shape (N, K)
    out : ndarray of shape (N, K)
        Written in place.
    """
    N, m = Z.shape
    K = means.shape[0]
    rows = np.empty(N, dtype=np.int64)
    D = np.empty((N, m))
    Y = np.empty((N, m))
    finite = np.empty(N, dtype=np.bool_)
    for j in range(N):
        finite[j] = _row_finite(Z[j])
    for k in range(K):
        cnt = 0
        for j in range(N):
            if not finite[j]:
                out[j, k] = np.nan
            elif log_base[j, k] == -np.inf:
                out[j, k] = -np.inf
            else:
                rows[cnt] = j
                for i in range(m):
                    D[cnt, i] = Z[j, i] - means[k, i]
                cnt += 1
        if cnt == 0:
            continue
        Dk = D[:cnt]
        Yk = Y[:cnt]
        np.dot(Dk, prec_factor[k], Yk)
        for r in range(cnt):
            s = 0.0
            for i in range(m):
                s += Yk[r, i] * Yk[r, i]
            out[rows[r], k] = log_base[rows[r], k] - 0.5 * s


@kernel(f"{F1}({F2}, {F2})")
def log_responsibilities(log_a, resp):
    """Per-row log-sum-exp and responsibilities γ_jk = exp(log a_jk − lse_j).

    Parameters
    ----------
    log_a : ndarray of shape (N, K)
        Log joints from :func:`log_joint_shared` / :func:`log_joint_full`.
    resp : ndarray of shape (N, K)
        Written in place. A row whose log-sum-exp is NaN or ``-inf`` gets NaN.

    Returns
    -------
    ll : ndarray of shape (N,)
        Per-row log-likelihood lse_j.
    """
    N, K = log_a.shape
    ll = np.empty(N)
    for j in range(N):
        lse = logsumexp_row(log_a[j])
        ll[j] = lse
        if not (lse > -np.inf and lse < np.inf):
            for k in range(K):
                resp[j, k] = np.nan
            continue
        for k in range(K):
            v = log_a[j, k]
            resp[j, k] = 0.0 if v == -np.inf else math.exp(v - lse)
    return ll


# ---------------------------------------------------------------------------
# classification of mapped windows (daemon hot path); one row at a time
# ---------------------------------------------------------------------------


@kernel(f"void({F1}, {F2}, {F1}, {F2}, {F1}, {F1}, {F1})")
def row_log_joint_shared(x, G, g, nu, log_c, ybuf, out):
    """Log joint of one window with every component, shared precision.

    out[k] = log_c[k] − ½‖G x + g − ν_k‖² where G = Pᵀ H, g = Pᵀ b, ν = means @ P.
    A NaN or ±inf in x leaves no entry of ``out`` finite (NaN or ``-inf``), which
    :func:`row_class_log_posterior` turns into a NaN posterior.

    Parameters
    ----------
    x : ndarray of shape (n,)
    G : ndarray of shape (m, n)
    g : ndarray of shape (m,)
    nu : ndarray of shape (K, m)
    log_c : ndarray of shape (K,)
        log π_k + ½ log det Λ − ½ m log 2π.
    ybuf : ndarray of shape (m,)
        Scratch.
    out : ndarray of shape (K,)
    """
    m, n = G.shape
    for i in range(m):
        s = g[i]
        for a in range(n):
            s += G[i, a] * x[a]
        ybuf[i] = s
    for k in range(nu.shape[0]):
        s = 0.0
        for i in range(m):
            d = ybuf[i] - nu[k, i]
            s += d * d
        out[k] = log_c[k] - 0.5 * s


@kernel(f"void({F1}, {F2}, {F1}, {F2}, {F3}, {F1}, {F1}, {F1}, {F1})")
def row_log_joint_full(x, H, b, means, prec_factor, log_c, zbuf, dbuf, out):
    """Log joint of one window with every component, per-component precisions.

    out[k] = log_c[k] − ½‖(H x + b − μ_k) P_k‖².
    A NaN or ±inf in x leaves no entry of ``out`` finite, as for
    :func:`row_log_joint_shared`.

    Parameters
    ----------
    x : ndarray of shape (n,)
    H : ndarray of shape (m, n)
    b : ndarray of shape (m,)
    means : ndarray of shape (K, m)
    prec_factor : ndarray of shape (K, m, m)
    log_c : ndarray of shape (K,)
        log π_k + ½ log det Λ_k − ½ m log 2π.
    zbuf, dbuf : ndarray of shape (m,)
        Scratch.
    out : ndarray of shape (K,)
    """
    m, n = H.shape
    for i in range(m):
        s = b[i]
        for a in range(n):
            s += H[i, a] * x[a]
        zbuf[i] = s
    for k in range(means.shape[0]):
        for i in range(m):
            dbuf[i] = zbuf[i] - means[k, i]
        s = 0.0
        P = prec_factor[k]
        for c in range(m):
            t = 0.0
            for i in range(m):
                t += dbuf[i] * P[i, c]
            s += t * t
        out[k] = log_c[k] - 0.5 * s


@kernel(f"float64({F1}, {F2}, {F1}, {F1})")
def row_class_log_posterior(lj, log_rho, tbuf, out):
    """Class log-posteriors of one window from its component log joints.

    Parameters
    ----------
    lj : ndarray of shape (K,)
        log π_k + log N(z | μ_k, Λ_k⁻¹).
    log_rho : ndarray of shape (L, K)
        log P(y = l | k), ``-inf`` for impossible labels.
    tbuf : ndarray of shape (K,)
        Scratch.
    out : ndarray of shape (L,)
        log P(y = l | z), normalised over classes.

    Returns
    -------
    float
        log p(z) = logsumexp_k lj[k] (the source-model marginal).
    """
    L, K = log_rho.shape
    for l in range(L):
        for k in range(K):
            r = log_rho[l, k]
            tbuf[k] = -np.inf if r == -np.inf else lj[k] + r
        out[l] = logsumexp_row(tbuf)
    norm = logsumexp_row(out)
    for l in range(L):
        out[l] = out[l] - norm
    return logsumexp_row(lj)


@kernel(f"{F1}({F2}, {F2}, {F1}, {F2}, {F1}, {F2}, {F2})")
def mapped_log_posteriors_shared(X, G, g, nu, log_c, log_rho, out):
    """Batch version of :func:`row_log_joint_shared` + :func:`row_class_log_posterior`.

    Parameters
    ----------
    X : ndarray of shape (N, n)
    G, g, nu, log_c : see :func:`row_log_joint_shared`
    log_rho : ndarray of shape (L, K)
    out : ndarray of shape (N, L)
        Class log-posteriors, written in place.

    Returns
    -------
    ndarray of shape (N,)
        log p(H x_j + b) under the source mixture.
    """
    N = X.shape[0]
    K = nu.shape[0]
    ybuf = np.empty(G.shape[0])
    lj = np.empty(K)
    tbuf = np.empty(K)
    marg = np.empty(N)
    for j in range(N):
        row_log_joint_shared(X[j], G, g, nu, log_c, ybuf, lj)
        marg[j] = row_class_log_posterior(lj, log_rho, tbuf, out[j])
    return marg


@kernel(f"{F1}({F2}, {F2}, {F1}, {F2}, {F3}, {F1}, {F2}, {F2})")
def mapped_log_posteriors_full(X, H, b, means, prec_factor, log_c, log_rho, out):
    """Batch version of :func:`row_log_joint_full` + :func:`row_class_log_posterior`.

    Parameters
    ----------
    X : ndarray of shape (N, n)
    H, b, means, prec_factor, log_c : see :func:`row_log_joint_full`
    log_rho : ndarray of shape (L, K)
    out : ndarray of shape (N, L)
        Class log-posteriors, written in place.

    Returns
    -------
    ndarray of shape (N,)
        log p(H x_j + b) under the source mixture.
    """
    N = X.shape[0]
    m = H.shape[0]
    K = means.shape[0]
    zbuf = np.empty(m)
    dbuf = np.empty(m)
    lj = np.empty(K)
    tbuf = np.empty(K)
    marg = np.empty(N)
    for j in range(N):
        row_log_joint_full(X[j], H, b, means, prec_factor, log_c, zbuf, dbuf, lj)
        marg[j] = row_class_log_posterior(lj, log_rho, tbuf, out[j])
    return marg


@kernel(f"int64({F1})")
def _exp_argmax(logp):
    """Exponentiate in place and return the index of the largest entry (−1 on NaN)."""
    best = -1
    bv = -np.inf
    for l in range(logp.shape[0]):
        v = logp[l]
        if v != v:
            for q in range(logp.shape[0]):
                logp[q] = np.nan
            return -1
        if best < 0 or v > bv:
            best = l
            bv = v
    for l in range(logp.shape[0]):
        logp[l] = math.exp(logp[l])
    return best


@kernel(f"int64({F1}, {F2}, {F1}, {F2}, {F1}, {F2}, {F1}, {F1}, {F1}, {F1})")
def classify_one_shared(x, G, g, nu, log_c, log_rho, ybuf, lj, tbuf, proba):
    """Classify one window (shared precision); fills ``proba``, returns the argmax.

    All buffers are preallocated by the caller so the call allocates nothing.

    Parameters
    ----------
    x, G, g, nu, log_c : see :func:`row_log_joint_shared`
    log_rho : ndarray of shape (L, K)
        log P(y = l | k), ``-inf`` for impossible labels.
    ybuf : ndarray of shape (m,)
        Scratch.
    lj, tbuf : ndarray of shape (K,)
        Scratch.
    proba : ndarray of shape (L,)
        Class probabilities, written in place (NaN for a non-finite window).

    Returns
    -------
    int
        Index of the most probable class, −1 when the posterior is NaN
        (non-finite input).
    """
    row_log_joint_shared(x, G, g, nu, log_c, ybuf, lj)
    row_class_log_posterior(lj, log_rho, tbuf, proba)
    return _exp_argmax(proba)


@kernel(f"int64({F1}, {F2}, {F1}, {F2}, {F3}, {F1}, {F2}, {F1}, {F1}, {F1}, {F1}, {F1})")
def classify_one_full(x, H, b, means, prec_factor, log_c, log_rho, zbuf, dbuf, lj, tbuf, proba):
    """Classify one window (per-component precisions); fills ``proba``, returns the argmax.

    All buffers are preallocated by the caller so the call allocates nothing.

    Parameters
    ----------
    x, H, b, means, prec_factor, log_c : see :func:`row_log_joint_full`
    log_rho : ndarray of shape (L, K)
        log P(y = l | k), ``-inf`` for impossible labels.
    zbuf, dbuf : ndarray of shape (m,)
        Scratch.
    lj, tbuf : ndarray of shape (K,)
        Scratch.
    proba : ndarray of shape (L,)
        Class probabilities, written in place (NaN for a non-finite window).

    Returns
    -------
    int
        Index of the most probable class, −1 when the posterior is NaN
        (non-finite input).
    """
    row_log_joint_full(x, H, b, means, prec_factor, log_c, zbuf, dbuf, lj)
    row_class_log_posterior(lj, log_rho, tbuf, proba)
    return _exp_argmax(proba)
