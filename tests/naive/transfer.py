"""Plain-numpy twins of the transfer-EM kernels and of a whole transfer-EM fit.

Slow and obvious on purpose: no numba, no gathering of rows, no Cholesky
tricks. Conventions as in emtl_stream.kernels.estep / mstep.
"""

from __future__ import annotations

import numpy as np

LOG_2PI = np.log(2.0 * np.pi)


# ----------------------------------------------------------------- linalg
def logsumexp_row(v):
    v = np.asarray(v, float)
    if np.isnan(v).any():
        return np.nan
    if v.size == 0 or np.all(v == -np.inf):
        return -np.inf
    if np.any(v == np.inf):
        return np.inf
    mx = v.max()
    return mx + np.log(np.sum(np.exp(v - mx)))


# ----------------------------------------------------------------- E-step
def log_joint_shared(Y, nu, log_base):
    with np.errstate(invalid="ignore"):
        d2 = ((Y[:, None, :] - nu[None, :, :]) ** 2).sum(-1)
    out = np.where(log_base == -np.inf, -np.inf, log_base - 0.5 * d2)
    out[~np.isfinite(Y).all(1)] = np.nan
    return out


def log_joint_full(Z, means, prec_factor, log_base):
    out = np.empty(log_base.shape)
    for k in range(means.shape[0]):
        Lam = prec_factor[k] @ prec_factor[k].T
        D = Z - means[k]
        with np.errstate(invalid="ignore"):
            out[:, k] = log_base[:, k] - 0.5 * np.einsum("ji,il,jl->j", D, Lam, D)
    out = np.where(log_base == -np.inf, -np.inf, out)
    out[~np.isfinite(Z).all(1)] = np.nan
    return out


def log_responsibilities(log_a):
    ll = np.array([logsumexp_row(r) for r in log_a])
    with np.errstate(invalid="ignore"):
        resp = np.exp(log_a - ll[:, None])
    resp[~np.isfinite(ll)] = np.nan
    return resp, ll


def class_log_posteriors(Z, src):
    """(log P(y|z) (N, L), log p(z) (N,)) from SourceComponents.log_gauss."""
    lj = src.log_gauss(Z) + src.log_weights
    L = src.log_label_given_comp.shape[0]
    joint = np.empty((Z.shape[0], L))
    for l in range(L):
        joint[:, l] = [logsumexp_row(r) for r in lj + src.log_label_given_comp[l]]
    norm = np.array([logsumexp_row(r) for r in joint])
    marg = np.array([logsumexp_row(r) for r in lj])
    return joint - norm[:, None], marg


# ----------------------------------------------------------------- M-step
def weighted_stats(Xt, resp):
    C = np.einsum("jk,ja,jb->kab", resp, Xt, Xt)
    c = resp.T @ Xt
    return C, c


def shared_rhs(resp, means, Xt):
    return Xt.T @ (resp @ means)


def kron_assemble(Lam, A):
    # row-major vec: vec(Λ H A) = (Λ ⊗ Aᵀ) vec(H); A is symmetric here.
    return sum(np.kron(Lam[k], A[k].T) for k in range(Lam.shape[0]))


def sylvester_matvec(Lam, A, H):
    return sum(Lam[k] @ H @ A[k] for k in range(Lam.shape[0]))


# ----------------------------------------------------------------- whole fit
def log_base(src, yi):
    m = src.means.shape[1]
    c = src.log_weights + 0.5 * src.log_det_prec - 0.5 * m * LOG_2PI
    base = np.tile(c, (len(yi), 1))
    for j, l in enumerate(yi):
        if l >= 0:
            base[j] = base[j] + src.log_label_given_comp[l]
    return base


def penalised_objective(src, Xt, yi, Ht, H0, lam, n, Pen=None):
    """Penalised mean log-likelihood with Π = Λ̄ = Σ π_k Λ_k unless ``Pen`` is given."""
    Z = Xt @ Ht.T
    lg = src.log_gauss(Z) + log_base(src, yi) - (
        0.5 * src.log_det_prec - 0.5 * src.means.shape[1] * LOG_2PI)
    ll = np.array([logsumexp_row(r) for r in lg])
    pi = np.exp(src.log_weights) / np.exp(src.log_weights).sum()
    Lam_bar = np.einsum("k,kij->ij", pi, src.precisions) if Pen is None else Pen
    Dl = Ht[:, :n] - H0
    return (ll.sum() - 0.5 * lam * np.trace(Dl.T @ Lam_bar @ Dl)) / len(Xt)


def exact_mstep(src, Xt, resp, H0, lam, bias, mask=None, Pen=None):
    """Minimiser of Σ_jk γ_jk‖H x̃_j − μ_k‖²_Λk + λ Σ_k π_k ‖H − H₀‖²_Λk by a dense vec solve.

    With ``mask`` (m, n) only the True entries of H (and the offset column) are free;
    the others are fixed at zero and the vec system is restricted to the free ones.
    With ``Pen`` (m, m) the penalty is λ‖H − H₀‖²_Pen instead of Σ_k π_k‖·‖²_Λk.
    """
    m = src.means.shape[1]
    n1 = Xt.shape[1]
    n = n1 - 1 if bias else n1
    Dm = np.eye(n1)
    if bias:
        Dm[-1, -1] = 0.0
    H0t = np.zeros((m, n1))
    H0t[:, :n] = H0
    pi = np.exp(src.log_weights) / np.exp(src.log_weights).sum()
    Lams = src.precisions
    S = np.zeros((m * n1, m * n1))
    R = np.zeros((m, n1))
    for k in range(len(pi)):
        Ck = (Xt * resp[:, k:k + 1]).T @ Xt
        ck = resp[:, k] @ Xt
        w = lam * pi[k] if Pen is None else 0.0
        Ak = Ck + w * Dm
        S += np.kron(Lams[k], Ak)
        R += Lams[k] @ (np.outer(src.means[k], ck) + w * H0t @ Dm)
    if Pen is not None:
        S += lam * np.kron(Pen, Dm)
        R += lam * Pen @ H0t @ Dm
    if mask is None:
        return np.linalg.solve(S, R.ravel()).reshape(m, n1)
    Mt = np.ones((m, n1), bool)
    Mt[:, :n] = mask
    fr = Mt.ravel()
    out = np.zeros(m * n1)
    out[fr] = np.linalg.solve(S[np.ix_(fr, fr)], R.ravel()[fr])
    return out.reshape(m, n1)


def masked_sylvester_matvec(Lam, A, H, mask):
    return mask * sylvester_matvec(Lam, A, mask * H)


def transfer_em(src, X, yi, H_start, H0, lam, bias=False, n_iter=5, mask=None, Pen=None):
    """Plain EM: exact per-component M-step; returns (H̃ (m, n'), trace)."""
    Xt = np.hstack([X, np.ones((len(X), 1))]) if bias else X
    n = X.shape[1]
    Ht = np.zeros((src.means.shape[1], Xt.shape[1]))
    Ht[:, :n] = H_start
    base = log_base(src, yi)
    trace = []
    for _ in range(n_iter):
        trace.append(penalised_objective(src, Xt, yi, Ht, H0, lam, n, Pen))
        Z = Xt @ Ht.T
        la = src.log_gauss(Z) + base - (0.5 * src.log_det_prec - 0.5 * src.means.shape[1] * LOG_2PI)
        resp, _ = log_responsibilities(la)
        Ht = exact_mstep(src, Xt, resp, H0, lam, bias, mask, Pen)
    trace.append(penalised_objective(src, Xt, yi, Ht, H0, lam, n, Pen))
    return Ht, trace


# ----------------------------------------------------------------- one window
def row_class_log_posterior(lj, log_rho):
    """(log P(y = l | z) (L,), log p(z)) from component log joints ``lj`` (K,).

    A ``-inf`` in ``log_rho`` excludes the pair (label, component) whatever ``lj`` is.
    """
    with np.errstate(invalid="ignore"):
        joint = np.array([logsumexp_row(np.where(r == -np.inf, -np.inf, lj + r))
                          for r in log_rho])
        return joint - logsumexp_row(joint), logsumexp_row(lj)


def row_log_joint(z, means, precisions, log_c):
    """log_c[k] − ½ (z − μ_k)ᵀ Λ_k (z − μ_k) for one mapped window z (m,)."""
    D = z[None, :] - means
    return log_c - 0.5 * np.einsum("ki,kil,kl->k", D, precisions, D)


# ----------------------------------------------------------------- fused shared EM
def em_shared(Xt, Ht, H0t, Lam, means, log_base, lam, n_pen, tol, max_iter):
    """Shared-precision transfer EM, written out: returns (H̃, trace, n_iter, status).

    Same conventions as ``mstep.em_shared`` (objective, stopping rule, status codes),
    but the E-step uses Λ itself instead of whitened data and the M-step solves
    (X̃ᵀX̃ + λD) H̃ᵀ = X̃ᵀΓM + λH̃₀ᵀ with ``np.linalg.solve``.
    """
    N, n1 = Xt.shape
    D = np.diag([1.0] * n_pen + [0.0] * (n1 - n_pen))
    A = Xt.T @ Xt + lam * D
    Ht = np.array(Ht, float)
    trace = []
    n_iter = 0
    while True:
        Z = Xt @ Ht.T
        Dz = Z[:, None, :] - means[None, :, :]
        with np.errstate(invalid="ignore"):
            la = np.where(log_base == -np.inf, -np.inf,
                          log_base - 0.5 * np.einsum("jki,il,jkl->jk", Dz, Lam, Dz))
        resp, ll = log_responsibilities(la)
        Dl = Ht[:, :n_pen] - H0t[:, :n_pen]
        obj = (ll.sum() - 0.5 * lam * np.trace(Dl.T @ Lam @ Dl)) / N
        trace.append(obj)
        if not np.isfinite(obj):
            return Ht, trace, n_iter, -1
        if len(trace) > 1 and abs(obj - trace[-2]) <= tol * max(1.0, abs(trace[-2])):
            return Ht, trace, n_iter, 1
        if n_iter >= max_iter:
            return Ht, trace, n_iter, 0
        Hn = np.linalg.solve(A, Xt.T @ (resp @ means) + lam * H0t.T).T
        n_iter += 1
        if not np.isfinite(Hn).all():
            return Ht, trace, n_iter, -2
        Ht = Hn
