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

import numpy as np
from scipy import linalg

from .. import _checks
from ..errors import BurstTooShort, DegenerateBurst, TransferConvergenceWarning
from ..kernels import estep, linalg as klinalg, mstep
from ..logs import logger
from .classify import MappedClassifier, as_components
from .rotation import rotation_prior

_LOG_2PI = float(np.log(2.0 * np.pi))

#: Largest number of unknowns m·n' for which the per-component M-step assembles
#: and factors the dense Kronecker system; above it, preconditioned CG. Measured
#: (tools/bench_transfer.py, 1 BLAS thread, 24 components): the Kronecker-
#: preconditioned CG needs 8-14 iterations and is already 4x faster than the dense
#: Cholesky at m·n' = 256 and 18x at 1024, so the dense path is kept only for tiny maps.
DENSE_MAX_UNKNOWNS = 128

#: Same threshold for structured maps (``structure`` not "dense"), counted in free
#: entries p. The shared kind factors its masked system once per fit and then only
#: back-substitutes, so a dense Cholesky pays off up to a much larger size
#: (8 channels x 4 feature types: p = 256, 32 more with an offset).
MASKED_DENSE_MAX_UNKNOWNS = 1500

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
#: per-feature-type block preconditioner (:meth:`TransferEM._setup_blocks`) instead of the
#: generic Kronecker-preconditioned CG kernel. Measured at 64 channels x 4 features
#: (tools/bench_transfer.py --ring64): about 3x fewer CG iterations. False restores the
#: kernel (the benchmark times both side by side).
BLOCK_JACOBI_CG = True

#: Roll search ("roll") on rings with more electrodes than this: every roll is scored by
#: the objective of its start map (one cheap E-step, no M-step) and EM runs only from the
#: ROLL_PRUNE_KEEP best. Up to this size EM runs from every roll, as it always did: at 8
#: channels a full search costs a few milliseconds, and the pruned one is shown to pick the
#: same roll on three subjects of the CIIL electrode-shift recordings only (labelled and
#: unlabelled bursts), not on all eighteen; at 64 channels one start of the
#: channel-structured map costs more than a whole 8-channel search.
ROLL_PRUNE_MIN_CHANNELS = 16

#: Rolls refined by EM in a pruned roll search. At fractional shifts a neighbour of the
#: best-scored roll can overtake it during EM: on the 64-channel synthetic armband
#: (channel-structured map, labelled burst, shift 37.25) the exhaustive search's winner
#: had the 4th best start score, so 3 was not enough; 5 covers it (tests/model).
ROLL_PRUNE_KEEP = 5

#: Ridge ε of the fractional-rotation prior (RᵀR + εI)⁻¹Rᵀ: a rotation between two
#: electrodes blurs neighbouring channels, and at half a spacing R is singular (even C).
ROTATION_RIDGE = 0.05


def channel_mask(n: int, n_channels: int) -> np.ndarray:
    """Per-feature-type channel mixing: H[i, j] free only when i % f == j % f.

    With channel-major features (f = n // C features per channel), every mapped
    feature is then a mixture of the *same feature type* across electrodes.

    Parameters
    ----------
    n : int
        Feature dimension (source and target), divisible by ``n_channels``.
    n_channels : int

    Returns
    -------
    ndarray of shape (n, n), bool
    """
    f = n // n_channels
    t = np.arange(n) % f
    return t[:, None] == t[None, :]


def rectangular_identity(m: int, n: int) -> np.ndarray:
    """Identity padded with zeros, shape (m, n)."""
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


def _factor_masked(S):
    """Cholesky factor of a masked M-step system, or DegenerateBurst."""
    try:
        return linalg.cho_factor(S, lower=True, check_finite=False)
    except linalg.LinAlgError:
        raise DegenerateBurst(
            "the structured M-step system is singular (rank-deficient burst with reg=0?); "
            "increase reg."
        ) from None


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
        Relative residual at which CG stops.
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
        class), the second half is predicted by a map refined on the first from the
        winning start towards the same prior, and the held-out accuracies are compared
        (a tie keeps the live map). Needs at least 2 labelled rows per class in the burst, else it
        is skipped. Default: on with ``rotation_search="continuous"``, off otherwise.
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
        The guard's held-out scores ``{"new": …, "live": …, "kept_live": bool}``.
    classifier_ : MappedClassifier
    mask_ : ndarray of shape (m, n), bool, or None
        Free entries of H (None for a dense map solved in closed form).
    penalty_ : str
        "precision" or "identity" (``penalty`` with "auto" resolved).
    """

    def __init__(self, source, kind="auto", bias=False, reg=1.0, reg_scale="relative",
                 shrink_to="identity", max_iter=100, tol=1e-6, ring_channels=None, *,
                 solver="auto", dense_max=DENSE_MAX_UNKNOWNS, cg_rtol=1e-10,
                 structure="dense", penalty="auto",
                 masked_dense_max=MASKED_DENSE_MAX_UNKNOWNS, rotation_search="roll",
                 n_refine=1, roll_starts=None, search_iter=None, rotation_step=0.25,
                 rotation_ridge=ROTATION_RIDGE, jacobian_floor=0.6,
                 guard=None, rotation_counts=None):
        self.source = as_components(source)
        self.kind = _checks.check_option(kind, ("auto", "shared", "full"), "kind")
        self.bias = bool(bias)
        self.reg = _checks.ensure_float(reg, "reg", minimum=0.0)
        self.reg_scale = _checks.check_option(reg_scale, ("relative", "absolute"), "reg_scale")
        self.shrink_to = shrink_to
        if isinstance(shrink_to, str):
            _checks.check_option(shrink_to, ("identity", "zero"), "shrink_to")
        self.max_iter = _checks.ensure_int(max_iter, "max_iter", minimum=1)
        self.tol = _checks.ensure_float(tol, "tol", minimum=0.0)
        self.ring_channels = (None if ring_channels is None
                              else _checks.ensure_int(ring_channels, "ring_channels", minimum=1))
        self.solver = _checks.check_option(solver, ("auto", "dense", "cg"), "solver")
        self.dense_max = _checks.ensure_int(dense_max, "dense_max", minimum=0)
        self.cg_rtol = _checks.ensure_float(cg_rtol, "cg_rtol", minimum=0.0)
        self.masked_dense_max = _checks.ensure_int(masked_dense_max, "masked_dense_max",
                                                   minimum=0)
        self.rotation_search = _checks.check_option(rotation_search, ("continuous", "roll"),
                                                    "rotation_search")
        self.n_refine = _checks.ensure_int(n_refine, "n_refine", minimum=1, maximum=64)
        self.roll_starts = (None if roll_starts is None else
                            _checks.ensure_int(roll_starts, "roll_starts", minimum=1))
        self.search_iter = (None if search_iter is None else
                            _checks.ensure_int(search_iter, "search_iter", minimum=1,
                                               maximum=1000))
        self.guard = None if guard is None else bool(guard)
        self.jacobian_floor = _checks.ensure_float(jacobian_floor, "jacobian_floor",
                                                   minimum=0.0, maximum=1.0)
        self.rotation_ridge = _checks.ensure_float(rotation_ridge, "rotation_ridge",
                                                   minimum=0.0, strict_min=True)
        self.rotation_step = _checks.ensure_float(rotation_step, "rotation_step",
                                                  minimum=1.0 / 64, maximum=1.0)
        self.rotation_counts = (None if rotation_counts is None else
                                tuple(int(t) for t in rotation_counts))
        src = self.source
        self._m = src.n_features
        self.structure = self._check_structure(structure)
        self.penalty = _checks.check_option(penalty, ("auto", "precision", "identity"), "penalty")
        self._pi = np.exp(src.log_weights - np.logaddexp.reduce(src.log_weights))
        # Λ_k = P_k P_kᵀ through batched BLAS (an unoptimised einsum costs ~10 ms at m = 128).
        if src.shared_precision:
            P0 = src.prec_factor[0]
            lam0 = P0 @ P0.T
            self._Lam = np.ascontiguousarray(np.broadcast_to(lam0, src.prec_factor.shape))
            self._Lam_bar = np.ascontiguousarray(lam0)
        else:
            self._Lam = np.ascontiguousarray(src.prec_factor @ src.prec_factor.transpose(0, 2, 1))
            self._Lam_bar = np.ascontiguousarray(np.tensordot(self._pi, self._Lam, axes=1))
        pen = self.penalty
        if pen == "auto":
            pen = "precision" if isinstance(structure, str) and structure == "dense" else "identity"
        self.penalty_ = pen
        #: Π of the penalty λ‖H − H₀‖²_Π = λ tr((H − H₀)ᵀ Π (H − H₀)).
        self._Pen = self._Lam_bar if pen == "precision" else np.eye(self._m)
        impossible = np.all(src.log_label_given_comp == -np.inf, axis=1)
        self._class_without_comp = set(np.flatnonzero(impossible).tolist())
        self._class_lookup_set = set(src.classes.tolist())

    # ---------------------------------------------------------------- helpers
    def _check_structure(self, structure):
        if isinstance(structure, str):
            return _checks.check_option(structure, ("dense", "channel"), "structure")
        mask = np.asarray(structure)
        if mask.dtype != bool:
            raise TypeError(
                f"structure must be 'dense', 'channel' or a boolean mask, got an array of dtype "
                f"{mask.dtype}; pass mask.astype(bool)."
            )
        if mask.ndim != 2 or mask.shape[0] != self._m:
            raise ValueError(
                f"structure mask must have shape ({self._m}, n) (one row per source feature), "
                f"got {mask.shape}."
            )
        empty = np.flatnonzero(~mask.any(axis=1))
        if empty.size:
            raise ValueError(
                f"structure mask has no free entry in row(s) {empty[:10].tolist()}; every mapped "
                "feature needs at least one True (else it is the constant offset only)."
            )
        return mask.copy()

    def _resolve_mask(self, n):
        """Boolean (m, n) mask of free entries, or None for a dense map."""
        st = self.structure
        if isinstance(st, str):
            if st == "dense":
                return None
            C = self.ring_channels
            if C is None or self._m != n or n % C:
                raise ValueError(
                    f"structure='channel' needs ring_channels=C with a square map and n divisible "
                    f"by C (channel-major features); got ring_channels={C}, m={self._m}, n={n}."
                )
            return channel_mask(n, C)
        if st.shape != (self._m, n):
            raise ValueError(f"structure mask must have shape ({self._m}, {n}), got {st.shape}.")
        return st

    def _kind(self):
        if self.kind == "auto":
            return "shared" if self.source.shared_precision else "full"
        return self.kind

    def label_indices(self, y, n_rows: int) -> np.ndarray:
        """Map labels to class indices; −1 for unlabelled (None, or −1 for integer classes).

        Parameters
        ----------
        y : sequence of length N or None
        n_rows : int

        Returns
        -------
        ndarray of shape (N,), int64
        """
        if y is None:
            return np.full(n_rows, -1, dtype=np.int64)
        fast = self._label_indices_int(y, n_rows)
        if fast is not None:
            return fast
        y = list(y) if not isinstance(y, np.ndarray) else y.tolist()
        if len(y) != n_rows:
            raise ValueError(f"y must have one label per row of X ({n_rows}), got {len(y)}.")
        classes = self.source.classes
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
            if idx in self._class_without_comp:
                raise ValueError(f"class {lab!r} has no component in the source model.")
            out[j] = idx
        return out

    def _label_indices_int(self, y, n_rows):
        """Vectorised label lookup for integer arrays; None → use the general path."""
        classes = self.source.classes
        if not (isinstance(y, np.ndarray) and y.ndim == 1 and y.dtype.kind in "iu"
                and classes.dtype.kind in "iu" and len(y) == n_rows):
            return None
        sorter = np.argsort(classes, kind="stable")
        pos = np.minimum(np.searchsorted(classes, y, sorter=sorter), len(classes) - 1)
        idx = sorter[pos]
        found = classes[idx] == y
        if -1 not in self._class_lookup_set:
            unl = y == -1
            found |= unl
            idx = np.where(unl, -1, idx)
        if not found.all():
            return None  # the general path names the unknown label
        if self._class_without_comp and np.isin(idx, list(self._class_without_comp)).any():
            return None
        return idx.astype(np.int64)

    def _prepare_X(self, X):
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

    def _augment(self, X):
        if self.bias:
            return np.ascontiguousarray(np.hstack([X, np.ones((X.shape[0], 1))]))
        return X

    def _log_base(self, yi):
        """(N, K) per-row constants: log π + log ρ_{y_j} (0 if unlabelled) + ½ log det − ½ m log 2π."""
        src = self.source
        c = src.log_weights + 0.5 * src.log_det_prec - 0.5 * self._m * _LOG_2PI
        base = np.tile(c, (len(yi), 1))
        lab = yi >= 0
        base[lab] += src.log_label_given_comp[yi[lab]]
        return np.ascontiguousarray(base)

    def _resolve_H0(self, n, shrink_to=None):
        st = self.shrink_to if shrink_to is None else shrink_to
        if isinstance(st, str):
            return np.zeros((self._m, n)) if st == "zero" else rectangular_identity(self._m, n)
        H0 = np.ascontiguousarray(st, dtype=np.float64)
        if H0.shape != (self._m, n):
            raise ValueError(f"shrink_to must have shape ({self._m}, {n}), got {H0.shape}.")
        if not np.all(np.isfinite(H0)):
            raise ValueError("shrink_to contains NaN or inf.")
        return H0

    def _penalty(self, Ht, H0, n):
        Dlt = Ht[:, :n] - H0
        return float(np.sum(Dlt * (self._Pen @ Dlt)))

    def _estep(self, Xt, Ht, log_base, log_a, resp):
        Z = np.ascontiguousarray(Xt @ Ht.T)
        src = self.source
        if src.shared_precision:
            P = src.prec_factor[0]
            estep.log_joint_shared(np.ascontiguousarray(Z @ P), self._nu, log_base, log_a)
        else:
            estep.log_joint_full(Z, src.means, src.prec_factor, log_base, log_a)
        return estep.log_responsibilities(log_a, resp)

    # ---------------------------------------------------------------- M-steps
    def _mstep_shared(self, Xt, resp, H0t, lam, chol):
        rhs = np.empty((Xt.shape[1], self._m))
        mstep.shared_rhs(resp, self.source.means, Xt, rhs)
        rhs += lam * H0t.T
        return np.ascontiguousarray(linalg.cho_solve(chol, rhs).T)

    def _mstep_full(self, Xt, resp, Ht, H0t, lam, Dvec, Pr, use_dense):
        K = self._Lam.shape[0]
        n1 = Xt.shape[1]
        C = np.empty((K, n1, n1))
        c = np.empty((K, n1))
        mstep.weighted_stats(Xt, resp, C, c)
        A = C + (lam * self._pi)[:, None, None] * np.diag(Dvec)[None]
        A = np.ascontiguousarray(A)
        R = self._Lam_mu.T @ c + lam * (self._Lam_bar @ H0t)
        R = np.ascontiguousarray(R)
        if use_dense:
            p = self._m * n1
            S = np.empty((p, p))
            mstep.kron_assemble(self._Lam, A, S)
            try:
                sol = linalg.cho_solve(linalg.cho_factor(S, lower=True, check_finite=False),
                                       R.ravel(), check_finite=False)
            except linalg.LinAlgError:
                raise DegenerateBurst(
                    "the per-component M-step system is singular (rank-deficient burst with "
                    "reg=0?); increase reg."
                ) from None
            return sol.reshape(self._m, n1)
        w = np.trace(A, axis1=1, axis2=2)
        Lw = np.ascontiguousarray(np.einsum("k,kij->ij", w / w.sum(), self._Lam))
        Pl = klinalg.spd_inverse(Lw)
        if not np.all(np.isfinite(Pl)):
            Pl = np.ascontiguousarray(np.linalg.pinv(Lw))
        H = np.array(Ht, copy=True)
        maxiter = max(50, 10 * self._m * n1) if self.cg_rtol > 0 else 10 * self._m * n1
        it, rel = mstep.pcg_sylvester(self._Lam, A, R, Pl, Pr, H, self.cg_rtol, maxiter)
        self._cg_iters.append(int(it))
        if rel > 1e-6:
            logger.warning("CG M-step stopped at relative residual %s after %s iterations",
                           rel, int(it))
        return H

    def _mstep_masked(self, Xt, resp, Ht, H0t, lam, setup):
        """Exact minimiser over the free entries (shared or per-component precisions)."""
        fr = setup["free"]
        # S = Σ_k Λ_k ⊗ C_k + λ Π ⊗ D, handed to the kernels as the K+1 terms
        # (Λ_1, C_1), …, (Λ_K, C_K), (Π, λD); shared: (Λ, X̃ᵀX̃), (Π, λD), or one term
        # Λ ⊗ (X̃ᵀX̃ + λD) when Π = Λ.
        if setup["kind"] == "shared":
            rhs = np.empty((Xt.shape[1], self._m))
            mstep.shared_rhs(resp, self.source.means, Xt, rhs)
            R = setup["Lam_s"] @ rhs.T + lam * (self._Pen @ H0t)
            Lam, A = setup["Lam_terms"], setup["A_terms"]
            chol = setup.get("S_chol")
        else:
            K = self._Lam.shape[0]
            n1 = Xt.shape[1]
            C = np.empty((K + 1, n1, n1))
            c = np.empty((K, n1))
            mstep.weighted_stats(Xt, resp, C[:K], c)
            C[K] = lam * np.diag(setup["Dvec"])
            Lam = setup["Lam_terms"]
            A = C
            R = self._Lam_mu.T @ c + lam * (self._Pen @ H0t)
            chol = None
            if setup["dense"]:
                S = np.empty((fr.size, fr.size))
                mstep.kron_assemble_masked(Lam, A, setup["fi"], setup["fa"], S)
                chol = _factor_masked(S)
        if setup["dense"]:
            H = np.zeros_like(Ht)
            H.ravel()[fr] = linalg.cho_solve(chol, R.ravel()[fr], check_finite=False)
            return H
        if "blocks" in setup:
            return self._block_pcg(setup, R, Ht)
        if setup["kind"] == "shared" and self.penalty_ == "precision":
            Pl, Pr = setup["Pl_s"], setup["Pr"]
        else:
            w = np.trace(A, axis1=1, axis2=2)
            Lw = np.ascontiguousarray(np.einsum("k,kij->ij", w / w.sum(), Lam))
            Pl = klinalg.spd_inverse(Lw)
            if not np.all(np.isfinite(Pl)):
                Pl = np.ascontiguousarray(np.linalg.pinv(Lw))
            Pr = setup["Pr"]
        H = np.array(Ht, copy=True)
        p = fr.size
        maxiter = max(50, 10 * p) if self.cg_rtol > 0 else 10 * p
        it, rel = mstep.pcg_sylvester_masked(np.ascontiguousarray(Lam), A,
                                             np.ascontiguousarray(R), Pl, Pr, setup["Mf"], H,
                                             self.cg_rtol, maxiter)
        self._cg_iters.append(int(it))
        if rel > 1e-6:
            logger.warning("masked CG M-step stopped at relative residual %s after %s iterations",
                           rel, int(it))
        return H

    # ---------------------------------------------------------------- one EM run
    def _run_em_fused(self, Xt, log_base, Hstart, H0t, lam, n, setup):
        """Shared precision, dense map, Λ̄ penalty: the whole loop in one kernel call."""
        Ht = np.array(Hstart, dtype=np.float64, order="C")
        trace = np.empty(self.max_iter + 1)
        n_iter, status, nt = mstep.em_shared(Xt, Ht, H0t, setup["P"], self._nu, log_base,
                                             setup["means"], setup["Ainv"], lam, n, self.tol,
                                             self.max_iter, trace)
        if status == -1:
            raise DegenerateBurst(
                f"the penalised log-likelihood became {trace[nt - 1]} at iteration {n_iter}; the "
                "burst is too far from the source model (check feature scaling)."
            )
        if status == -2:
            raise DegenerateBurst(
                "the M-step produced a non-finite H (singular burst); increase reg."
            )
        return Ht, trace[:nt].tolist(), n_iter, status == 1

    def _run_em(self, Xt, log_base, Hstart, H0, lam, n, setup):
        N, n1 = Xt.shape
        kind = setup["kind"]
        H0t = np.zeros((self._m, n1))
        H0t[:, :n] = H0
        if setup.get("fast"):
            return self._run_em_fused(Xt, log_base, Hstart, H0t, lam, n, setup)
        Ht = np.ascontiguousarray(Hstart, dtype=np.float64)
        K = self.source.n_components
        log_a = np.empty((N, K))
        resp = np.empty((N, K))
        trace = []
        converged = False
        n_iter = 0
        prev = None
        while True:
            ll = self._estep(Xt, Ht, log_base, log_a, resp)
            obj = (float(ll.sum()) - 0.5 * lam * self._penalty(Ht, H0, n)) / N
            if not np.isfinite(obj):
                raise DegenerateBurst(
                    f"the penalised log-likelihood became {obj} at iteration {n_iter}; the burst "
                    "is too far from the source model (check feature scaling)."
                )
            trace.append(obj)
            if prev is not None and abs(obj - prev) <= self.tol * max(1.0, abs(prev)):
                converged = True
                break
            if n_iter >= self.max_iter:
                break
            prev = obj
            if setup["mask"] is not None:
                Hn = self._mstep_masked(Xt, resp, Ht, H0t, lam, setup)
            elif kind == "shared":
                Hn = self._mstep_shared(Xt, resp, H0t, lam, setup["chol"])
            else:
                Hn = self._mstep_full(Xt, resp, Ht, H0t, lam, setup["Dvec"], setup["Pr"],
                                      setup["dense"])
            if not np.all(np.isfinite(Hn)):
                raise DegenerateBurst(
                    "the M-step produced a non-finite H (singular burst); increase reg."
                )
            Ht = np.ascontiguousarray(Hn)
            n_iter += 1
        return Ht, trace, n_iter, converged

    def _setup_masked(self, setup, mask, A_bar, chol, kind, m, n1, lam):
        """Free-entry indices and, for the shared kind, the once-per-fit factor."""
        Mt = np.ones((m, n1), dtype=bool)
        Mt[:, :mask.shape[1]] = mask
        free = np.flatnonzero(Mt.ravel())
        setup["free"] = free
        setup["fi"] = np.ascontiguousarray(free // n1, dtype=np.int64)
        setup["fa"] = np.ascontiguousarray(free % n1, dtype=np.int64)
        setup["Mf"] = np.ascontiguousarray(Mt, dtype=np.float64)
        if self.solver == "auto":
            setup["dense"] = free.size <= self.masked_dense_max
        else:
            setup["dense"] = self.solver == "dense"
        setup["Pr"] = np.ascontiguousarray(linalg.cho_solve(chol, np.eye(n1)))
        if kind != "shared":
            setup["Lam_terms"] = np.ascontiguousarray(np.concatenate([self._Lam, self._Pen[None]]))
            return
        # Shared kind: S does not depend on the responsibilities, so it is factored once.
        # On a source with per-component precisions ("shared" forced) Λ̄ stands in for Λ.
        setup["Lam_s"] = np.ascontiguousarray(self._Lam_bar)
        if self.penalty_ == "precision":
            setup["Lam_terms"] = np.ascontiguousarray(self._Lam_bar[None])
            setup["A_terms"] = np.ascontiguousarray(A_bar[None])
        else:
            setup["Lam_terms"] = np.ascontiguousarray(np.stack([self._Lam_bar, self._Pen]))
            setup["A_terms"] = np.ascontiguousarray(np.stack([A_bar - lam * np.diag(setup["Dvec"]),
                                                              lam * np.diag(setup["Dvec"])]))
        if setup["dense"]:
            S = np.empty((free.size, free.size))
            mstep.kron_assemble_masked(setup["Lam_terms"], setup["A_terms"],
                                       setup["fi"], setup["fa"], S)
            setup["S_chol"] = _factor_masked(S)
        else:
            # the channel structure, whether named or given as its mask
            n_ch = int(mask[0].sum()) if mask.shape == (m, m) else 0
            if (BLOCK_JACOBI_CG and self.penalty_ == "identity" and not self.bias and n_ch > 0
                    and m % n_ch == 0
                    and np.array_equal(mask, channel_mask(m, n_ch))):
                self._setup_blocks(setup, A_bar - lam * np.diag(setup["Dvec"]), lam, n_ch)
                return
            Pl = klinalg.spd_inverse(setup["Lam_s"])
            if not np.all(np.isfinite(Pl)):
                Pl = np.ascontiguousarray(np.linalg.pinv(setup["Lam_s"]))
            setup["Pl_s"] = Pl

    def _setup_blocks(self, setup, G, lam, n_channels):
        """Block-Jacobi preconditioner of the channel-structured shared system.

        With ``structure="channel"`` the free entries split into f blocks H_t (C x C: type
        t mixed across electrodes), and the diagonal block of S for type t is the Kronecker
        sum Λ_tt ⊗ G_tt + λ I (Λ_tt, G_tt the type-t rows and columns of Λ and X̃ᵀX̃). Its
        exact inverse costs two eigendecompositions of C x C matrices once per fit and four
        C x C products per application; only the couplings between feature types (Λ_tt',
        G_tt') are left to CG.
        """
        f = self._m // n_channels
        C = n_channels
        # type-major order: the free entries become the f diagonal C x C blocks
        perm = np.arange(self._m).reshape(C, f).T.ravel()
        Lp = self._Lam_bar[np.ix_(perm, perm)].reshape(f, C, f, C).transpose(0, 2, 1, 3)
        Gp = G[np.ix_(perm, perm)].reshape(f, C, f, C).transpose(0, 2, 1, 3)
        a, U = np.linalg.eigh(Lp[np.arange(f), np.arange(f)])
        b, V = np.linalg.eigh(Gp[np.arange(f), np.arange(f)])
        X = setup["Xt"]
        N = X.shape[0]
        setup["blocks"] = dict(
            perm=perm, f=f, C=C, Lp=np.ascontiguousarray(Lp),
            # a short burst (N < m): Λ H XᵀX through the rows, rank N instead of m
            Xb=(np.ascontiguousarray(X[:, perm].reshape(N, f, C).transpose(1, 0, 2))
                if N < self._m else None),
            Lam_tm=np.ascontiguousarray(self._Lam_bar[np.ix_(perm, perm)]),
            GpT=np.ascontiguousarray(Gp.transpose(1, 0, 2, 3)), lam=lam, U=U, V=V,
            inv=1.0 / (np.maximum(a, 0.0)[:, :, None] * np.maximum(b, 0.0)[:, None, :] + lam))

    def _block_pcg(self, setup, R, Ht):
        """CG on Mask ⊙ (Λ̄ H G + λ H) = Mask ⊙ R over the f blocks, block-Jacobi
        preconditioned (:meth:`_setup_blocks`). Stops at ``cg_rtol`` relative residual."""
        bl = setup["blocks"]
        perm, f, C, Lp, GpT, lam = bl["perm"], bl["f"], bl["C"], bl["Lp"], bl["GpT"], bl["lam"]
        U, V, inv = bl["U"], bl["V"], bl["inv"]
        diag = np.arange(f)
        UT, VT = U.transpose(0, 2, 1), V.transpose(0, 2, 1)

        def to_blocks(M):
            return M[np.ix_(perm, perm)].reshape(f, C, f, C).transpose(0, 2, 1, 3)[diag, diag]

        Xb, Lam_tm = bl["Xb"], bl["Lam_tm"]
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
        maxiter = max(50, 10 * f * C * C)
        it = 0
        rel = float(np.linalg.norm(r)) / bnorm
        while rel > self.cg_rtol and it < maxiter:
            Ad = apply(d)
            alpha = rz / float(np.vdot(d, Ad))
            Hb = Hb + alpha * d
            r = r - alpha * Ad
            it += 1
            rel = float(np.linalg.norm(r)) / bnorm
            if rel <= self.cg_rtol:
                break
            z = precond(r)
            rz_new = float(np.vdot(r, z))
            d = z + (rz_new / rz) * d
            rz = rz_new
        self._cg_iters.append(it)
        if rel > 1e-6:
            logger.warning("block CG M-step stopped at relative residual %s after %s "
                           "iterations", rel, it)
        H = np.zeros_like(Ht)
        for t in range(f):
            idx = perm[t * C:(t + 1) * C]
            H[np.ix_(idx, idx)] = Hb[t]
        return H

    # ---------------------------------------------------------------- ring search
    def _roll_scores(self, Xt, log_base, n, mask, b0):
        """(C,) objective of every roll's start map, the value EM reports before its first
        M-step (the penalty is zero: each roll is its own shrink target).

        Rolling the map is permuting X's channel blocks (``X R_rᵀ``), so no matrix
        product is formed unless a mask cuts into a roll. A burst longer than
        ``SEARCH_MAX_ROWS`` is scored on an evenly strided subset (the scores only rank
        the starts).
        """
        C = self.ring_channels
        N = Xt.shape[0]
        if N > SEARCH_MAX_ROWS:
            keep = np.linspace(0, N - 1, SEARCH_MAX_ROWS).round().astype(np.int64)
            Xt, log_base = Xt[keep], np.ascontiguousarray(log_base[keep])
            N = SEARCH_MAX_ROWS
        X = Xt[:, :n]
        K = self.source.n_components
        src = self.source
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
            Z = np.ascontiguousarray(Z + b0)
            if src.shared_precision:
                estep.log_joint_shared(np.ascontiguousarray(Z @ src.prec_factor[0]), self._nu,
                                       log_base, log_a)
            else:
                estep.log_joint_full(Z, src.means, src.prec_factor, log_base, log_a)
            out[r] = float(estep.log_responsibilities(log_a, resp).sum()) / N
        out[~np.isfinite(out)] = -np.inf
        return out

    def _rotation_map(self, n, rot, per_kind=False):
        """Start map of the search at rotation ``rot``.

        ``S(θ)``, or per feature kind (:func:`~emtl_stream.model.rotation.rotation_prior`)
        when ``per_kind`` and ``rotation_counts`` is set.
        """
        if not per_kind or self.rotation_counts is None:
            return rotation_inverse(n, self.ring_channels, rot, self.rotation_ridge)
        return rotation_prior(n, self.ring_channels, rot, self.rotation_ridge,
                              self.rotation_counts)

    def _rotation_search(self, X, yi, n):
        """Score every rotated-and-scaled map ``diag(g) S(θ)`` on a grid of rotations θ.

        S(θ) is :func:`rotation_inverse`; g holds one gain per feature type (g_t on the
        rows of type t). The gains start where the second moment of the mapped burst
        matches the source model's and are refined by EM on the target-space density
        log p(H x) + log|det H| (a coordinate-wise closed form), batched over all θ.

        Returns a list of (θ, H (m, n), score, gains (f,)), best score first; the
        scores use the mixture-average precision Λ̄ (exact for a shared precision, a
        ranking device otherwise).
        """
        C = self.ring_channels
        if X.shape[0] > SEARCH_MAX_ROWS:
            # The search only ranks starts: an evenly strided subset keeps its cost flat.
            keep = np.linspace(0, X.shape[0] - 1, SEARCH_MAX_ROWS).round().astype(np.int64)
            X, yi = X[keep], yi[keep]
        N = X.shape[0]
        m = self._m
        f = n // C
        src = self.source
        Lam = self._Lam_bar
        rots = np.arange(0.0, C, self.rotation_step)
        S = rots.size
        # Per feature kind without labels only: a labelled burst's 30 gain updates absorb
        # the blur, and there the per-kind maps chose worse rotations (docs/evaluation.md).
        per_kind = not np.any(yi >= 0)
        R = np.stack([self._rotation_map(n, r, per_kind) for r in rots])  # (S, m, n)
        # log|det S(θ)| with the singular values floored: at half a spacing S is singular
        # (the blur removed the alternating pattern), and an unfloored Jacobian would
        # rule out exactly the rotation that happened.
        sv = np.linalg.svd(R, compute_uv=False)
        logdet_R = np.log(np.maximum(sv, self.jacobian_floor * sv[:, :1])).sum(axis=1)
        U = X[None] @ R.transpose(0, 2, 1)  # (S, N, m): the burst mapped by each S(θ)
        if src.shared_precision:
            P = src.prec_factor[0]
            base = self._log_base(yi)
        else:
            P = np.linalg.cholesky(Lam)
            base = (self._log_base(yi) - 0.5 * src.log_det_prec[None]
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
        n_it = self.search_iter
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
        self._search_objectives = {float(r): float(o) for r, o in zip(rots, obj)}
        out = []
        for s_ in np.argsort(-obj):
            if not (np.isfinite(obj[s_]) and np.all(np.isfinite(g[s_]))):
                continue
            out.append((float(rots[s_]), (g[s_] @ T.T)[:, None] * R[s_], float(obj[s_]), g[s_]))
        return out

    # ---------------------------------------------------------------- public
    def fit(self, X, y=None, *, H_init=None, b_init=None) -> "TransferEM":
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

        Returns
        -------
        self
        """
        X = self._prepare_X(X)
        N, n = X.shape
        m = self._m
        yi = self.label_indices(y, N)
        kind = self._kind()
        if self.ring_channels is not None:
            C = self.ring_channels
            if m != n or n % C:
                raise ValueError(
                    f"ring_channels={C} needs a square map with n divisible by it; got m={m}, "
                    f"n={n}."
                )
        mask = self._resolve_mask(n)
        if mask is None and self.penalty_ == "identity":
            mask = np.ones((m, n), dtype=bool)  # Λ no longer drops out: general solver
        Xt = self._augment(X)
        n1 = Xt.shape[1]
        # λ from the feature columns only, so the unpenalised offset column cannot
        # break scale invariance.
        if self.reg_scale == "relative":
            if mask is None:
                energy = float(np.einsum("ij,ij->", X, X)) / n
            else:
                # tr of the data / penalty normal matrices over the free entries; equals
                # tr(XᵀX)/n for an all-True mask and Π = Λ̄.
                dL = np.diag(self._Lam_bar)
                energy = float(dL @ mask @ np.einsum("ij,ij->j", X, X)) / float(
                    np.diag(self._Pen) @ mask.sum(axis=1))
            if energy == 0.0:
                raise DegenerateBurst("X is all zeros; a relative regulariser has no scale.")
            lam = self.reg * energy
        else:
            lam = self.reg
        Dvec = np.ones(n1)
        if self.bias:
            Dvec[-1] = 0.0
        A_bar = Xt.T @ Xt + lam * np.diag(Dvec)
        setup = {"kind": kind, "Dvec": Dvec, "mask": mask}
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
        setup["chol"] = chol
        src = self.source
        if src.shared_precision:
            self._nu = np.ascontiguousarray(src.means @ src.prec_factor[0])
        if kind == "full":
            self._Lam_mu = np.einsum("kij,kj->ki", self._Lam, src.means)
            setup["Pr"] = np.ascontiguousarray(linalg.cho_solve(chol, np.eye(n1)))
            if self.solver == "auto":
                setup["dense"] = m * n1 <= self.dense_max
            else:
                setup["dense"] = self.solver == "dense"
        if (kind == "shared" and src.shared_precision and mask is None
                and self.penalty_ == "precision"):
            setup["fast"] = True
            setup["P"] = np.ascontiguousarray(src.prec_factor[0])
            setup["means"] = np.ascontiguousarray(src.means)
            setup["Ainv"] = np.ascontiguousarray(linalg.cho_solve(chol, np.eye(n1)))
        if mask is not None:
            setup["Xt"] = Xt
            self._setup_masked(setup, mask, A_bar, chol, kind, m, n1, lam)
        self._cg_iters = []
        log_base = self._log_base(yi)
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
            if self.bias:
                Ht[:, n] = b0 if bs is None else bs
            return Ht

        starts = []  # (label, H start, shrink target, offset start, rotation, taps)
        H0_user = self._resolve_H0(n)
        if mask is not None:
            H0_user = H0_user * mask  # a penalty on fixed entries would only add a constant
        if H_init is not None:
            Hi = np.ascontiguousarray(H_init, dtype=np.float64)
            if Hi.shape != (m, n) or not np.all(np.isfinite(Hi)):
                raise ValueError(f"H_init must be a finite array of shape ({m}, {n}).")
        search_obj = None
        if self.ring_channels is not None and self.rotation_search == "continuous":
            cands = self._rotation_search(X, yi, n)
            search_obj = self._search_objectives if cands else None
            picked = []
            for rot, Hc, _, gains in cands:
                # distinct rotations only: neighbours of the winner are the same basin
                if any(min(abs(rot - r), self.ring_channels - abs(rot - r)) < 0.75
                       for r in picked):
                    continue
                picked.append(rot)
                label = int(round(rot)) % self.ring_channels
                Hc = Hc if mask is None else Hc * mask  # a no-op for structure="channel"
                starts.append((label, Hc, Hc, None, rot, gains))
                if np.any(yi >= 0):
                    # With labels, the same rotation at unit gain too: a gain fitted to the
                    # first half second of each prompt (the onset of the contraction) can
                    # be far off; the refined fits decide. Unlabelled bursts span whole
                    # contractions, and their moment-matched gain is the better one.
                    Hu = self._rotation_map(n, rot)
                    Hu = Hu if mask is None else Hu * mask
                    starts.append((label, Hu, Hu, None, rot, np.ones_like(gains)))
                if len(picked) == self.n_refine:
                    break
        roll_scores = None
        if self.ring_channels is not None and not starts:
            C = self.ring_channels
            keep = self.roll_starts
            if keep is None:
                keep = C if C <= ROLL_PRUNE_MIN_CHANNELS else ROLL_PRUNE_KEEP
            rolls = range(C)
            if keep < C:
                sc = self._roll_scores(Xt, log_base, n, mask, b0)
                roll_scores = {r: float(v) for r, v in enumerate(sc)}
                # stable order: a tie keeps the smaller roll, as the full search does
                rolls = sorted(np.argsort(-sc, kind="stable")[:keep].tolist())
            for r in rolls:
                Pr_ = ring_roll_matrix(n, C, r)
                if mask is not None:
                    Pr_ = Pr_ * mask  # a no-op for structure="channel"
                starts.append((r, Pr_, Pr_, None, float(r), None))
        if self.ring_channels is not None:
            if H_init is not None:
                starts.append((None, Hi, H0_user, None, None, None))
        else:
            if H_init is not None:
                Hs = Hi
            elif isinstance(self.shrink_to, str):
                Hs = rectangular_identity(m, n)
            else:
                Hs = H0_user
            starts.append((None, Hs, H0_user, None, None, None))

        best = None
        roll_obj = {}
        for label, Hs, H0, bs, rot, taps in starts:
            Hst = start(Hs, bs)
            Ht, trace, n_iter, conv = self._run_em(Xt, log_base, Hst, H0, lam, n, setup)
            if label is not None and search_obj is None:
                roll_obj[label] = trace[-1]
            logger.debug("transfer EM start %s (rotation %s): objective %s after %s iterations",
                         label, rot, trace[-1], n_iter)
            score = trace[-1]
            if search_obj is not None:
                # Candidates with different priors are compared as densities of the target
                # points (log |det H| added), as in the search.
                sign, ld = np.linalg.slogdet(Ht[:, :n])
                score = score + ld if sign != 0 else -np.inf
            if best is None or score > best[-1]:
                best = (Ht, trace, n_iter, conv, label, H0, rot, taps, Hst[:, :n], score)
        if search_obj is not None:
            roll_obj = search_obj
        Ht, trace, n_iter, conv, label, H0, rot, taps, Hst, _ = best
        self.H_ = np.ascontiguousarray(Ht[:, :n])
        self.b_ = np.ascontiguousarray(Ht[:, n]) if self.bias else np.zeros(m)
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
        guard = self.guard if self.guard is not None else self.rotation_search == "continuous"
        if guard:
            self._apply_guard(X, yi, H_init, b_init)
        if not conv:
            warnings.warn(
                f"transfer EM stopped at max_iter={self.max_iter} before the objective changed "
                f"by less than tol={self.tol:g}; increase max_iter or tol.",
                TransferConvergenceWarning, stacklevel=2,
            )
        logger.info("transfer EM (%s) fitted: %s iterations, objective %.6g, roll %s", kind,
                    n_iter, trace[-1], label)
        return self

    def _apply_guard(self, X, yi, H_init, b_init):
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
        b_live = np.zeros(m) if b_init is None or not self.bias else np.asarray(b_init, float)
        live = MappedClassifier(self.source, H_live, b_live)
        # The half fits refine the winning start towards the same prior (no new search):
        # the guard asks whether adapting helps, not which rotation is best.
        params = {k: getattr(self, k) for k in (
            "kind", "bias", "reg", "reg_scale", "max_iter", "tol", "solver", "dense_max",
            "cg_rtol", "penalty", "masked_dense_max")}
        params["structure"] = self.mask_ if self.mask_ is not None else self.structure
        params["shrink_to"] = self.H0_
        cls = self.source.classes.tolist()
        score_new = score_live = 0.0
        for k in (1,):  # one split: a second would double the guard's cost for little
            train, held = lab[fold != k], lab[fold == k]
            yt = np.full(X.shape[0], -1, dtype=np.int64)
            yt[train] = yi[train]
            keep = np.flatnonzero((yi < 0) | (yt >= 0))  # unlabelled rows stay in
            half = TransferEM(self.source, guard=False, **params)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TransferConvergenceWarning)
                half.fit(X[keep], [None if v < 0 else cls[v] for v in yt[keep]],
                         H_init=self.H_start_, b_init=b_init)
            score_new += float(np.sum(half.classifier_.predict_index(X[held]) == yi[held]))
            score_live += float(np.sum(live.predict_index(X[held]) == yi[held]))
        # Ties go to the live map: a new map must earn its place on windows it has not seen.
        kept = score_live >= score_new
        n_held = int(np.sum(fold == 1))
        self.guard_ = {"new": score_new / n_held, "live": score_live / n_held,
                       "kept_live": bool(kept)}
        if kept:
            logger.info("transfer EM guard: the live map predicts held-out burst windows "
                        "better (%.4g > %.4g); keeping it", score_live, score_new)
            self.H_ = np.ascontiguousarray(H_live)
            self.b_ = np.ascontiguousarray(b_live)
            self.classifier_ = live

    def _check_fitted(self):
        if not hasattr(self, "H_"):
            raise RuntimeError("this TransferEM is not fitted yet; call fit(X, y) first.")

    def transform(self, X) -> np.ndarray:
        """Map target features to the source space: ``X @ H_.T + b_``, shape (N, m)."""
        self._check_fitted()
        X = _checks.as_float_matrix(X, "X", allow_nonfinite=True, n_columns=self.H_.shape[1])
        return X @ self.H_.T + self.b_

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities of mapped rows, shape (N, L), columns in ``source.classes`` order."""
        self._check_fitted()
        return self.classifier_.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        """Most probable class (values of ``source.classes``), shape (N,)."""
        self._check_fitted()
        idx = self.classifier_.predict_index(X)
        if np.any(idx < 0):
            raise ValueError("X contains NaN or inf rows; drop them before predict().")
        return self.source.classes[idx]

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
        yi = self.label_indices(y, N)
        Ht = np.ascontiguousarray(np.hstack([H, b[:, None]]))
        Xt = np.ascontiguousarray(np.hstack([X, np.ones((N, 1))]))
        K = self.source.n_components
        if self.source.shared_precision and not hasattr(self, "_nu"):
            self._nu = np.ascontiguousarray(self.source.means @ self.source.prec_factor[0])
        ll = self._estep(Xt, Ht, self._log_base(yi), np.empty((N, K)), np.empty((N, K)))
        return (float(ll.sum()) - 0.5 * self.lambda_ * self._penalty(Ht, self.H0_, n)) / N
