"""M-step kernels: sufficient statistics, right-hand sides, Sylvester operator and CG.

The shared closed-form right-hand side, and the per-component Sylvester operator
with its preconditioned CG solver.

Notation (algorithm.md §2): X̃ (N, n') calibration rows (n' = n + 1 with an
offset column), Γ (N, K) responsibilities, H̃ (m, n') the map, Λ_k (m, m) the
component precisions, A_k = C_k + λ_k D (n', n') with C_k = Σ_j γ_jk x̃_j x̃_jᵀ.

The per-component M-step solves the generalised Sylvester equation
``Σ_k Λ_k H̃ A_k = R``; with H̃ flattened row-major this is ``S vec(H̃) = vec(R)``,
``S = Σ_k Λ_k ⊗ A_k`` (symmetric positive definite).

Inputs are trusted (finite, right shapes); the wrappers in
:mod:`emtl_stream.model.transfer` validate.
"""

from __future__ import annotations

import math

import numpy as np

from ._jit import F1, F2, F3, I1, kernel
from .estep import log_joint_shared, log_responsibilities


@kernel(f"void({F2}, {F2}, {F3}, {F2})")
def weighted_stats(Xt, resp, C, c):
    """C_k = Σ_j γ_jk x̃_j x̃_jᵀ and c_k = Σ_j γ_jk x̃_j.

    Only rows with γ_jk > 0 enter component k (crisp labels zero most pairs), one
    BLAS product per component.

    Parameters
    ----------
    Xt : ndarray of shape (N, n')
    resp : ndarray of shape (N, K)
    C : ndarray of shape (K, n', n')
        Written in place.
    c : ndarray of shape (K, n')
        Written in place.
    """
    N, n = Xt.shape
    K = resp.shape[1]
    G = np.empty((N, n))
    W = np.empty((N, n))
    for k in range(K):
        cnt = 0
        for a in range(n):
            c[k, a] = 0.0
        for j in range(N):
            r = resp[j, k]
            if r > 0.0:
                for a in range(n):
                    v = Xt[j, a]
                    G[cnt, a] = v
                    W[cnt, a] = r * v
                    c[k, a] += r * v
                cnt += 1
        if cnt == 0:
            C[k, :, :] = 0.0
            continue
        np.dot(W[:cnt].T, G[:cnt], C[k])


@kernel(f"void({F2}, {F2}, {F2}, {F2})")
def shared_rhs(resp, means, Xt, out):
    """Compute out = X̃ᵀ (Γ M), the data part of the shared closed-form update's right side.

    The shared M-step is H̃ᵀ = (X̃ᵀX̃ + λD)⁻¹ (X̃ᵀ Γ M + λ D H̃₀ᵀ).

    Parameters
    ----------
    resp : ndarray of shape (N, K)
    means : ndarray of shape (K, m)
    Xt : ndarray of shape (N, n')
    out : ndarray of shape (n', m)
        Written in place.
    """
    T = np.dot(resp, means)
    np.dot(Xt.T, T, out)


@kernel(f"void({F3}, {F3}, {F2})")
def kron_assemble(Lam, A, S):
    """S = Σ_k Λ_k ⊗ A_k, the Sylvester operator on row-major vec(H̃).

    Parameters
    ----------
    Lam : ndarray of shape (K, m, m)
    A : ndarray of shape (K, n', n')
    S : ndarray of shape (m·n', m·n')
        Written in place.
    """
    K, m, _ = Lam.shape
    n = A.shape[1]
    S[:, :] = 0.0
    for k in range(K):
        for i in range(m):
            for jj in range(m):
                lij = Lam[k, i, jj]
                if lij == 0.0:
                    continue
                for a in range(n):
                    row = i * n + a
                    for b in range(n):
                        S[row, jj * n + b] += lij * A[k, a, b]


@kernel(f"void({F3}, {F3}, {F2}, {F2}, {F2})")
def sylvester_matvec(Lam, A, H, tmp, out):
    """Compute out = Σ_k Λ_k H A_k (matrix form of S vec(H)).

    Parameters
    ----------
    Lam : ndarray of shape (K, m, m)
    A : ndarray of shape (K, n', n')
    H : ndarray of shape (m, n')
    tmp : ndarray of shape (m, n')
        Scratch.
    out : ndarray of shape (m, n')
        Written in place.
    """
    K = Lam.shape[0]
    out[:, :] = 0.0
    for k in range(K):
        np.dot(Lam[k], H, tmp)
        out += np.dot(tmp, A[k])


# ---------------------------------------------------------------------------
# structured maps: only the entries of H̃ where a mask is True are free
# ---------------------------------------------------------------------------


@kernel(f"void({F3}, {F3}, {I1}, {I1}, {F2})")
def kron_assemble_masked(Lam, A, fi, fa, S):
    """S = (Σ_k Λ_k ⊗ A_k) restricted to the free entries of H̃.

    The free entries are (fi[u], fa[u]), u = 0..p−1 (row, column of H̃), so
    ``S[u, v] = Σ_k Λ_k[fi[u], fi[v]] A_k[fa[u], fa[v]]``.

    Parameters
    ----------
    Lam : ndarray of shape (K, m, m)
    A : ndarray of shape (K, n', n')
    fi, fa : ndarray of shape (p,), int64
    S : ndarray of shape (p, p)
        Written in place.
    """
    K = Lam.shape[0]
    p = fi.shape[0]
    for u in range(p):
        iu = fi[u]
        au = fa[u]
        for v in range(u + 1):
            iv = fi[v]
            av = fa[v]
            s = 0.0
            for k in range(K):
                s += Lam[k, iu, iv] * A[k, au, av]
            S[u, v] = s
            S[v, u] = s


@kernel()
def _pcg(Lam, A, R, Pl, Pr, Mask, masked, H, rtol, maxiter):
    """Run the one CG iteration behind :func:`pcg_sylvester` and the masked solver.

    ``masked`` False skips every product with ``Mask`` (multiplying by an all-one mask
    is exact, so the result is the same bit for bit; multiplying anyway cost 2-4 % of a
    dense solve, docs/benchmarks.md "One CG kernel"). Products with the mask are taken
    in place, so an iteration allocates the same arrays either way.
    """
    m, n = H.shape
    tmp = np.empty((m, n))
    SH = np.empty((m, n))
    if masked:
        H *= Mask
    sylvester_matvec(Lam, A, H, tmp, SH)
    res = R - SH
    if masked:
        res *= Mask
        rnorm = math.sqrt(np.sum((Mask * R) ** 2))
    else:
        rnorm = math.sqrt(np.sum(R * R))
    if rnorm == 0.0:
        rnorm = 1.0
    rr = math.sqrt(np.sum(res * res))
    if rr <= rtol * rnorm:
        return 0.0, rr / rnorm
    zz = np.dot(np.dot(Pl, res), Pr)
    if masked:
        zz *= Mask
    p = zz.copy()
    rz = np.sum(res * zz)
    Sp = np.empty((m, n))
    it = 0
    while it < maxiter:
        it += 1
        sylvester_matvec(Lam, A, p, tmp, Sp)
        if masked:
            Sp *= Mask
        denom = np.sum(p * Sp)
        if not denom > 0.0:
            break
        alpha = rz / denom
        H += alpha * p
        res -= alpha * Sp
        rr = math.sqrt(np.sum(res * res))
        if rr <= rtol * rnorm:
            break
        zz = np.dot(np.dot(Pl, res), Pr)
        if masked:
            zz *= Mask
        rz_new = np.sum(res * zz)
        beta = rz_new / rz
        rz = rz_new
        p = zz + beta * p
    return float(it), rr / rnorm


@kernel(f"UniTuple(float64, 2)({F3}, {F3}, {F2}, {F2}, {F2}, {F2}, {F2}, float64, int64)")
def pcg_sylvester_masked(Lam, A, R, Pl, Pr, Mask, H, rtol, maxiter):
    """Preconditioned CG for the masked system M ⊙ Σ_k Λ_k (M ⊙ H) A_k = M ⊙ R.

    The operator is S restricted to the free entries (a principal submatrix of an
    SPD matrix, hence SPD); the preconditioner H ↦ M ⊙ (Pl (M ⊙ H) Pr) is the same
    restriction of the SPD Kronecker approximation, hence SPD too. Masked-out
    entries of H stay exactly zero. Same iteration as :func:`pcg_sylvester` (one
    implementation; a dense map is the all-free mask).

    Parameters
    ----------
    Lam : ndarray of shape (K, m, m)
    A : ndarray of shape (K, n', n')
    R : ndarray of shape (m, n')
    Pl : ndarray of shape (m, m)
        Symmetric positive definite.
    Pr : ndarray of shape (n', n')
        Symmetric positive definite.
    Mask : ndarray of shape (m, n')
        1.0 for a free entry, 0.0 for an entry fixed at zero.
    H : ndarray of shape (m, n')
        Initial guess (masked in place first); overwritten with the solution.
    rtol : float
        Stop when ‖M ⊙ (R − S H)‖_F ≤ rtol ‖M ⊙ R‖_F.
    maxiter : int
        Most CG iterations.

    Returns
    -------
    (n_iter, relative_residual) : tuple of float
    """
    return _pcg(Lam, A, R, Pl, Pr, Mask, True, H, rtol, maxiter)


@kernel(f"UniTuple(float64, 2)({F3}, {F3}, {F2}, {F2}, {F2}, {F2}, float64, int64)")
def pcg_sylvester(Lam, A, R, Pl, Pr, H, rtol, maxiter):
    """Preconditioned conjugate gradients for Σ_k Λ_k H A_k = R, in matrix form.

    Starts from the H passed in (warm start) and overwrites it. Every iterate
    lowers the quadratic ½⟨H, S H⟩ − ⟨R, H⟩, so even a truncated solve never
    lowers the EM objective. Preconditioner: H ↦ Pl H Pr with Pl ≈ Λ̄⁻¹ and
    Pr ≈ Ā⁻¹ (a Kronecker-factored approximation of S⁻¹). The iteration is the
    one of :func:`pcg_sylvester_masked` with every entry free.

    Parameters
    ----------
    Lam : ndarray of shape (K, m, m)
    A : ndarray of shape (K, n', n')
    R : ndarray of shape (m, n')
    Pl : ndarray of shape (m, m)
        Symmetric positive definite.
    Pr : ndarray of shape (n', n')
        Symmetric positive definite.
    H : ndarray of shape (m, n')
        Initial guess; overwritten with the solution.
    rtol : float
        Stop when ‖R − S H‖_F ≤ rtol ‖R‖_F.
    maxiter : int
        Most CG iterations.

    Returns
    -------
    (n_iter, relative_residual) : tuple of float
    """
    return _pcg(Lam, A, R, Pl, Pr, H, False, H, rtol, maxiter)


# ---------------------------------------------------------------------------
# the whole shared-precision EM loop in one call (no Python per iteration)
# ---------------------------------------------------------------------------


@kernel(f"UniTuple(int64, 3)({F2}, {F2}, {F2}, {F2}, {F2}, {F2}, {F2}, {F2}, float64, "
        f"int64, float64, int64, {F1})")
def em_shared(Xt, Ht, H0t, P, nu, log_base, means, Ainv, lam, n_pen, tol, max_iter, trace):
    """Transfer EM for a shared precision Λ = P Pᵀ, dense H̃, penalty λ‖H − H₀‖²_Λ.

    Per iteration: E-step (per-row log-sum-exp), penalised mean log-likelihood,
    convergence test, then the closed-form M-step H̃ᵀ = A⁻¹ (X̃ᵀ Γ M + λ H̃₀ᵀ) with
    A⁻¹ = (X̃ᵀX̃ + λD)⁻¹ computed once by the caller. Same stopping rule as
    :class:`emtl_stream.model.transfer.TransferEM`: stop when
    |obj − prev| ≤ tol · max(1, |prev|) or after ``max_iter`` M-steps.

    Parameters
    ----------
    Xt : ndarray of shape (N, n')
    Ht : ndarray of shape (m, n')
        Start; overwritten with the final map.
    H0t : ndarray of shape (m, n')
        Shrink target (offset column zero).
    P : ndarray of shape (m, m)
        Precision factor, Λ = P Pᵀ.
    nu : ndarray of shape (K, m)
        Whitened means ``means @ P``.
    log_base : ndarray of shape (N, K)
        Per-row constants (see :func:`emtl_stream.kernels.estep.log_joint_shared`).
    means : ndarray of shape (K, m)
    Ainv : ndarray of shape (n', n')
        (X̃ᵀX̃ + λD)⁻¹.
    lam : float
    n_pen : int
        Number of penalised columns n (the offset column n' − 1 is not penalised).
    tol : float
    max_iter : int
    trace : ndarray of shape (max_iter + 1,)
        Penalised mean log-likelihood per iteration, written in place.

    Returns
    -------
    (n_iter, status, n_trace) : tuple of int
        status 1 converged, 0 stopped at max_iter, −1 non-finite objective,
        −2 non-finite M-step.
    """
    N, n1 = Xt.shape
    m = Ht.shape[0]
    K = nu.shape[0]
    log_a = np.empty((N, K))
    resp = np.empty((N, K))
    n_iter = 0
    nt = 0
    prev = 0.0
    while True:
        G = np.dot(Ht.T, P)  # (n', m): Y = X̃ H̃ᵀ P in one product
        Y = np.dot(Xt, G)
        log_joint_shared(Y, nu, log_base, log_a)
        ll = log_responsibilities(log_a, resp)
        s = 0.0
        for j in range(N):
            s += ll[j]
        Dl = Ht[:, :n_pen] - H0t[:, :n_pen]
        Q = np.dot(P.T, Dl)
        pen = 0.0
        for i in range(m):
            for a in range(n_pen):
                pen += Q[i, a] * Q[i, a]
        obj = (s - 0.5 * lam * pen) / N
        if not (obj - obj == 0.0):
            trace[nt] = obj
            return n_iter, -1, nt + 1
        trace[nt] = obj
        nt += 1
        if nt > 1 and abs(obj - prev) <= tol * max(1.0, abs(prev)):
            return n_iter, 1, nt
        if n_iter >= max_iter:
            return n_iter, 0, nt
        prev = obj
        T = np.dot(resp, means)
        rhs = np.dot(Xt.T, T)
        for a in range(n1):
            for i in range(m):
                rhs[a, i] += lam * H0t[i, a]
        Hn = np.dot(Ainv, rhs)  # (n', m) = H̃ᵀ
        for i in range(m):
            for a in range(n1):
                v = Hn[a, i]
                if not (v - v == 0.0):
                    return n_iter + 1, -2, nt
                Ht[i, a] = v
        n_iter += 1
