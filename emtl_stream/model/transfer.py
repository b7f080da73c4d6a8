"""Expectation-maximisation transfer learning (Paassen et al. 2018), done exactly.

:class:`TransferEM` learns a map H (m, n) (and optionally an offset b) from a short
calibration burst of target-space features so that ``X @ H.T + b`` fits the source
labelled Gaussian mixture. See algorithm.md §2-§3 and reference-notes.md for the
mathematics and the reference's bugs this avoids (W1-W14).

Objective (maximised; reported per iteration, divided by N)::

    Σ_j log p(H x̃_j, y_j)  −  ½ λ tr((H − H₀)ᵀ Π (H − H₀)),   Π = Λ̄ = Σ_k π_k Λ_k

where unlabelled rows use the label-marginal p(z). For a shared precision Λ̄ = Λ
and the M-step is the ridge closed form of algorithm.md §2; with per-component
precisions the M-step solves Σ_k Λ_k H (C_k + λ π_k D) = Σ_k Λ_k (μ_k c_kᵀ + λ π_k H₀ D)
exactly (the per-component penalty weights λ_k = λ π_k make the full kind coincide
with the shared kind when all Λ_k are equal). Both are exact maximisers of the
expected complete-data objective, so the trace never decreases.

The offset b (``bias=True``, x̃ = [x, 1]) is **not penalised** (D = diag(1, …, 1, 0)):
an offset has no natural prior, and any penalty on it would need its own scale to
keep results invariant to the feature units. The relative λ is therefore computed
from the feature columns only: λ = reg · tr(XᵀX) / n.

Structured maps (``structure="channel"`` or a boolean mask): only the free entries
of H are unknowns; the M-step minimises the same expected objective over them
exactly, i.e. solves the vec system S restricted to the free entries, where
S = Σ_k Λ_k ⊗ C_k + λ Π ⊗ D (Π = Λ̄ above). With a mask Λ does not drop out even for a shared
precision (the restriction of Λ ⊗ A is not a Kronecker product). The relative λ is
then the ratio of the traces of the data and the penalty normal matrices of the
free entries. The penalty is ‖H − H₀‖²_Π with H₀ projected onto
the mask and Π = I by default for structured maps (``penalty="identity"``; Π = Λ̄
with ``penalty="precision"``). The general λ is

    λ = reg · Σ_{(i,a) free} Λ̄_ii (XᵀX)_aa  /  Σ_{(i,a) free} Π_ii.

With Π = I this is exactly the prototype's λ' = reg · tr(G)/p (G = Σ_j A_jᵀ Λ A_j the
normal matrix of the p free entries), and the fit reproduces its accuracies. With
Π = Λ̄ it is the same trace ratio between penalty and data normal matrices and
equals tr(XᵀX)/n for an all-True mask. Both are invariant to the feature units
(λ Π scales like Λ̄ times the squared feature units, as the data normal matrix does).
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass

import numpy as np

from .. import _checks
from ..errors import BurstTooShort, DegenerateBurst, TransferConvergenceWarning
from ..kernels import estep, mstep
from ..logs import logger
from . import _transfer_mstep as ms
from ._fitted import check_is_fitted, check_stop
from ._transfer_mstep import channel_mask
from .classify import MappedClassifier, as_components
from .rotation import rotation_prior
from .source import LOG_2PI

__all__ = ["TransferEM", "channel_mask", "rectangular_identity", "ring_roll_matrix",
           "ring_rotation_matrix", "rotation_inverse"]

#: Largest number of unknowns m·n' for which the per-component M-step assembles
#: and factors the dense Kronecker system; above it, preconditioned CG. Measured
#: (tools/bench_transfer.py, 1 BLAS thread, 24 components): the Kronecker-
#: preconditioned CG needs 8-14 iterations and is already 4x faster than the dense
#: Cholesky at m·n' = 256 and 18x at 1024, so the dense path is kept only for tiny maps.
DENSE_MAX_UNKNOWNS = 128

#: Relative residual at which an M-step's CG stops (``cg_rtol``). Every CG iterate
#: lowers the M-step's quadratic, so a truncated solve is a generalised EM step and
#: never lowers the objective; the map is a statistical estimate from a burst, whose
#: sampling error is orders of magnitude above 1e-6. Per-component EM at d = 128,
#: 24 components, N = 1000: the same 7 EM iterations and log-likelihood trace to 1e-9
#: as at 1e-10, H within 5e-7 (relative), 93 -> 49 CG iterations (tools/bench_transfer.py).
CG_RTOL = 1e-6

#: Same threshold for structured maps (``structure`` not "dense"), counted in free
#: entries p. The shared kind factors its masked system once per fit and then only
#: back-substitutes, so a dense Cholesky pays off up to a larger size. Measured on the
#: synthetic armband (channel-structured map, 4 feature types, labelled bursts of 0.6
#: and 3 s per class, the daemon's roll search, same H to 1e-10): at 8 channels
#: (p = 256) dense 5-7 ms against CG 17-20 ms; at 12 (p = 576) dense 19-188 ms against
#: CG 17-168 ms; at 16 (p = 1024) dense 36-180 ms against CG 22-148 ms.
MASKED_DENSE_MAX_UNKNOWNS = 512

#: EM iterations of the rotation-and-gain search (rotation_search="continuous") with
#: labelled rows, and without any. Labels anchor the gains; without them further gain
#: updates drift (measured on the virtual-rotation grid: zero-label 0.92 of within at
#: half a spacing after one update, 0.83 after 30), while a burst gains from them.
SEARCH_ITER_LABELLED = 30
SEARCH_ITER_UNLABELLED = 1

#: Rows the rotation search looks at (an evenly strided subset of a longer burst).
SEARCH_MAX_ROWS = 128

#: Ridge on the gains' normal matrix, relative to its mean diagonal (a feature type
#: that is constant on the burst would make it singular).
_SEARCH_RIDGE = 1e-6

#: Solve the channel-structured shared M-step (Π = I, no offset) by CG with the exact
#: per-feature-type block preconditioner (:class:`_transfer_mstep.BlockPlan`) instead of the
#: generic Kronecker-preconditioned CG kernel. Measured at 64 channels x 4 features
#: (tools/bench_transfer.py --ring64): about 3x fewer CG iterations. False restores the
#: kernel (the benchmark times both side by side).
BLOCK_JACOBI_CG = True

#: Roll search ("roll") on rings with more electrodes than this: every roll is scored by
#: the objective of its start map (one cheap E-step, no M-step) and EM runs only from the
#: ROLL_PRUNE_KEEP best. Up to this size EM runs from every roll, as it always did: at 8
#: channels a full search costs a few milliseconds, and the pruned one is shown to pick the
#: same roll on three subjects of the CIIL electrode-shift recordings only (labelled and
#: unlabelled bursts), not on all eighteen. At 16 channels (a 0.6 s labelled burst of the
#: synthetic armband, 4 features) the full search takes about 95 ms and the pruned one
#: 45 ms, with the same roll at integer and fractional shifts (tests/model); at 64
#: channels one start of the channel-structured map costs more than a whole 8-channel
#: search.
ROLL_PRUNE_MIN_CHANNELS = 8

#: Rolls refined by EM in a pruned roll search. At fractional shifts a neighbour of the
#: best-scored roll can overtake it during EM: on the 64-channel synthetic armband
#: (channel-structured map, labelled burst, shift 37.25) the exhaustive search's winner
#: had the 4th best start score, so 3 was not enough; 5 covers it (tests/model).
ROLL_PRUNE_KEEP = 5

#: Ridge ε of the fractional-rotation prior (RᵀR + εI)⁻¹Rᵀ: a rotation between two
#: electrodes blurs neighbouring channels, and at half a spacing R is singular (even C).
ROTATION_RIDGE = 0.05


def rectangular_identity(m: int, n: int) -> np.ndarray:
    """Identity padded with zeros, shape (m, n).

    Parameters
    ----------
    m, n : int
        Rows and columns.

    Returns
    -------
    ndarray of shape (m, n)
    """
    return np.eye(m, n)


def ring_roll_matrix(n: int, n_channels: int, roll: int) -> np.ndarray:
    """Block permutation that circularly rolls channel-major features by ``roll`` channels.

    ``x @ ring_roll_matrix(n, C, r).T == np.roll(x.reshape(C, n // C), r, axis=0).ravel()``.

    Parameters
    ----------
    n : int
        Feature dimension (channel-major, ``n // n_channels`` features per channel).
    n_channels : int
    roll : int

    Returns
    -------
    ndarray of shape (n, n)
    """
    idx = np.roll(np.arange(n).reshape(n_channels, n // n_channels), roll, axis=0).ravel()
    P = np.zeros((n, n))
    P[np.arange(n), idx] = 1.0
    return P


def ring_rotation_matrix(n: int, n_channels: int, rotation: float) -> np.ndarray:
    """Fractional ring roll: the interpolation of the two neighbouring integer rolls.

    For ``rotation = k + f`` (0 ≤ f < 1) this is ``(1 - f) R_k + f R_{k+1}`` with
    ``R_r = ring_roll_matrix(n, n_channels, r)``, so channel c of ``x @ M.T`` is
    ``(1 - f) x[c - k] + f x[c - k - 1]`` for every feature type.

    Parameters
    ----------
    n : int
        Feature dimension (channel-major).
    n_channels : int
    rotation : float
        In electrode spacings, any real number.

    Returns
    -------
    ndarray of shape (n, n)
    """
    k = int(np.floor(rotation))
    f = float(rotation) - k
    M = (1.0 - f) * ring_roll_matrix(n, n_channels, k)
    if f:
        M += f * ring_roll_matrix(n, n_channels, k + 1)
    return M


def rotation_inverse(n: int, n_channels: int, rotation: float, ridge: float) -> np.ndarray:
    """Ridge inverse of a fractional ring rotation: (RᵀR + εI)⁻¹ Rᵀ, R = R(rotation).

    The map back to the source for a target rotated by ``rotation`` spacings (it
    sharpens what the rotation blurred); for an integer rotation k it is
    ``ring_roll_matrix(n, C, -k) / (1 + ε)``.

    Parameters
    ----------
    n, n_channels : int
    rotation : float
    ridge : float
        ε > 0.

    Returns
    -------
    ndarray of shape (n, n)
    """
    R = ring_rotation_matrix(n, n_channels, rotation)
    return np.linalg.solve(R.T @ R + ridge * np.eye(n), R.T)


def _label_indices(src, y, n_rows: int) -> np.ndarray:
    """Class indices of labels (see :meth:`TransferEM.label_indices`)."""
    if y is None:
        return np.full(n_rows, -1, dtype=np.int64)
    impossible = np.all(src.log_label_given_comp == -np.inf, axis=1)
    without = set(np.flatnonzero(impossible).tolist())
    fast = _label_indices_int(src, y, n_rows, without)
    if fast is not None:
        return fast
    y = list(y) if not isinstance(y, np.ndarray) else y.tolist()
    if len(y) != n_rows:
        raise ValueError(f"y must have one label per row of X ({n_rows}), got {len(y)}.")
    classes = src.classes
    lookup = {c: i for i, c in enumerate(classes.tolist())}
    int_classes = classes.dtype.kind in "iu"
    out = np.empty(n_rows, dtype=np.int64)
    for j, lab in enumerate(y):
        if lab is None or (int_classes and isinstance(lab, numbers.Integral)
                           and not isinstance(lab, bool) and lab == -1
                           and -1 not in lookup):
            out[j] = -1
            continue
        if isinstance(lab, float) and math.isnan(lab):
            out[j] = -1
            continue
        try:
            idx = lookup[lab]
        except (KeyError, TypeError):
            raise ValueError(
                f"y contains label {lab!r} (row {j}) that the source model does not know; "
                f"known classes: {classes.tolist()}. Use None"
                f"{' or -1' if int_classes else ''} for unlabelled rows."
            ) from None
        if idx in without:
            raise ValueError(f"class {lab!r} has no component in the source model.")
        out[j] = idx
    return out


def _label_indices_int(src, y, n_rows, without):
    """Vectorised label lookup for integer arrays; None → use the general path."""
    classes = src.classes
    if not (isinstance(y, np.ndarray) and y.ndim == 1 and y.dtype.kind in "iu"
            and classes.dtype.kind in "iu" and len(y) == n_rows):
        return None
    sorter = np.argsort(classes, kind="stable")
    pos = np.minimum(np.searchsorted(classes, y, sorter=sorter), len(classes) - 1)
    idx = sorter[pos]
    found = classes[idx] == y
    if not np.any(classes == -1):
        unl = y == -1
        found |= unl
        idx = np.where(unl, -1, idx)
    if not found.all():
        return None  # the general path names the unknown label
    if without and np.isin(idx, list(without)).any():
        return None
    return idx.astype(np.int64)


def _check_structure(structure, m):
    """``structure`` validated: "dense", "channel" or a copy of a boolean (m, n) mask."""
    if isinstance(structure, str):
        return _checks.check_option(structure, ("dense", "channel"), "structure")
    mask = np.asarray(structure)
    if mask.dtype != bool:
        raise TypeError(
            f"structure must be 'dense', 'channel' or a boolean mask, got an array of dtype "
            f"{mask.dtype}; pass mask.astype(bool)."
        )
    if mask.ndim != 2 or mask.shape[0] != m:
        raise ValueError(
            f"structure mask must have shape ({m}, n) (one row per source feature), "
            f"got {mask.shape}."
        )
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise ValueError(
            f"structure mask has no free entry in row(s) {empty[:10].tolist()}; every mapped "
            "feature needs at least one True (else it is the constant offset only)."
        )
    return mask.copy()


def _augment(X, bias):
    """X with a column of ones appended when fitting an offset."""
    if bias:
        return np.ascontiguousarray(np.hstack([X, np.ones((X.shape[0], 1))]))
    return X


def _log_base(src, yi):
    """(N, K) per-row constants: log π + log ρ_{y_j} (0 if unlabelled) + ½ log det − ½ m log 2π."""
    c = src.log_weights + 0.5 * src.log_det_prec - 0.5 * src.n_features * LOG_2PI
    base = np.tile(c, (len(yi), 1))
    lab = yi >= 0
    base[lab] += src.log_label_given_comp[yi[lab]]
    return np.ascontiguousarray(base)


def _resolve_H0(shrink_to, m, n):
    """Return the shrink target H₀ (m, n) named or given by ``shrink_to``."""
    st = shrink_to
    if isinstance(st, str):
        return np.zeros((m, n)) if st == "zero" else rectangular_identity(m, n)
    H0 = np.ascontiguousarray(st, dtype=np.float64)
    if H0.shape != (m, n):
        raise ValueError(f"shrink_to must have shape ({m}, {n}), got {H0.shape}.")
    if not np.all(np.isfinite(H0)):
        raise ValueError("shrink_to contains NaN or inf.")
    return H0


def _penalty(terms, Ht, H0, n):
    """tr((H − H₀)ᵀ Π (H − H₀)) of the first n columns of ``Ht``."""
    Dlt = Ht[:, :n] - H0
    return float(np.sum(Dlt * (terms.Pen @ Dlt)))


def _log_joint(terms, Z, log_base, log_a):
    """Fill ``log_a`` (N, K) with log p(z_j, k) (+ ``log_base``) of mapped rows Z (N, m)."""
    if terms.shared:
        estep.log_joint_shared(np.ascontiguousarray(Z @ terms.prec_factor[0]), terms.nu,
                               log_base, log_a)
    else:
        estep.log_joint_full(Z, terms.means, terms.prec_factor, log_base, log_a)


def _estep(terms, Xt, Ht, log_base, log_a, resp):
    """E-step under the map Ht: fills ``resp`` (N, K), returns the row log-likelihoods (N,)."""
    _log_joint(terms, np.ascontiguousarray(Xt @ Ht.T), log_base, log_a)
    return estep.log_responsibilities(log_a, resp)


_NONFINITE_H = "the M-step produced a non-finite H (singular burst); increase reg."


def _diverged(obj, n_iter):
    """Return the DegenerateBurst of an objective that became non-finite."""
    return DegenerateBurst(
        f"the penalised log-likelihood became {obj} at iteration {n_iter}; the burst is too "
        "far from the source model (check feature scaling)."
    )


def _check_stop(should_stop):
    """Raise :class:`FitCancelled` when the caller's ``should_stop()`` says so."""
    check_stop(should_stop, "transfer EM")


def _run_em_fused(plan, terms, Xt, log_base, Hstart, H0t):
    """Shared precision, dense map, Λ̄ penalty: the whole loop in one kernel call."""
    Ht = np.array(Hstart, dtype=np.float64, order="C")
    trace = np.empty(plan.max_iter + 1)
    n_iter, status, nt = mstep.em_shared(
        Xt, Ht, H0t, np.ascontiguousarray(terms.prec_factor[0]), terms.nu, log_base,
        terms.means, plan.Ainv, plan.lam, plan.n, plan.tol, plan.max_iter, trace)
    if status == -1:
        raise _diverged(trace[nt - 1], n_iter)
    if status == -2:
        raise DegenerateBurst(_NONFINITE_H)
    return Ht, trace[:nt].tolist(), n_iter, status == 1, []


def _floored_logdet(H, floor):
    """log|det H| with singular values floored at ``floor`` times the largest.

    Parameters
    ----------
    H : ndarray of shape (..., m, m)
    floor : float
        Relative floor in [0, 1]; 0 gives the plain log|det H| (−inf if singular).

    Returns
    -------
    ndarray of shape (...)
    """
    sv = np.linalg.svd(H, compute_uv=False)
    with np.errstate(divide="ignore"):
        return np.log(np.maximum(sv, floor * sv[..., :1])).sum(axis=-1)


def _rotation_map(s, n, rot, per_kind=False):
    """Start map of the rotation search at ``rot`` spacings.

    ``S(θ)`` (:func:`rotation_inverse`), or per feature kind
    (:func:`~emtl_stream.model.rotation.rotation_prior`) when ``per_kind`` and
    ``s.rotation_counts`` is set.
    """
    if not per_kind or s.rotation_counts is None:
        return rotation_inverse(n, s.ring_channels, rot, s.rotation_ridge)
    return rotation_prior(n, s.ring_channels, rot, s.rotation_ridge, s.rotation_counts)


@dataclass(frozen=True)
class _Settings:
    """The constructor arguments of a :class:`TransferEM`, validated and resolved."""

    source: object  # SourceComponents
    m: int
    kind: str
    penalty: str
    structure: object  # "dense", "channel" or a bool mask
    shrink_to: object  # "identity", "zero" or an (m, n) array
    bias: bool
    reg: float
    reg_scale: str
    max_iter: int
    tol: float
    ring_channels: int | None
    solver: str
    dense_max: int
    cg_rtol: float
    masked_dense_max: int
    rotation_search: str
    n_refine: int
    roll_starts: int | None
    search_iter: int | None
    guard: bool | None
    jacobian_floor: float
    rotation_ridge: float
    rotation_step: float
    rotation_counts: tuple | None = None


class TransferEM:
    """Learn a linear (or affine) map from a target feature space to a source lGMM.

    Parameters
    ----------
    source : SourceComponents or object with ``to_components()``
        The source model: K components in m dimensions, L classes.
    kind : {"auto", "shared", "full"}
        M-step type. "auto" is "shared" when ``source.shared_precision`` else "full".
        "shared" on a source with different precisions uses the closed form with
        Λ dropped (fast, but then the trace is not guaranteed monotone).
    bias : bool
        Also fit an offset b (not penalised, see the module docstring).
    reg : float
        Regularisation strength (≥ 0).
    reg_scale : {"relative", "absolute"}
        "relative": λ = reg · tr(XᵀX)/n (invariant to the feature units);
        "absolute": λ = reg.
    shrink_to : {"identity", "zero"} or ndarray of shape (m, n)
        Prior map H₀ of the penalty λ‖H − H₀‖²_Λ̄. Also the start of EM unless
        ``H_init`` is given ("zero" starts from the identity, as the reference does).
    max_iter : int
        Maximum EM iterations (M-steps) per start.
    tol : float
        Stop when the change of the penalised mean log-likelihood is at most
        ``tol · max(1, |previous value|)``.
    ring_channels : int, optional
        Number of electrodes C on a ring (requires m == n and n % C == 0, features
        channel-major). EM is also started from every circular roll of the channel
        blocks (each with its roll as shrink target; above ``ROLL_PRUNE_MIN_CHANNELS``
        electrodes only from the best-scored rolls, see ``roll_starts``) and the best
        penalised likelihood wins.
    solver : {"auto", "dense", "cg"}
        Per-component M-step solver: dense Kronecker Cholesky or preconditioned CG.
        "auto" uses dense while m·n' ≤ ``dense_max``.
    dense_max : int
        Threshold for ``solver="auto"``.
    cg_rtol : float
        Relative residual at which CG stops (default :data:`CG_RTOL`); a tighter
        value only buys digits of H far below its sampling error.
    structure : {"dense", "channel"} or ndarray of bool, shape (m, n)
        Which entries of H may be non-zero. "dense": all. "channel" (needs
        ``ring_channels=C``, m == n, features channel-major with f = n // C per
        channel): H[i, j] only when i % f == j % f, i.e. each mapped feature mixes
        the same feature type across electrodes (:func:`channel_mask`). A boolean
        mask with at least one True per row is used as given. The offset b stays
        free and unpenalised. The M-step is the exact minimiser over the free
        entries (Λ no longer drops out, even for a shared precision); H₀, the
        ring rolls and ``H_init`` are projected onto the mask. With a mask the
        relative λ is reg · Σ_{(i,a) free} Λ̄_ii (XᵀX)_aa / Σ_{(i,a) free} Π_ii,
        the ratio of the traces of the data and penalty normal matrices of the
        free entries, Π the penalty metric (see ``penalty`` and the module docstring).
    penalty : {"auto", "precision", "identity"}
        Metric Π of the penalty λ‖H − H₀‖²_Π = λ tr((H − H₀)ᵀ Π (H − H₀)).
        "precision": Π = Λ̄ (the dense closed form of algorithm.md §2).
        "identity": Π = I, a plain ridge on the entries of H; with
        ``structure="channel"`` every free entry maps a feature type onto itself and
        is unitless, so this is the natural prior there, and it is what reaches the
        issue's accuracy targets (Λ̄-weighting loses 0.06 with 3 of 5 classes, see
        docs/benchmarks.md). "auto": "precision" for dense maps, "identity" for
        structured ones. Π = I on a dense map is solved by the structured solver
        with an all-True mask (Λ no longer drops out).
    masked_dense_max : int
        ``solver="auto"`` threshold (free entries) for structured maps.
    rotation_search : {"roll", "continuous"}
        How the starts are found when ``ring_channels`` is set. "roll" (default): EM
        from every integer channel roll, each shrunk towards its roll, best penalised
        likelihood wins. "continuous": first a batched search over rotated-and-scaled
        maps diag(g) S(θ), S(θ) = (R(θ)ᵀR(θ) + εI)⁻¹R(θ)ᵀ (:func:`rotation_inverse`,
        R(θ) the fractional ring rotation of :func:`ring_rotation_matrix`), θ on a
        grid of ``rotation_step`` spacings, one gain per feature type fitted by EM;
        candidates are scored as densities of the target points, log p(Hx) + log|det H|
        (without the Jacobian a blurring map always wins). Then the full EM from the
        ``n_refine`` best distinct rotations, each shrunk towards its own rotated and
        scaled map; the winner is again chosen by the penalised objective plus
        log|det H|. Opt-in: on the shared recordings it helps some fractional
        rotations but loses at whole-electrode shifts (docs/evaluation.md).
    n_refine : int
        Number of search candidates refined by the full EM ("continuous").
    roll_starts : int, optional
        Rolls refined by EM in the "roll" search. Every roll r is first scored by the
        objective of its start map R_r (the burst's mean log-likelihood under R_r; the
        penalty is zero there since R_r is also its shrink target), all rolls in one
        pass of E-steps, and EM runs from the ``roll_starts`` best. None (default): all
        rolls when ``ring_channels`` ≤ ``ROLL_PRUNE_MIN_CHANNELS`` (the exhaustive search),
        ``ROLL_PRUNE_KEEP`` above.
    search_iter : int, optional
        EM iterations of the rotation search ("continuous"); default 30 when the burst
        has labelled rows, 1 when it has none.
    rotation_step : float
        Grid step of the rotation search in spacings ("continuous").
    rotation_ridge : float
        ε of the fractional-rotation inverse ("continuous").
    jacobian_floor : float
        Floor of the singular values of S(θ), relative to the largest, in the search's
        log|det H| ("continuous"; at half a spacing S(θ) is singular).
    guard : bool, optional
        Keep the live map (``H_init``, else the identity, i.e. no adaptation) when it
        classifies held-out windows of the burst better than the new map does: the
        labelled rows are split in two class-balanced halves (alternate windows of each
        class), each half is predicted by a map refined on the other from the winning
        start towards the same prior, and the held-out accuracies over both halves are
        compared (a tie keeps the live map). Needs at least 2 labelled rows per class
        in the burst, else it is skipped. Default: on with
        ``rotation_search="continuous"``, off otherwise.
    rotation_counts : sequence of int, optional
        Count feature types (e.g. ZC, SSC; :func:`~emtl_stream.model.rotation.count_types`)
        for the "continuous" search of an unlabelled burst: its maps become per feature
        kind (:func:`~emtl_stream.model.rotation.rotation_prior`: ``R(θ)ᵀ`` on counts,
        ``S(θ)`` times the blur gain elsewhere). None, or a labelled burst, keeps ``S(θ)``
        on every type.

    Attributes
    ----------
    H_ : ndarray of shape (m, n)
    b_ : ndarray of shape (m,)
    n_iter_ : int
    converged_ : bool
    log_likelihood_ : list of float
        Penalised mean log-likelihood, one per iteration.
    kind_ : str
    lambda_ : float
        Absolute λ used.
    H0_ : ndarray of shape (m, n)
        Shrink target of the winning start.
    best_roll_ : int or None
        Integer roll nearest to the winning start's rotation.
    roll_scores_ : dict or None
        roll → start score (mean log-likelihood of the burst under R_r) of the "roll"
        search, every roll; None otherwise.
    roll_objectives_ : dict
        start → objective, when ``ring_channels`` is set: roll → final EM objective
        ("roll", the refined rolls only), or start rotation (float spacings) → circulant-search mean
        log-likelihood ("continuous").
    rotation_ : float or None
        Rotation θ of the winning start in spacings, in [0, C) ("continuous": the
        target rotation, its map is S(θ); "roll": the roll r of the start R_r).
    ring_taps_ : ndarray of shape (f,) or None
        Per-feature-type gains of the winning start ("continuous").
    H_start_ : ndarray of shape (m, n)
        Start of the winning EM run.
    guard_ : dict or None
        The guard's held-out accuracies over both halves of the labelled rows,
        ``{"new": …, "live": …, "kept_live": bool}``.
    classifier_ : MappedClassifier
    mask_ : ndarray of shape (m, n), bool, or None
        Free entries of H (None for a dense map solved in closed form).
    penalty_ : str
        "precision" or "identity" (``penalty`` with "auto" resolved).
    source_ : SourceComponents
        ``source`` as components.
    source_terms_ : SourceTerms
        Precisions, their mixture average and the penalty metric of the fit.
    cg_iters_ : list of int
        CG iterations of every CG M-step of the fit (empty for direct solves).
    """

    def __init__(self, source, kind="auto", bias=False, reg=1.0, reg_scale="relative",
                 shrink_to="identity", max_iter=100, tol=1e-6, ring_channels=None, *,
                 solver="auto", dense_max=DENSE_MAX_UNKNOWNS, cg_rtol=CG_RTOL,
                 structure="dense", penalty="auto",
                 masked_dense_max=MASKED_DENSE_MAX_UNKNOWNS, rotation_search="roll",
                 n_refine=1, roll_starts=None, search_iter=None, rotation_step=0.25,
                 rotation_ridge=ROTATION_RIDGE, jacobian_floor=0.6,
                 guard=None, rotation_counts=None):
        self.source = source
        self.kind = kind
        self.bias = bias
        self.reg = reg
        self.reg_scale = reg_scale
        self.shrink_to = shrink_to
        self.max_iter = max_iter
        self.tol = tol
        self.ring_channels = ring_channels
        self.solver = solver
        self.dense_max = dense_max
        self.cg_rtol = cg_rtol
        self.structure = structure
        self.penalty = penalty
        self.masked_dense_max = masked_dense_max
        self.rotation_search = rotation_search
        self.n_refine = n_refine
        self.roll_starts = roll_starts
        self.search_iter = search_iter
        self.rotation_step = rotation_step
        self.rotation_ridge = rotation_ridge
        self.jacobian_floor = jacobian_floor
        self.guard = guard
        self.rotation_counts = rotation_counts

    # ---------------------------------------------------------------- validation
    def _validate(self) -> "_Settings":
        """Check the constructor arguments; return them normalised (``fit`` calls this)."""
        c = _checks
        src = as_components(self.source)
        m = src.n_features
        if isinstance(self.shrink_to, str):
            c.check_option(self.shrink_to, ("identity", "zero"), "shrink_to")
        structure = _check_structure(self.structure, m)
        penalty = c.check_option(self.penalty, ("auto", "precision", "identity"), "penalty")
        if penalty == "auto":
            dense = isinstance(structure, str) and structure == "dense"
            penalty = "precision" if dense else "identity"
        kind = c.check_option(self.kind, ("auto", "shared", "full"), "kind")
        if kind == "auto":
            kind = "shared" if src.shared_precision else "full"
        opt = None if self.ring_channels is None else c.ensure_int(
            self.ring_channels, "ring_channels", minimum=1)
        return _Settings(
            source=src, m=m, kind=kind, penalty=penalty, structure=structure,
            shrink_to=self.shrink_to,
            bias=bool(self.bias), reg=c.ensure_float(self.reg, "reg", minimum=0.0),
            reg_scale=c.check_option(self.reg_scale, ("relative", "absolute"), "reg_scale"),
            max_iter=c.ensure_int(self.max_iter, "max_iter", minimum=1),
            tol=c.ensure_float(self.tol, "tol", minimum=0.0),
            ring_channels=opt,
            solver=c.check_option(self.solver, ("auto", "dense", "cg"), "solver"),
            dense_max=c.ensure_int(self.dense_max, "dense_max", minimum=0),
            cg_rtol=c.ensure_float(self.cg_rtol, "cg_rtol", minimum=0.0),
            masked_dense_max=c.ensure_int(self.masked_dense_max, "masked_dense_max", minimum=0),
            rotation_search=c.check_option(self.rotation_search, ("continuous", "roll"),
                                           "rotation_search"),
            n_refine=c.ensure_int(self.n_refine, "n_refine", minimum=1, maximum=64),
            roll_starts=(None if self.roll_starts is None else
                         c.ensure_int(self.roll_starts, "roll_starts", minimum=1)),
            search_iter=(None if self.search_iter is None else
                         c.ensure_int(self.search_iter, "search_iter", minimum=1, maximum=1000)),
            guard=None if self.guard is None else bool(self.guard),
            jacobian_floor=c.ensure_float(self.jacobian_floor, "jacobian_floor", minimum=0.0,
                                          maximum=1.0),
            rotation_ridge=c.ensure_float(self.rotation_ridge, "rotation_ridge", minimum=0.0,
                                          strict_min=True),
            rotation_step=c.ensure_float(self.rotation_step, "rotation_step",
                                         minimum=1.0 / 64, maximum=1.0),
            rotation_counts=(None if self.rotation_counts is None else
                             tuple(int(t) for t in self.rotation_counts)),
        )

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _resolve_mask(s: "_Settings", n):
        """Boolean (m, n) mask of free entries, or None for a dense map."""
        st = s.structure
        if isinstance(st, str):
            if st == "dense":
                return None
            C = s.ring_channels
            if C is None or s.m != n or n % C:
                raise ValueError(
                    f"structure='channel' needs ring_channels=C with a square map and n divisible "
                    f"by C (channel-major features); got ring_channels={C}, m={s.m}, n={n}."
                )
            return channel_mask(n, C)
        if st.shape != (s.m, n):
            raise ValueError(f"structure mask must have shape ({s.m}, {n}), got {st.shape}.")
        return st

    def label_indices(self, y, n_rows: int) -> np.ndarray:
        """Map labels to class indices; −1 for unlabelled (None, or −1 for integer classes).

        Parameters
        ----------
        y : sequence of length N or None
            Labels in ``source.classes``' type.
        n_rows : int
            N, the number of rows the labels belong to.

        Returns
        -------
        ndarray of shape (N,), int64
        """
        return _label_indices(as_components(self.source), y, n_rows)

    @staticmethod
    def _prepare_X(X):
        X = _checks.as_float_matrix(X, "X", allow_nonfinite=True)
        if X.shape[0] < 2:
            raise BurstTooShort(
                f"X has {X.shape[0]} row(s); transfer EM needs at least 2 calibration windows."
            )
        bad = ~np.isfinite(X).all(axis=1)
        if bad.any():
            raise DegenerateBurst(
                f"X contains NaN or inf in {int(bad.sum())} of {X.shape[0]} rows; drop those "
                "windows before fitting."
            )
        return X

    # ---------------------------------------------------------------- one EM run
    def _run_em(self, plan, terms, Xt, log_base, Hstart, H0, should_stop=None):
        """EM from ``Hstart`` towards the shrink target ``H0``; ``should_stop`` as in :meth:`fit`.

        Returns the map (m, n1), the objective trace, the number of M-steps, whether it
        converged and the CG iterations of its M-steps.
        """
        N, n1 = Xt.shape
        n = plan.n
        H0t = np.zeros((plan.m, n1))
        H0t[:, :n] = H0
        if plan.fused:
            return _run_em_fused(plan, terms, Xt, log_base, Hstart, H0t)
        Ht = np.ascontiguousarray(Hstart, dtype=np.float64)
        K = terms.means.shape[0]
        log_a = np.empty((N, K))
        resp = np.empty((N, K))
        trace = []
        cg_iters = []
        converged = False
        n_iter = 0
        prev = None
        while True:
            _check_stop(should_stop)
            ll = _estep(terms, Xt, Ht, log_base, log_a, resp)
            obj = (float(ll.sum()) - 0.5 * plan.lam * _penalty(terms, Ht, H0, n)) / N
            if not np.isfinite(obj):
                raise _diverged(obj, n_iter)
            trace.append(obj)
            if prev is not None and abs(obj - prev) <= plan.tol * max(1.0, abs(prev)):
                converged = True
                break
            if n_iter >= plan.max_iter:
                break
            prev = obj
            Hn, it = self._mstep(plan, terms, Xt, resp, Ht, H0t)
            if it is not None:
                cg_iters.append(it)
            if not np.all(np.isfinite(Hn)):
                raise DegenerateBurst(_NONFINITE_H)
            Ht = np.ascontiguousarray(Hn)
            n_iter += 1
        return Ht, trace, n_iter, converged, cg_iters

    def _mstep(self, plan, terms, Xt, resp, Ht, H0t):
        """Run the M-step the plan chose; return (next map, CG iterations or None)."""
        if plan.masked is None:
            if plan.kind == "shared":
                return ms.mstep_shared(plan, terms, Xt, resp, H0t), None
            return ms.mstep_full(plan, terms, Xt, resp, Ht, H0t)
        Lam, A, R, chol = ms.masked_system(plan, terms, Xt, resp, H0t)
        if plan.masked.blocks is not None:
            return ms.block_pcg(plan.masked.blocks, R, Ht, plan.cg_rtol)
        return ms.mstep_masked(plan, Lam, A, R, chol, Ht)

    # ---------------------------------------------------------------- ring search
    @staticmethod
    def _roll_scores(s, terms, Xt, log_base, n, mask, b0):
        """Score every roll's start map: (C,) objectives before the first M-step.

        The score is the value EM reports before its first M-step (the penalty is zero:
        each roll is its own shrink target).

        Rolling the map is permuting X's channel blocks (``X R_rᵀ``), so no matrix
        product is formed unless a mask cuts into a roll. A burst longer than
        ``SEARCH_MAX_ROWS`` is scored on an evenly strided subset (the scores only rank
        the starts).
        """
        C = s.ring_channels
        N = Xt.shape[0]
        if N > SEARCH_MAX_ROWS:
            keep = np.linspace(0, N - 1, SEARCH_MAX_ROWS).round().astype(np.int64)
            Xt, log_base = Xt[keep], np.ascontiguousarray(log_base[keep])
            N = SEARCH_MAX_ROWS
        X = Xt[:, :n]
        K = terms.means.shape[0]
        log_a = np.empty((N, K))
        resp = np.empty((N, K))
        out = np.empty(C)
        blocks = np.arange(n).reshape(C, n // C)
        for r in range(C):
            Rr = ring_roll_matrix(n, C, r)
            if mask is None or np.array_equal(Rr * mask, Rr):
                Z = X[:, np.roll(blocks, r, axis=0).ravel()]
            else:
                Z = X @ (Rr * mask).T
            _log_joint(terms, np.ascontiguousarray(Z + b0), log_base, log_a)
            out[r] = float(estep.log_responsibilities(log_a, resp).sum()) / N
        out[~np.isfinite(out)] = -np.inf
        return out

    @staticmethod
    def _rotation_search(s, terms, X, yi, n):
        """Score every rotated-and-scaled map ``diag(g) S(θ)`` on a grid of rotations θ.

        S(θ) is :func:`rotation_inverse`; g holds one gain per feature type (g_t on the
        rows of type t). The gains start where the second moment of the mapped burst
        matches the source model's and are refined by EM on the target-space density
        log p(H x) + log|det H| (a coordinate-wise closed form), batched over all θ.

        Returns a list of (θ, H (m, n), score, gains (f,)), best score first, and the
        dict θ → score of every θ; the scores use the mixture-average precision Λ̄ (exact
        for a shared precision, a ranking device otherwise).
        """
        C = s.ring_channels
        if X.shape[0] > SEARCH_MAX_ROWS:
            # The search only ranks starts: an evenly strided subset keeps its cost flat.
            keep = np.linspace(0, X.shape[0] - 1, SEARCH_MAX_ROWS).round().astype(np.int64)
            X, yi = X[keep], yi[keep]
        N = X.shape[0]
        m = s.m
        f = n // C
        src = s.source
        Lam = terms.Lam_bar
        rots = np.arange(0.0, C, s.rotation_step)
        S = rots.size
        # Per feature kind without labels only: a labelled burst's 30 gain updates absorb
        # the blur, and there the per-kind maps chose worse rotations (docs/evaluation.md).
        per_kind = not np.any(yi >= 0)
        R = np.stack([_rotation_map(s, n, r, per_kind) for r in rots])  # (S, m, n)
        # log|det S(θ)| with the singular values floored: at half a spacing S is singular
        # (the blur removed the alternating pattern), and an unfloored Jacobian would
        # rule out exactly the rotation that happened.
        logdet_R = _floored_logdet(R, s.jacobian_floor)
        U = X[None] @ R.transpose(0, 2, 1)  # (S, N, m): the burst mapped by each S(θ)
        if src.shared_precision:
            P = src.prec_factor[0]
            base = _log_base(src, yi)
        else:
            P = np.linalg.cholesky(Lam)
            base = (_log_base(src, yi) - 0.5 * src.log_det_prec[None]
                    + 0.5 * float(np.linalg.slogdet(Lam)[1]))
        nu = src.means @ P
        nu2 = np.einsum("ki,ki->k", nu, nu)
        T = (np.arange(m)[:, None] % f == np.arange(f)[None]).astype(float)  # (m, f)
        var = np.diag(np.linalg.inv(Lam))
        comp_w = np.exp(base - np.logaddexp.reduce(base, axis=1, keepdims=True))  # (N, K)
        target = (comp_w @ (src.means ** 2 + var[None])).sum(axis=0) @ T
        UU = U.transpose(0, 2, 1) @ U  # (S, m, m)
        have = np.diagonal(UU, axis1=1, axis2=2) @ T  # (S, f)
        g = np.sqrt(np.where(have > 0, target / np.where(have > 0, have, 1.0), 1.0))
        # Normal matrices of the gains: G_s = Tᵀ (Λ ⊙ Σ_j u_j u_jᵀ) T (+ a tiny ridge).
        G = T.T @ (UU * Lam[None]) @ T
        G += _SEARCH_RIDGE * (np.trace(G, axis1=1, axis2=2) / f)[:, None, None] * np.eye(f)
        n_it = s.search_iter
        if n_it is None:
            n_it = SEARCH_ITER_LABELLED if np.any(yi >= 0) else SEARCH_ITER_UNLABELLED
        prev = np.full(S, np.nan)
        for it in range(n_it + 1):
            ZP = (U * (g @ T.T)[:, None, :]) @ P
            log_a = base[None] - 0.5 * (np.einsum("sji,sji->sj", ZP, ZP)[..., None]
                                        - 2.0 * ZP @ nu.T + nu2)
            amax = log_a.max(axis=2, keepdims=True)
            amax[~np.isfinite(amax)] = 0.0
            ll = np.log(np.exp(log_a - amax).sum(axis=2)) + amax[..., 0]
            # The likelihood of the *target* points: log p(H x) + log |det H|. Without the
            # Jacobian a smoothing map (which shrinks the spread) would always win.
            jac = logdet_R + np.log(np.abs(g)) @ T.sum(axis=0)
            with np.errstate(invalid="ignore"):
                obj = np.where(np.all(np.isfinite(ll), axis=1), ll.mean(axis=1) + jac, -np.inf)
                done = np.abs(obj - prev) <= 1e-7 * np.maximum(1.0, np.abs(prev))
            if it == n_it or np.all(done | ~np.isfinite(obj)):
                break
            prev = obj
            resp = np.exp(log_a - ll[..., None])
            resp[~np.isfinite(resp)] = 0.0
            rhs = np.einsum("sji,sji->si", U, resp @ (src.means @ Lam)) @ T  # (S, f)
            # Coordinate ascent on Q(g) = -½ gᵀG g + rhsᵀg + N C Σ_t log g_t (the Jacobian
            # term keeps the gains from the regression dilution a plain least squares has):
            # each coordinate's maximiser is the positive root of a quadratic.
            for _ in range(2):
                for t in range(f):
                    Gtt = G[:, t, t]
                    b_t = rhs[:, t] - np.einsum("su,su->s", G[:, t], g) + Gtt * g[:, t]
                    g[:, t] = (b_t + np.sqrt(b_t ** 2 + 4.0 * Gtt * N * C)) / (2.0 * Gtt)
        objectives = {float(r): float(o) for r, o in zip(rots, obj)}
        out = []
        for s_ in np.argsort(-obj):
            if not (np.isfinite(obj[s_]) and np.all(np.isfinite(g[s_]))):
                continue
            out.append((float(rots[s_]), (g[s_] @ T.T)[:, None] * R[s_], float(obj[s_]), g[s_]))
        return out, objectives

    # ---------------------------------------------------------------- public
    def fit(self, X, y=None, *, H_init=None, b_init=None, should_stop=None) -> "TransferEM":
        """Learn H (and b) from a calibration burst.

        Parameters
        ----------
        X : array-like of shape (N, n)
            Target-space features, one window per row; N ≥ 2, all finite.
        y : sequence of length N, optional
            Labels in ``source.classes``' type; None (or −1 for integer classes)
            marks an unlabelled row. None means all rows are unlabelled.
        H_init : ndarray of shape (m, n), optional
            Start of EM (e.g. the current H on recalibration).
        b_init : ndarray of shape (m,), optional
            Start of the offset (only with ``bias=True``).
        should_stop : callable, optional
            Called without arguments before every EM start and every iteration (the
            fused shared-precision kernel runs a start in one call); when it returns
            True the fit raises :class:`~emtl_stream.errors.FitCancelled`.

        Returns
        -------
        self
        """
        s = self._validate()
        X = self._prepare_X(X)
        N, n = X.shape
        m = s.m
        src = s.source
        yi = _label_indices(src, y, N)
        kind = s.kind
        if s.ring_channels is not None:
            C = s.ring_channels
            if m != n or n % C:
                raise ValueError(
                    f"ring_channels={C} needs a square map with n divisible by it; got m={m}, "
                    f"n={n}."
                )
        mask = self._resolve_mask(s, n)
        if mask is None and s.penalty == "identity":
            mask = np.ones((m, n), dtype=bool)  # Λ no longer drops out: general solver
        Xt = _augment(X, s.bias)
        n1 = Xt.shape[1]
        terms = ms.source_terms(src, s.penalty, kind)
        # λ from the feature columns only, so the unpenalised offset column cannot
        # break scale invariance.
        lam = ms.penalty_weight(X, mask, terms, s.reg, s.reg_scale)
        plan = ms.build_plan(terms, X, Xt, mask, kind=kind, penalty=s.penalty, lam=lam,
                             bias=s.bias, solver=s.solver, dense_max=s.dense_max,
                             masked_dense_max=s.masked_dense_max, block_jacobi=BLOCK_JACOBI_CG,
                             max_iter=s.max_iter, tol=s.tol, cg_rtol=s.cg_rtol)
        log_base = _log_base(src, yi)
        if np.any(np.all(log_base == -np.inf, axis=1)):
            raise ValueError("a labelled row has no component that can carry its label.")

        b0 = np.zeros(m)
        if b_init is not None:
            b0 = np.asarray(b_init, dtype=np.float64).reshape(-1)
            if b0.shape != (m,) or not np.all(np.isfinite(b0)):
                raise ValueError(f"b_init must be a finite vector of shape ({m},).")

        def start(Hs, bs=None):
            Ht = np.zeros((m, n1))
            Ht[:, :n] = Hs if mask is None else Hs * mask
            if s.bias:
                Ht[:, n] = b0 if bs is None else bs
            return Ht

        starts = []  # (label, H start, shrink target, offset start, rotation, taps)
        H0_user = _resolve_H0(s.shrink_to, m, n)
        if mask is not None:
            H0_user = H0_user * mask  # a penalty on fixed entries would only add a constant
        if H_init is not None:
            Hi = np.ascontiguousarray(H_init, dtype=np.float64)
            if Hi.shape != (m, n) or not np.all(np.isfinite(Hi)):
                raise ValueError(f"H_init must be a finite array of shape ({m}, {n}).")
        search_obj = None
        if s.ring_channels is not None and s.rotation_search == "continuous":
            cands, objectives = self._rotation_search(s, terms, X, yi, n)
            search_obj = objectives if cands else None
            picked = []
            for rot, Hc, _, gains in cands:
                # distinct rotations only: neighbours of the winner are the same basin
                if any(min(abs(rot - r), s.ring_channels - abs(rot - r)) < 0.75
                       for r in picked):
                    continue
                picked.append(rot)
                label = int(round(rot)) % s.ring_channels
                Hc = Hc if mask is None else Hc * mask  # a no-op for structure="channel"
                starts.append((label, Hc, Hc, None, rot, gains))
                if np.any(yi >= 0):
                    # With labels, the same rotation at unit gain too: a gain fitted to the
                    # first half second of each prompt (the onset of the contraction) can
                    # be far off; the refined fits decide. Unlabelled bursts span whole
                    # contractions, and their moment-matched gain is the better one.
                    Hu = rotation_inverse(n, s.ring_channels, rot, s.rotation_ridge)
                    Hu = Hu if mask is None else Hu * mask
                    starts.append((label, Hu, Hu, None, rot, np.ones_like(gains)))
                if len(picked) == s.n_refine:
                    break
        roll_scores = None
        if s.ring_channels is not None and not starts:
            C = s.ring_channels
            keep = s.roll_starts
            if keep is None:
                keep = C if C <= ROLL_PRUNE_MIN_CHANNELS else ROLL_PRUNE_KEEP
            rolls = range(C)
            if keep < C:
                sc = self._roll_scores(s, terms, Xt, log_base, n, mask, b0)
                roll_scores = {r: float(v) for r, v in enumerate(sc)}
                # stable order: a tie keeps the smaller roll, as the full search does
                rolls = sorted(np.argsort(-sc, kind="stable")[:keep].tolist())
            for r in rolls:
                Pr_ = ring_roll_matrix(n, C, r)
                if mask is not None:
                    Pr_ = Pr_ * mask  # a no-op for structure="channel"
                starts.append((r, Pr_, Pr_, None, float(r), None))
        if s.ring_channels is not None:
            if H_init is not None:
                starts.append((None, Hi, H0_user, None, None, None))
        else:
            if H_init is not None:
                Hs = Hi
            elif isinstance(s.shrink_to, str):
                Hs = rectangular_identity(m, n)
            else:
                Hs = H0_user
            starts.append((None, Hs, H0_user, None, None, None))

        best = None
        roll_obj = {}
        cg_iters = []
        for label, Hs, H0, bs, rot, taps in starts:
            _check_stop(should_stop)
            Hst = start(Hs, bs)
            Ht, trace, n_iter, conv, cg = self._run_em(plan, terms, Xt, log_base, Hst, H0,
                                                       should_stop)
            cg_iters += cg
            if label is not None and search_obj is None:
                roll_obj[label] = trace[-1]
            logger.debug("transfer EM start %s (rotation %s): objective %s after %s iterations",
                         label, rot, trace[-1], n_iter)
            score = trace[-1]
            if search_obj is not None:
                # Candidates with different priors are compared as densities of the target
                # points (log |det H| added), as in the search.
                # Floored as in the search: the refined map of a half-spacing rotation
                # keeps S(θ)'s near-zero singular values, and an unfloored Jacobian
                # would hand the win to a start that never rotates (the live map).
                score = score + float(_floored_logdet(Ht[:, :n], s.jacobian_floor))
            if best is None or score > best[-1]:
                best = (Ht, trace, n_iter, conv, label, H0, rot, taps, Hst[:, :n], score)
        if search_obj is not None:
            roll_obj = search_obj
        Ht, trace, n_iter, conv, label, H0, rot, taps, Hst, _ = best
        self.source_ = src
        self.source_terms_ = terms
        self.penalty_ = s.penalty
        self.cg_iters_ = cg_iters
        self.H_ = np.ascontiguousarray(Ht[:, :n])
        self.b_ = np.ascontiguousarray(Ht[:, n]) if s.bias else np.zeros(m)
        self.n_iter_ = n_iter
        self.converged_ = conv
        self.log_likelihood_ = trace
        self.kind_ = kind
        self.lambda_ = lam
        self.H0_ = H0
        self.best_roll_ = label
        self.roll_objectives_ = roll_obj
        self.roll_scores_ = roll_scores
        self.rotation_ = rot
        self.ring_taps_ = taps
        self.H_start_ = np.ascontiguousarray(Hst)
        self.classifier_ = MappedClassifier(src, self.H_, self.b_)
        self.mask_ = mask
        self.guard_ = None
        guard = s.guard if s.guard is not None else s.rotation_search == "continuous"
        if guard:
            self._apply_guard(s, X, yi, H_init, b_init)
        if not conv:
            warnings.warn(
                f"transfer EM stopped at max_iter={s.max_iter} before the objective changed "
                f"by less than tol={s.tol:g}; increase max_iter or tol.",
                TransferConvergenceWarning, stacklevel=2,
            )
        logger.info("transfer EM (%s) fitted: %s iterations, objective %.6g, roll %s", kind,
                    n_iter, trace[-1], label)
        return self

    def _apply_guard(self, s, X, yi, H_init, b_init):
        """Fall back to the live map when it predicts held-out burst windows better."""
        lab = np.flatnonzero(yi >= 0)
        classes, counts = np.unique(yi[lab], return_counts=True)
        if lab.size == 0 or counts.min() < 2:
            return
        fold = np.empty(lab.size, dtype=np.int64)
        for c in classes:  # alternate within each class: both halves see every class
            sel = np.flatnonzero(yi[lab] == c)
            fold[sel] = np.arange(sel.size) % 2
        m, n = self.H_.shape
        H_live = (np.eye(m, n) if H_init is None else np.asarray(H_init, dtype=np.float64))
        b_live = np.zeros(m) if b_init is None or not s.bias else np.asarray(b_init, float)
        live = MappedClassifier(s.source, H_live, b_live)
        # The half fits refine the winning start towards the same prior (no new search):
        # the guard asks whether adapting helps, not which rotation is best.
        params = {k: getattr(self, k) for k in (
            "kind", "bias", "reg", "reg_scale", "max_iter", "tol", "solver", "dense_max",
            "cg_rtol", "penalty", "masked_dense_max")}
        params["structure"] = self.mask_ if self.mask_ is not None else self.structure
        params["shrink_to"] = self.H0_
        cls = s.source.classes.tolist()
        score_new = score_live = 0.0
        # Two-fold: each half is predicted by a map refined on the other. With 3-4 windows
        # per class a single split lets one odd half decide (docs/evaluation.md).
        for k in (0, 1):
            train, held = lab[fold != k], lab[fold == k]
            yt = np.full(X.shape[0], -1, dtype=np.int64)
            yt[train] = yi[train]
            keep = np.flatnonzero((yi < 0) | (yt >= 0))  # unlabelled rows stay in
            half = TransferEM(s.source, guard=False, **params)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TransferConvergenceWarning)
                half.fit(X[keep], [None if v < 0 else cls[v] for v in yt[keep]],
                         H_init=self.H_start_, b_init=b_init)
            score_new += float(np.sum(half.classifier_.predict_index(X[held]) == yi[held]))
            score_live += float(np.sum(live.predict_index(X[held]) == yi[held]))
        # Ties go to the live map: a new map must earn its place on windows it has not seen.
        kept = score_live >= score_new
        self.guard_ = {"new": score_new / lab.size, "live": score_live / lab.size,
                       "kept_live": bool(kept)}
        if kept:
            logger.info("transfer EM guard: the live map predicts held-out burst windows "
                        "at least as well (%d vs %d correct); keeping it", score_live, score_new)
            self.H_ = np.ascontiguousarray(H_live)
            self.b_ = np.ascontiguousarray(b_live)
            self.classifier_ = live

    def _check_fitted(self):
        check_is_fitted(self, "H_")

    def transform(self, X) -> np.ndarray:
        """Map target features to the source space: ``X @ H_.T + b_``, shape (N, m).

        Parameters
        ----------
        X : array-like of shape (N, n)
            Target-space features, one window per row.

        Returns
        -------
        ndarray of shape (N, m)
        """
        self._check_fitted()
        X = _checks.as_float_matrix(X, "X", allow_nonfinite=True, n_columns=self.H_.shape[1])
        return X @ self.H_.T + self.b_

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities of mapped rows, shape (N, L), columns in ``source.classes`` order.

        Parameters
        ----------
        X : array-like of shape (N, n)
            Target-space features, one window per row.

        Returns
        -------
        ndarray of shape (N, L)
        """
        self._check_fitted()
        return self.classifier_.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        """Most probable class (values of ``source.classes``), shape (N,).

        Parameters
        ----------
        X : array-like of shape (N, n)
            Target-space features, one window per row.

        Returns
        -------
        ndarray of shape (N,)
        """
        self._check_fitted()
        idx = self.classifier_.predict_index(X)
        if np.any(idx < 0):
            raise ValueError("X contains NaN or inf rows; drop them before predict().")
        return self.source_.classes[idx]

    def objective(self, X, y=None, H=None, b=None) -> float:
        """Penalised mean log-likelihood of a burst under a given map.

        Uses the fitted λ and shrink target, so the daemon can compare a new H with
        the current one on the same burst.

        Parameters
        ----------
        X : array-like of shape (N, n)
        y : sequence of length N, optional
        H : ndarray of shape (m, n), optional
            Default: ``H_``.
        b : ndarray of shape (m,), optional
            Default: ``b_`` (ignored without bias unless given).

        Returns
        -------
        float
        """
        self._check_fitted()
        X = self._prepare_X(X)
        N, n = X.shape
        if n != self.H_.shape[1]:
            raise ValueError(f"X must have {self.H_.shape[1]} columns, got {n}.")
        H = self.H_ if H is None else np.ascontiguousarray(H, dtype=np.float64)
        if H.shape != self.H_.shape:
            raise ValueError(f"H must have shape {self.H_.shape}, got {H.shape}.")
        b = self.b_ if b is None else np.asarray(b, dtype=np.float64).reshape(-1)
        if not (np.all(np.isfinite(H)) and np.all(np.isfinite(b))):
            return -np.inf
        src = self.source_
        yi = _label_indices(src, y, N)
        Ht = np.ascontiguousarray(np.hstack([H, b[:, None]]))
        Xt = np.ascontiguousarray(np.hstack([X, np.ones((N, 1))]))
        K = src.n_components
        terms = self.source_terms_
        ll = _estep(terms, Xt, Ht, _log_base(src, yi), np.empty((N, K)), np.empty((N, K)))
        return (float(ll.sum()) - 0.5 * self.lambda_ * _penalty(terms, Ht, self.H0_, n)) / N