"""The fit plan and the pure M-step pieces of :class:`~emtl_stream.model.transfer.TransferEM`.

A fit first turns the source model into :class:`SourceTerms` (precisions, their
mixture average, the penalty metric) and the burst into a frozen :class:`FitPlan`
(λ, the factor of X̃ᵀX̃ + λD, which solver each M-step uses and what it needs once per
fit). Every function here is pure apart from the one CG warning (:func:`check_cg`):
it reads the plan and the current responsibilities and returns the next H.

Three M-step kinds (the mathematics is in the docstring of ``model/transfer.py``):

* shared precision, dense map: the ridge closed form, one back-substitution;
* per-component precisions, dense map: Σ_k Λ_k H A_k = R, a dense Kronecker Cholesky
  for tiny maps, else CG preconditioned by (Σ_k w_k Λ_k)⁻¹ ⊗ (X̃ᵀX̃ + λD)⁻¹;
* structured maps (a mask of free entries): the same system restricted to the free
  entries, a dense Cholesky up to ``masked_dense_max`` unknowns, else the masked CG
  kernel or, for the channel structure, CG with an exact per-feature-type block
  preconditioner (:func:`block_pcg`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg

from ..errors import DegenerateBurst
from ..kernels import linalg as klinalg, mstep
from ..logs import logger

#: Relative residual above which a CG M-step is reported as not converged.
CG_WARN_RESIDUAL = 1e-6


@dataclass(frozen=True)
class SourceTerms:
    """Source-model quantities every step of a fit reads (built once per fit).

    Attributes
    ----------
    means : ndarray of shape (K, m)
    prec_factor : ndarray of shape (K, m, m)
        Cholesky factors P_k of the precisions, Λ_k = P_k P_kᵀ.
    shared : bool
        All components share one precision.
    pi : ndarray of shape (K,)
        Mixture weights.
    Lam : ndarray of shape (K, m, m)
        Precisions Λ_k.
    Lam_bar : ndarray of shape (m, m)
        Mixture-average precision Λ̄ = Σ_k π_k Λ_k.
    Pen : ndarray of shape (m, m)
        Penalty metric Π (Λ̄ or the identity).
    nu : ndarray of shape (K, m) or None
        Whitened means μ_k P (shared precision only).
    Lam_mu : ndarray of shape (K, m) or None
        Λ_k μ_k (per-component M-step only).
    """

    means: np.ndarray
    prec_factor: np.ndarray
    shared: bool
    pi: np.ndarray
    Lam: np.ndarray
    Lam_bar: np.ndarray
    Pen: np.ndarray
    nu: np.ndarray | None
    Lam_mu: np.ndarray | None


def source_terms(src, penalty: str, kind: str) -> SourceTerms:
    """Precisions, their mixture average and the penalty metric of a source model.

    Parameters
    ----------
    src : SourceComponents
        K components in m dimensions.
    penalty : {"precision", "identity"}
        Penalty metric Π = Λ̄ or Π = I.
    kind : {"shared", "full"}
        M-step kind; "full" also needs Λ_k μ_k.

    Returns
    -------
    SourceTerms
    """
    pi = np.exp(src.log_weights - np.logaddexp.reduce(src.log_weights))
    # Λ_k = P_k P_kᵀ through batched BLAS (an unoptimised einsum costs ~10 ms at m = 128).
    if src.shared_precision:
        P0 = src.prec_factor[0]
        lam0 = P0 @ P0.T
        Lam = np.ascontiguousarray(np.broadcast_to(lam0, src.prec_factor.shape))
        Lam_bar = np.ascontiguousarray(lam0)
        nu = np.ascontiguousarray(src.means @ P0)
    else:
        Lam = np.ascontiguousarray(src.prec_factor @ src.prec_factor.transpose(0, 2, 1))
        Lam_bar = np.ascontiguousarray(np.tensordot(pi, Lam, axes=1))
        nu = None
    Pen = Lam_bar if penalty == "precision" else np.eye(src.n_features)
    Lam_mu = np.einsum("kij,kj->ki", Lam, src.means) if kind == "full" else None
    return SourceTerms(np.ascontiguousarray(src.means), src.prec_factor,
                       bool(src.shared_precision), pi, Lam, Lam_bar, Pen, nu, Lam_mu)


@dataclass(frozen=True)
class BlockPlan:
    """Block-Jacobi preconditioner of the channel-structured shared system.

    With ``structure="channel"`` the free entries split into f blocks H_t (C x C: type
    t mixed across electrodes), and the diagonal block of S for type t is the Kronecker
    sum Λ_tt ⊗ G_tt + λ I (Λ_tt, G_tt the type-t rows and columns of Λ̄ and X̃ᵀX̃). Its
    exact inverse costs two eigendecompositions of C x C matrices once per fit and four
    C x C products per application; only the couplings between feature types (Λ_tt',
    G_tt') are left to CG.

    Attributes
    ----------
    perm : ndarray of shape (m,)
        Type-major order of the features.
    f, C : int
        Feature types and channels.
    Lp : ndarray of shape (f, f, C, C)
        Λ̄ in type blocks.
    Xb : ndarray of shape (f, N, C) or None
        The burst in type blocks, used instead of ``GpT`` when N < m.
    Lam_tm : ndarray of shape (m, m)
        Λ̄ in type-major order.
    GpT : ndarray of shape (f, f, C, C)
        X̃ᵀX̃ in type blocks, first two axes swapped.
    lam : float
    U, V : ndarray of shape (f, C, C)
        Eigenvectors of the diagonal blocks of Λ̄ and X̃ᵀX̃.
    inv : ndarray of shape (f, C, C)
        Inverse eigenvalues of the diagonal blocks of S.
    """

    perm: np.ndarray
    f: int
    C: int
    Lp: np.ndarray
    Xb: np.ndarray | None
    Lam_tm: np.ndarray
    GpT: np.ndarray
    lam: float
    U: np.ndarray
    V: np.ndarray
    inv: np.ndarray


@dataclass(frozen=True)
class MaskedPlan:
    """What a structured (masked) M-step needs once per fit.

    Attributes
    ----------
    free : ndarray of shape (p,)
        Flat indices of the free entries of [H, b], shape (m, n').
    fi, fa : ndarray of shape (p,)
        Their rows and columns.
    Mf : ndarray of shape (m, n')
        The mask as floats (the offset column free).
    Lam_terms : ndarray of shape (T, m, m)
        Left factors of the Kronecker terms of S.
    A_terms : ndarray of shape (T, n', n') or None
        Right factors (shared kind; the per-component kind builds them per M-step).
    Lam_s : ndarray of shape (m, m) or None
        Λ̄ (shared kind).
    S_chol : tuple or None
        Cholesky factor of S (shared kind, dense solver).
    Pl_s : ndarray of shape (m, m) or None
        Left CG preconditioner (shared kind, CG kernel).
    blocks : BlockPlan or None
        Block-Jacobi CG instead of the CG kernel.
    """

    free: np.ndarray
    fi: np.ndarray
    fa: np.ndarray
    Mf: np.ndarray
    Lam_terms: np.ndarray
    A_terms: np.ndarray | None
    Lam_s: np.ndarray | None
    S_chol: tuple | None
    Pl_s: np.ndarray | None
    blocks: BlockPlan | None


@dataclass(frozen=True)
class FitPlan:
    """Everything an EM run of one fit reads: fixed by the burst and the settings.

    Attributes
    ----------
    kind : {"shared", "full"}
    penalty : {"precision", "identity"}
    m, n, n1 : int
        Source features, target features, target features plus the offset column.
    lam : float
        Absolute λ.
    Dvec : ndarray of shape (n1,)
        Diagonal of D (0 on the unpenalised offset).
    mask : ndarray of shape (m, n), bool, or None
        Free entries of H (None: dense map, closed form).
    chol : tuple
        Cholesky factor of X̃ᵀX̃ + λD.
    Ainv : ndarray of shape (n1, n1)
        (X̃ᵀX̃ + λD)⁻¹, the right CG preconditioner and the fused kernel's solve.
    dense : bool
        Direct solve of the per-component or masked system instead of CG.
    fused : bool
        Shared precision, dense map, Λ̄ penalty: the whole EM loop in one kernel call.
    masked : MaskedPlan or None
    max_iter : int
    tol : float
    cg_rtol : float
    """

    kind: str
    penalty: str
    m: int
    n: int
    n1: int
    lam: float
    Dvec: np.ndarray
    mask: np.ndarray | None
    chol: tuple
    Ainv: np.ndarray
    dense: bool
    fused: bool
    masked: MaskedPlan | None
    max_iter: int
    tol: float
    cg_rtol: float


def penalty_weight(X, mask, terms: SourceTerms, reg: float, reg_scale: str) -> float:
    """Absolute λ of the penalty (see the module docstring of ``model/transfer.py``).

    Parameters
    ----------
    X : ndarray of shape (N, n)
        The burst, without the offset column.
    mask : ndarray of shape (m, n), bool, or None
        Free entries (None: dense map).
    terms : SourceTerms
    reg : float
        Regularisation strength.
    reg_scale : {"relative", "absolute"}

    Returns
    -------
    float
    """
    if reg_scale != "relative":
        return reg
    n = X.shape[1]
    if mask is None:
        energy = float(np.einsum("ij,ij->", X, X)) / n
    else:
        # tr of the data / penalty normal matrices over the free entries; equals
        # tr(XᵀX)/n for an all-True mask and Π = Λ̄.
        dL = np.diag(terms.Lam_bar)
        energy = float(dL @ mask @ np.einsum("ij,ij->j", X, X)) / float(
            np.diag(terms.Pen) @ mask.sum(axis=1))
    if energy == 0.0:
        raise DegenerateBurst("X is all zeros; a relative regulariser has no scale.")
    return reg * energy


def left_preconditioner(Lam, A=None) -> np.ndarray:
    """Inverse of Σ_k w_k Λ_k, w_k ∝ tr A_k (just Λ⁻¹ for a single matrix).

    The left factor of the Kronecker preconditioner (Σ_k w_k Λ_k)⁻¹ ⊗ A̅⁻¹ of
    Σ_k Λ_k H A_k = R; a pseudo-inverse when the weighted precision is singular.

    Parameters
    ----------
    Lam : ndarray of shape (K, m, m) or (m, m)
    A : ndarray of shape (K, n', n'), optional
        Right factors giving the weights; required when ``Lam`` is 3-D.

    Returns
    -------
    ndarray of shape (m, m)
    """
    if A is None:
        Lw = Lam
    else:
        w = np.trace(A, axis1=1, axis2=2)
        Lw = np.ascontiguousarray(np.einsum("k,kij->ij", w / w.sum(), Lam))
    Pl = klinalg.spd_inverse(Lw)
    if not np.all(np.isfinite(Pl)):
        Pl = np.ascontiguousarray(np.linalg.pinv(Lw))
    return Pl


def cg_maxiter(p: int, rtol: float) -> int:
    """CG iteration cap for ``p`` unknowns.

    Parameters
    ----------
    p : int
        Number of unknowns.
    rtol : float
        Relative residual target; 0 runs to the cap.

    Returns
    -------
    int
    """
    return max(50, 10 * p) if rtol > 0 else 10 * p


def check_cg(it: int, rel: float, solver: str) -> int:
    """Warn when a CG M-step stopped short of a small residual; return ``it``.

    Parameters
    ----------
    it : int
        CG iterations run.
    rel : float
        Final relative residual.
    solver : str
        Name of the CG variant in the warning.

    Returns
    -------
    int
    """
    it = int(it)
    if rel > CG_WARN_RESIDUAL:
        logger.warning("%s M-step stopped at relative residual %s after %s iterations",
                       solver, rel, it)
    return it


def _factor_masked(S):
    """Cholesky factor of a masked M-step system, or DegenerateBurst."""
    try:
        return linalg.cho_factor(S, lower=True, check_finite=False)
    except linalg.LinAlgError:
        raise DegenerateBurst(
            "the structured M-step system is singular (rank-deficient burst with reg=0?); "
            "increase reg."
        ) from None


def channel_mask(n: int, n_channels: int) -> np.ndarray:
    """Per-feature-type channel mixing: H[i, j] free only when i % f == j % f.

    With channel-major features (f = n // C features per channel), every mapped
    feature is then a mixture of the *same feature type* across electrodes.

    Parameters
    ----------
    n : int
        Feature dimension (source and target), divisible by ``n_channels``.
    n_channels : int
        Electrodes C.

    Returns
    -------
    ndarray of shape (n, n), bool
    """
    f = n // n_channels
    t = np.arange(n) % f
    return t[:, None] == t[None, :]


def build_plan(terms: SourceTerms, X, Xt, mask, *, kind: str, penalty: str, lam: float,
               bias: bool, solver: str, dense_max: int, masked_dense_max: int,
               block_jacobi: bool, max_iter: int, tol: float, cg_rtol: float) -> FitPlan:
    """Factor X̃ᵀX̃ + λD and choose and prepare the M-step solver of a fit.

    Parameters
    ----------
    terms : SourceTerms
    X : ndarray of shape (N, n)
        The burst.
    Xt : ndarray of shape (N, n1)
        The burst with the offset column (``X`` itself without an offset).
    mask : ndarray of shape (m, n), bool, or None
        Free entries of H (None: dense map, closed form).
    kind : {"shared", "full"}
    penalty : {"precision", "identity"}
    lam : float
        Absolute λ.
    bias : bool
        The last column of ``Xt`` is the unpenalised offset column.
    solver : {"auto", "dense", "cg"}
    dense_max, masked_dense_max : int
        ``solver="auto"`` thresholds (unknowns) for dense and structured maps.
    block_jacobi : bool
        Allow the block-Jacobi CG for the channel-structured shared system.
    max_iter : int
    tol : float
    cg_rtol : float

    Returns
    -------
    FitPlan
    """
    m = terms.Lam_bar.shape[0]
    n = X.shape[1]
    n1 = Xt.shape[1]
    Dvec = np.ones(n1)
    if bias:
        Dvec[-1] = 0.0
    A_bar = Xt.T @ Xt + lam * np.diag(Dvec)
    try:
        chol = linalg.cho_factor(A_bar, lower=True, check_finite=False)
    except linalg.LinAlgError:
        raise DegenerateBurst(
            f"X̃ᵀX̃ + λI is singular (λ={lam:g}, rank-deficient burst); use reg > 0."
        ) from None
    dg = np.abs(np.diag(chol[0]))
    if not dg.min() > 1e-7 * dg.max():  # condition number of X̃ᵀX̃ + λD above ~1e14
        raise DegenerateBurst(
            f"X̃ᵀX̃ + λI is numerically singular (λ={lam:g}, rank-deficient or constant "
            "features); use reg > 0."
        )
    Ainv = np.ascontiguousarray(linalg.cho_solve(chol, np.eye(n1)))
    fused = kind == "shared" and terms.shared and mask is None and penalty == "precision"
    masked = None
    if mask is not None:
        Mt = np.ones((m, n1), dtype=bool)
        Mt[:, :n] = mask
        free = np.flatnonzero(Mt.ravel())
        dense = free.size <= masked_dense_max if solver == "auto" else solver == "dense"
        masked = _masked_plan(terms, X, Xt, mask, Mt, free, A_bar, Dvec, kind=kind,
                              penalty=penalty, lam=lam, bias=bias, dense=dense,
                              block_jacobi=block_jacobi)
    else:
        dense = m * n1 <= dense_max if solver == "auto" else solver == "dense"
    return FitPlan(kind, penalty, m, n, n1, lam, Dvec, mask, chol, Ainv, dense, fused, masked,
                   max_iter, tol, cg_rtol)


def _masked_plan(terms, X, Xt, mask, Mt, free, A_bar, Dvec, *, kind, penalty, lam, bias,
                 dense, block_jacobi):
    """Free-entry indices and, for the shared kind, the once-per-fit factor."""
    m, n1 = Mt.shape
    fi = np.ascontiguousarray(free // n1, dtype=np.int64)
    fa = np.ascontiguousarray(free % n1, dtype=np.int64)
    Mf = np.ascontiguousarray(Mt, dtype=np.float64)
    if kind != "shared":
        Lam_terms = np.ascontiguousarray(np.concatenate([terms.Lam, terms.Pen[None]]))
        return MaskedPlan(free, fi, fa, Mf, Lam_terms, None, None, None, None, None)
    # Shared kind: S does not depend on the responsibilities, so it is factored once.
    # On a source with per-component precisions ("shared" forced) Λ̄ stands in for Λ.
    Lam_s = np.ascontiguousarray(terms.Lam_bar)
    D = lam * np.diag(Dvec)
    if penalty == "precision":
        Lam_terms = np.ascontiguousarray(Lam_s[None])
        A_terms = np.ascontiguousarray(A_bar[None])
    else:
        Lam_terms = np.ascontiguousarray(np.stack([Lam_s, terms.Pen]))
        A_terms = np.ascontiguousarray(np.stack([A_bar - D, D]))
    S_chol = Pl_s = blocks = None
    if dense:
        S = np.empty((free.size, free.size))
        mstep.kron_assemble_masked(Lam_terms, A_terms, fi, fa, S)
        S_chol = _factor_masked(S)
    else:
        # the channel structure, whether named or given as its mask
        n_ch = int(mask[0].sum()) if mask.shape == (m, m) else 0
        if (block_jacobi and penalty == "identity" and not bias and n_ch > 0
                and m % n_ch == 0 and np.array_equal(mask, channel_mask(m, n_ch))):
            blocks = _block_plan(terms.Lam_bar, Xt, A_bar - D, lam, n_ch)
        else:
            Pl_s = left_preconditioner(Lam_s)
    return MaskedPlan(free, fi, fa, Mf, Lam_terms, A_terms, Lam_s, S_chol, Pl_s, blocks)


def _block_plan(Lam_bar, X, G, lam, n_channels) -> BlockPlan:
    """Build the :class:`BlockPlan` of Λ̄ and G = X̃ᵀX̃ for ``n_channels`` electrodes."""
    m = Lam_bar.shape[0]
    f = m // n_channels
    C = n_channels
    # type-major order: the free entries become the f diagonal C x C blocks
    perm = np.arange(m).reshape(C, f).T.ravel()
    Lp = Lam_bar[np.ix_(perm, perm)].reshape(f, C, f, C).transpose(0, 2, 1, 3)
    Gp = G[np.ix_(perm, perm)].reshape(f, C, f, C).transpose(0, 2, 1, 3)
    a, U = np.linalg.eigh(Lp[np.arange(f), np.arange(f)])
    b, V = np.linalg.eigh(Gp[np.arange(f), np.arange(f)])
    N = X.shape[0]
    return BlockPlan(
        perm=perm, f=f, C=C, Lp=np.ascontiguousarray(Lp),
        # a short burst (N < m): Λ H XᵀX through the rows, rank N instead of m
        Xb=(np.ascontiguousarray(X[:, perm].reshape(N, f, C).transpose(1, 0, 2))
            if N < m else None),
        Lam_tm=np.ascontiguousarray(Lam_bar[np.ix_(perm, perm)]),
        GpT=np.ascontiguousarray(Gp.transpose(1, 0, 2, 3)), lam=lam, U=U, V=V,
        inv=1.0 / (np.maximum(a, 0.0)[:, :, None] * np.maximum(b, 0.0)[:, None, :] + lam))


# ------------------------------------------------------------------ M-steps


def mstep_shared(plan: FitPlan, terms: SourceTerms, Xt, resp, H0t) -> np.ndarray:
    """Closed-form M-step of a dense map with a shared (or averaged) precision.

    Parameters
    ----------
    plan : FitPlan
    terms : SourceTerms
    Xt : ndarray of shape (N, n1)
    resp : ndarray of shape (N, K)
        Responsibilities.
    H0t : ndarray of shape (m, n1)
        Shrink target with a zero offset column.

    Returns
    -------
    ndarray of shape (m, n1)
    """
    rhs = np.empty((Xt.shape[1], plan.m))
    mstep.shared_rhs(resp, terms.means, Xt, rhs)
    rhs += plan.lam * H0t.T
    return np.ascontiguousarray(linalg.cho_solve(plan.chol, rhs).T)


def mstep_full(plan: FitPlan, terms: SourceTerms, Xt, resp, Ht, H0t):
    """Exact M-step of a dense map with per-component precisions.

    Solves Σ_k Λ_k H A_k = R, A_k = C_k + λ π_k D: the dense Kronecker system when
    ``plan.dense``, else preconditioned CG started from ``Ht``.

    Parameters
    ----------
    plan : FitPlan
    terms : SourceTerms
    Xt : ndarray of shape (N, n1)
    resp : ndarray of shape (N, K)
    Ht : ndarray of shape (m, n1)
        Current map (the CG start).
    H0t : ndarray of shape (m, n1)

    Returns
    -------
    H : ndarray of shape (m, n1)
    cg_iters : int or None
        CG iterations (None for the direct solve).
    """
    K = terms.Lam.shape[0]
    n1 = Xt.shape[1]
    C = np.empty((K, n1, n1))
    c = np.empty((K, n1))
    mstep.weighted_stats(Xt, resp, C, c)
    A = C + (plan.lam * terms.pi)[:, None, None] * np.diag(plan.Dvec)[None]
    A = np.ascontiguousarray(A)
    R = terms.Lam_mu.T @ c + plan.lam * (terms.Lam_bar @ H0t)
    R = np.ascontiguousarray(R)
    if plan.dense:
        p = plan.m * n1
        S = np.empty((p, p))
        mstep.kron_assemble(terms.Lam, A, S)
        try:
            sol = linalg.cho_solve(linalg.cho_factor(S, lower=True, check_finite=False),
                                   R.ravel(), check_finite=False)
        except linalg.LinAlgError:
            raise DegenerateBurst(
                "the per-component M-step system is singular (rank-deficient burst with "
                "reg=0?); increase reg."
            ) from None
        return sol.reshape(plan.m, n1), None
    Pl = left_preconditioner(terms.Lam, A)
    H = np.array(Ht, copy=True)
    maxiter = cg_maxiter(plan.m * n1, plan.cg_rtol)
    it, rel = mstep.pcg_sylvester(terms.Lam, A, R, Pl, plan.Ainv, H, plan.cg_rtol, maxiter)
    return H, check_cg(it, rel, "CG")


def masked_system(plan: FitPlan, terms: SourceTerms, Xt, resp, H0t):
    """Kronecker terms and right-hand side of the structured M-step.

    S = Σ_k Λ_k ⊗ C_k + λ Π ⊗ D is handed to the kernels as the K+1 terms (Λ_1, C_1),
    …, (Λ_K, C_K), (Π, λD); shared: (Λ, X̃ᵀX̃), (Π, λD), or the one term
    Λ ⊗ (X̃ᵀX̃ + λD) when Π = Λ.

    Parameters
    ----------
    plan : FitPlan
        With ``plan.masked`` set.
    terms : SourceTerms
    Xt : ndarray of shape (N, n1)
    resp : ndarray of shape (N, K)
    H0t : ndarray of shape (m, n1)

    Returns
    -------
    Lam : ndarray of shape (T, m, m)
    A : ndarray of shape (T, n1, n1)
    R : ndarray of shape (m, n1)
    chol : tuple or None
        Cholesky factor of the restricted S for the direct solve.
    """
    mp = plan.masked
    if plan.kind == "shared":
        rhs = np.empty((Xt.shape[1], plan.m))
        mstep.shared_rhs(resp, terms.means, Xt, rhs)
        R = mp.Lam_s @ rhs.T + plan.lam * (terms.Pen @ H0t)
        return mp.Lam_terms, mp.A_terms, R, mp.S_chol
    K = terms.Lam.shape[0]
    n1 = Xt.shape[1]
    A = np.empty((K + 1, n1, n1))
    c = np.empty((K, n1))
    mstep.weighted_stats(Xt, resp, A[:K], c)
    A[K] = plan.lam * np.diag(plan.Dvec)
    R = terms.Lam_mu.T @ c + plan.lam * (terms.Pen @ H0t)
    chol = None
    if plan.dense:
        S = np.empty((mp.free.size, mp.free.size))
        mstep.kron_assemble_masked(mp.Lam_terms, A, mp.fi, mp.fa, S)
        chol = _factor_masked(S)
    return mp.Lam_terms, A, R, chol


def mstep_masked(plan: FitPlan, Lam, A, R, chol, Ht):
    """Exact minimiser over the free entries: direct solve or the masked CG kernel.

    Parameters
    ----------
    plan : FitPlan
        With ``plan.masked`` set (and no block preconditioner).
    Lam, A, R, chol
        From :func:`masked_system`.
    Ht : ndarray of shape (m, n1)
        Current map (the CG start).

    Returns
    -------
    H : ndarray of shape (m, n1)
    cg_iters : int or None
    """
    mp = plan.masked
    if plan.dense:
        H = np.zeros_like(Ht)
        H.ravel()[mp.free] = linalg.cho_solve(chol, R.ravel()[mp.free], check_finite=False)
        return H, None
    if plan.kind == "shared" and plan.penalty == "precision":
        Pl = mp.Pl_s
    else:
        Pl = left_preconditioner(Lam, A)
    H = np.array(Ht, copy=True)
    maxiter = cg_maxiter(mp.free.size, plan.cg_rtol)
    it, rel = mstep.pcg_sylvester_masked(np.ascontiguousarray(Lam), A, np.ascontiguousarray(R),
                                         Pl, plan.Ainv, mp.Mf, H, plan.cg_rtol, maxiter)
    return H, check_cg(it, rel, "masked CG")


def block_pcg(bl: BlockPlan, R, Ht, rtol: float):
    """Solve Mask ⊙ (Λ̄ H G + λ H) = Mask ⊙ R by block-Jacobi preconditioned CG.

    CG runs over the f type blocks, preconditioned by :class:`BlockPlan`.

    Parameters
    ----------
    bl : BlockPlan
    R : ndarray of shape (m, m)
        Right-hand side.
    Ht : ndarray of shape (m, m)
        Current map (the CG start).
    rtol : float
        Relative residual at which CG stops.

    Returns
    -------
    H : ndarray of shape (m, m)
    cg_iters : int
    """
    perm, f, C, Lp, GpT, lam = bl.perm, bl.f, bl.C, bl.Lp, bl.GpT, bl.lam
    U, V, inv = bl.U, bl.V, bl.inv
    diag = np.arange(f)
    UT, VT = U.transpose(0, 2, 1), V.transpose(0, 2, 1)

    def to_blocks(M):
        return M[np.ix_(perm, perm)].reshape(f, C, f, C).transpose(0, 2, 1, 3)[diag, diag]

    Xb, Lam_tm = bl.Xb, bl.Lam_tm
    XbT = None if Xb is None else Xb.transpose(0, 2, 1)

    def apply(Hb):
        # (Λ H G)_tt = Σ_s Λ_ts H_s G_st, G = XᵀX
        if Xb is None:
            return ((Lp @ Hb[None]) @ GpT).sum(axis=1) + lam * Hb
        W = (Lam_tm @ (Hb @ XbT).reshape(f * C, -1)).reshape(f, C, -1)
        return W @ Xb + lam * Hb

    def precond(Rb):
        return U @ ((UT @ Rb @ V) * inv) @ VT

    Rb = to_blocks(R)
    bnorm = float(np.linalg.norm(Rb)) or 1.0
    Hb = to_blocks(Ht)
    r = Rb - apply(Hb)
    z = precond(r)
    d = z
    rz = float(np.vdot(r, z))
    maxiter = cg_maxiter(f * C * C, rtol)
    it = 0
    rel = float(np.linalg.norm(r)) / bnorm
    while rel > rtol and it < maxiter:
        Ad = apply(d)
        alpha = rz / float(np.vdot(d, Ad))
        Hb = Hb + alpha * d
        r = r - alpha * Ad
        it += 1
        rel = float(np.linalg.norm(r)) / bnorm
        if rel <= rtol:
            break
        z = precond(r)
        rz_new = float(np.vdot(r, z))
        d = z + (rz_new / rz) * d
        rz = rz_new
    H = np.zeros_like(Ht)
    for t in range(f):
        idx = perm[t * C:(t + 1) * C]
        H[np.ix_(idx, idx)] = Hb[t]
    return H, check_cg(it, rel, "block CG")
