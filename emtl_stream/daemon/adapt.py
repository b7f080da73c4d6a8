"""Zero-label recalibration and the guard that keeps a worse map from going live.

:func:`fit_unlabelled` is a pure function the daemon runs in its worker thread on
a few seconds of live, unlabelled windows: transfer EM with the label-marginal
E-step (``TransferEM.fit(X, None)``), started from every ring roll and from the
live map, shrunk towards the live map. The result goes live only if the evidence
says it beats the live map:

* **stable rotation**: on a ring, both halves pick the same start as the whole (the
  same roll, or with the continuous search a rotation within
  :data:`ROTATION_STABLE_SPACINGS`: :func:`same_rotation`);
* **a rotation, or held-out likelihood**: when the live map's own rotation is known
  (the daemon records it with every map), a fit whose stable rotation lies at least
  :data:`ROTATED_SPACINGS` from it is a moved armband and needs only to explain the
  windows better than the live map (with whole-electrode starts, which cannot tell a
  half-spacing move from a whole one, also the held-out margin
  :data:`MIN_GAIN_NATS_PER_FEATURE`); a fit closer to the live map is a refit to the
  same placement and must explain the *other* half better than the live map by
  :data:`REFIT_MIN_GAIN_NATS_PER_FEATURE` (the map fitted on one half, judged on the
  other, averaged over both directions: an in-sample gain is always positive, so it
  proves nothing). With the live rotation unknown, or no ring, the held-out gain must
  reach :data:`MIN_GAIN_NATS_PER_FEATURE`;
* **non-degenerate class mix**: the windows, under the live map and under the new
  one, spread over at least :data:`MIN_CLASSES` classes (a rest-only stretch
  carries no information about where the electrodes are); unless the armband moved,
  the new map must also still predict every movement the live map sees
  (:func:`lost_classes`: a map that merges two movements is a likelihood trap);
* **finite, converged map** on enough finite windows.

A refusal keeps the live map (``H``/``b`` of the result are the live ones) and
says why in ``reason``; no exception escapes (the daemon publishes
``calibration_failed`` with the reason).

A prompted burst has its own guard inside the fit (``TransferEM(guard=...)``, the
``[transfer] guard`` key): the new map must classify the burst's held-out windows
better than the live map.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import EmtlError, FitCancelled, TransferConvergenceWarning
from ..logs import logger

#: Fewest finite windows a zero-label fit runs on (3 s at a 50 ms step): each half
#: must still hold a few windows of several movements.
MIN_WINDOWS = 60
#: Refuse when more than this share of the windows is non-finite (a broken stream).
MAX_NONFINITE_SHARE = 0.1
#: Held-out log-likelihood gain over the live map, in nats per mapped feature and
#: window, below which the new map is not worth a swap (the live map stays) when the
#: live map's rotation is unknown or there is no ring. On the
#: 18 CIIL recordings (20 s of windows, docs/evaluation.md) unshifted arms gain
#: 0.005-0.16 (a refit to session drift, which lowered accuracy in 5 of 18) and
#: shifted arms 0.34-7.6, so 0.25 separates them with room on both sides.
MIN_GAIN_NATS_PER_FEATURE = 0.25
#: A class counts as present when it is predicted for at least this share of windows ...
MIN_CLASS_SHARE = 0.03
#: ... and at least this many classes must be present under both maps.
MIN_CLASSES = 2
#: The halves' rotations count as the same when they lie within this many electrode
#: spacings of the whole's (on the ring, either way). Whole-electrode starts differ by
#: at least one spacing, so for them this is equality. The continuous search's halves
#: scatter over its 0.25 grid: on the 18 CIIL recordings rotated by one spacing, halves
#: at 0.75 and 1.25 around a whole at 1.25, or 1.25 and 0.5 around 1.0, with held-out
#: gains of 0.4-1.9 nats per feature (docs/evaluation.md).
ROTATION_STABLE_SPACINGS = 0.5
#: A fit's rotation at least this far from the live map's (on the ring, in electrode
#: spacings) is a moved armband. On the 18 CIIL recordings under a virtual rotation
#: (continuous search, 21 rotation-gain cells, docs/evaluation.md) each of the 217
#: of 378 fits this far from the identity raised accuracy (by 2.6-95 points), while
#: nearer ones behaved as refits: unshifted arms chose 0 or 0.25, and 27 fits within
#: half a spacing lowered accuracy (by up to 8.2 points). The held-out gains say
#: little after a move: the stream-order halves hold different movements, and fits
#: that raised accuracy scored -8.9 to 15.9 nats per feature.
ROTATED_SPACINGS = 0.75
#: Held-out gain (nats per mapped feature and window) a refit near the live map's
#: rotation needs. The fits that lowered accuracy on those recordings gained up to
#: 0.73 held out (9 of them passed the 0.25 of an unknown rotation); 1.0 leaves room.
REFIT_MIN_GAIN_NATS_PER_FEATURE = 1.0


@dataclass(frozen=True, eq=False)
class UnlabelledFit:
    """Outcome of a zero-label fit.

    Attributes
    ----------
    accepted : bool
        True when ``H``/``b`` are a new map that should go live.
    reason : str
        Why it was accepted or refused (one sentence, for the event).
    H : ndarray of shape (m, n)
        The map to keep live: the new one when accepted, the live one otherwise.
    b : ndarray of shape (m,)
    metrics : dict
        JSON-safe numbers behind the decision (gains, rolls, class mix, timings).
    """

    accepted: bool
    reason: str
    H: np.ndarray
    b: np.ndarray
    metrics: dict = field(default_factory=dict)


def lost_classes(classes, mix_live, mix_new) -> list[str]:
    """Classes the live map predicts (share ≥ :data:`MIN_CLASS_SHARE`) and the new one does not.

    Parameters
    ----------
    classes : sequence of str, length L
    mix_live, mix_new : ndarray of shape (L,)
        Share of the windows predicted as each class under the live and the new map.

    Returns
    -------
    list of str
    """
    mix_live, mix_new = np.asarray(mix_live), np.asarray(mix_new)
    return [str(classes[k]) for k in np.flatnonzero(
        (mix_live >= MIN_CLASS_SHARE) & (mix_new < MIN_CLASS_SHARE))]


def _class_mix(components, H, b, X) -> np.ndarray:
    from ..model.classify import MappedClassifier

    idx = MappedClassifier(components, H, b).predict_index(X)
    return np.bincount(idx[idx >= 0], minlength=len(components.classes)) / max(len(idx), 1)


def _spacings(rotation) -> str:
    return "the live map's start" if rotation is None else f"{float(rotation):g} spacings"


def _mean_ll(components, H, b, X) -> float:
    from ..model.classify import MappedClassifier

    return float(np.mean(MappedClassifier(components, H, b).log_marginal(X)))


def _fit(components, X, H_live, b_live, transfer_kwargs, ring_channels, should_stop=None):
    """One TransferEM fit; returns (H, b, roll, rotation, converged).

    ``rotation`` is the start's rotation in spacings (the roll for whole-electrode
    starts), None when the live map's start won.
    """
    from ..model.transfer import TransferEM

    kw = dict(transfer_kwargs)
    kw["shrink_to"] = H_live  # recalibration shrinks towards the live map
    tem = TransferEM(components, ring_channels=ring_channels, **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TransferConvergenceWarning)
        tem.fit(X, None, H_init=H_live, b_init=b_live if tem.bias else None,
                should_stop=should_stop)
    converged = bool(tem.converged_) and not any(
        issubclass(w.category, TransferConvergenceWarning) for w in caught)
    return tem.H_, tem.b_, tem.best_roll_, tem.rotation_, converged


def ring_distance(a: float, b: float, n_channels: int) -> float:
    """Distance of two rotations on a ring of ``n_channels`` electrodes, in spacings.

    Parameters
    ----------
    a, b : float
        Rotations in electrode spacings.
    n_channels : int
        Electrodes on the ring.

    Returns
    -------
    float
        In ``[0, n_channels / 2]``.
    """
    d = abs(float(a) - float(b)) % n_channels
    return min(d, n_channels - d)


def fitted_rotation(start_rotation, live_rotation, ring: bool) -> float | None:
    """Return the ring rotation a fitted map records (``map_rotation``), in spacings.

    Parameters
    ----------
    start_rotation : float or None
        The winning start's rotation (``TransferEM.rotation_``); None when the live
        map's own start won, so the map is a refinement of the live one.
    live_rotation : float or None
        The live map's rotation (None: unknown).
    ring : bool
        Whether the fit searched ring rotations; without a ring there is none.

    Returns
    -------
    float or None
    """
    if not ring:
        return None
    return live_rotation if start_rotation is None else float(start_rotation)


def same_rotation(a, b, n_channels: int) -> bool:
    """Whether two fits chose the same rotation (within :data:`ROTATION_STABLE_SPACINGS`).

    Parameters
    ----------
    a, b : float or None
        Rotations in electrode spacings; None is the live map's own start.
    n_channels : int
        Electrodes on the ring (rotations are compared modulo it).

    Returns
    -------
    bool
    """
    if a is None or b is None:
        return a is None and b is None
    return ring_distance(a, b, n_channels) <= ROTATION_STABLE_SPACINGS + 1e-9


def fit_unlabelled(components, X, H_live, b_live, *, transfer_kwargs: dict,
                   ring_channels: int | None, should_stop=None,
                   live_rotation: float | None = None) -> UnlabelledFit:
    """Fit a new map on unlabelled windows and decide whether it may go live.

    Parameters
    ----------
    components : SourceComponents or object with ``to_components()``
        The source model (K components, m features).
    X : array-like of shape (N, n)
        Live target-space windows in stream order (non-finite rows are dropped).
    H_live : ndarray of shape (m, n)
        The live map (EM start and shrink target).
    b_live : ndarray of shape (m,) or None
    transfer_kwargs : dict
        TransferEM keyword arguments (the daemon's ``[transfer]`` settings);
        ``shrink_to`` is replaced by the live map.
    ring_channels : int or None
        Electrodes on a ring (roll starts), or None.
    should_stop : callable, optional
        Asked between EM iterations of each of the three fits; when it returns true
        the fit stops with :class:`~emtl_stream.errors.FitCancelled`.
    live_rotation : float, optional
        The live map's rotation relative to the source model, in electrode spacings
        (0 for the identity map); None when unknown. Decides which gain rule applies
        (see the module docstring).

    Returns
    -------
    UnlabelledFit
        ``metrics["map_rotation"]`` is the new map's rotation relative to the source
        model (:func:`fitted_rotation`: the live one's when the live map's own start
        won; None if unknown or without a ring).
        Never raises for bad data or a failed fit: those are refusals with a reason.

    Raises
    ------
    FitCancelled
        ``should_stop()`` said so (the only exception this function lets through).
    """
    t0 = time.perf_counter()
    H_live = np.ascontiguousarray(H_live, dtype=np.float64)
    m, n = H_live.shape
    b_live = np.zeros(m) if b_live is None else np.asarray(b_live, dtype=np.float64).reshape(-1)
    metrics: dict = {}

    def refuse(reason: str) -> UnlabelledFit:
        metrics["fit_ms"] = 1e3 * (time.perf_counter() - t0)
        logger.info("zero-label fit refused: %s", reason)
        return UnlabelledFit(False, reason, H_live, b_live, metrics)

    try:
        from ..model.classify import as_components

        comp = as_components(components)
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != n:
            return refuse(f"the windows must have shape (N, {n}), got {X.shape}.")
        finite = np.all(np.isfinite(X), axis=1)
        metrics.update(n_windows=int(X.shape[0]), n_nonfinite=int((~finite).sum()))
        if X.shape[0] and (~finite).mean() > MAX_NONFINITE_SHARE:
            return refuse(f"{int((~finite).sum())} of {X.shape[0]} windows hold NaN or inf "
                          "(a broken stream); the live map stays.")
        X = X[finite]
        N = X.shape[0]
        if N < MIN_WINDOWS:
            return refuse(f"only {N} finite windows were collected: too few for a zero-label "
                          f"fit (it needs at least {MIN_WINDOWS}).")
        mix_live = _class_mix(comp, H_live, b_live, X)
        metrics["class_mix_live"] = mix_live.tolist()
        if int((mix_live >= MIN_CLASS_SHARE).sum()) < MIN_CLASSES:
            return refuse("the windows show fewer than "
                          f"{MIN_CLASSES} distinct movements (e.g. a rest-only stretch); "
                          "they say nothing about where the electrodes are.")
        H, b, roll, rot, conv = _fit(comp, X, H_live, b_live, transfer_kwargs, ring_channels,
                                     should_stop)
        metrics.update(roll=roll, rotation=rot, converged=conv)
        if not conv:
            return refuse("transfer EM did not converge on the windows; the live map stays.")
        if not (np.all(np.isfinite(H)) and np.all(np.isfinite(b))):
            return refuse("transfer EM produced a non-finite map; the live map stays.")
        mix_new = _class_mix(comp, H, b, X)
        metrics["class_mix_new"] = mix_new.tolist()
        if int((mix_new >= MIN_CLASS_SHARE).sum()) < MIN_CLASSES:
            return refuse(f"the new map puts the windows into fewer than {MIN_CLASSES} classes "
                          "(a degenerate fit); the live map stays.")
        # Cross-fitted gain: each half's map is judged on the other half.
        half = N // 2
        parts = (X[:half], X[half:])
        gains, rolls, rots = [], [], []
        for i in (0, 1):
            Hh, bh, rh, roth, ch = _fit(comp, parts[i], H_live, b_live, transfer_kwargs,
                                        ring_channels, should_stop)
            rolls.append(rh)
            rots.append(roth)
            other = parts[1 - i]
            gains.append(_mean_ll(comp, Hh, bh, other) - _mean_ll(comp, H_live, b_live, other))
        gain = float(np.mean(gains)) / m
        metrics.update(half_rolls=rolls, half_rotations=rots, heldout_gain_per_feature=gain,
                       ll_live=_mean_ll(comp, H_live, b_live, X), ll_new=_mean_ll(comp, H, b, X))
        if not np.isfinite(gain):
            return refuse("the held-out likelihood of the new map is not finite.")
        if ring_channels is not None and not all(same_rotation(r, rot, ring_channels)
                                                 for r in rots):
            return refuse(f"the chosen ring rotation is not stable across halves of the "
                          f"windows ({_spacings(rots[0])}, {_spacings(rots[1])} vs "
                          f"{_spacings(rot)} on all); the live map stays.")
        ll_live, ll_new = metrics["ll_live"], metrics["ll_new"]
        map_rotation = fitted_rotation(rot, live_rotation, ring_channels is not None)
        moved = None
        if map_rotation is not None and live_rotation is not None:
            moved = ring_distance(map_rotation, live_rotation, ring_channels)
        metrics.update(map_rotation=map_rotation, moved_spacings=moved)
        if moved is not None and moved >= ROTATED_SPACINGS:
            if not ll_new > ll_live:
                return refuse(f"the new map ({moved:g} spacings from the live one) does not "
                              "explain the windows better than the live map; the live map "
                              "stays.")
            # whole-electrode starts cannot tell a half-spacing move from a whole one:
            # their fits keep the held-out margin
            continuous = transfer_kwargs.get("rotation_search") == "continuous"
            if not continuous and gain < MIN_GAIN_NATS_PER_FEATURE:
                return refuse(f"the new map explains held-out windows only {gain:.3g} nats "
                              f"per feature better than the live map (a roll of "
                              f"{moved:g} spacings; it needs {MIN_GAIN_NATS_PER_FEATURE:g}); "
                              "the live map stays.")
            rule = f"rotated {moved:g} spacings, stable across halves"
        else:
            # A map near the live one that explains the windows better yet never predicts
            # a movement the live map sees is a likelihood trap (two movements merged),
            # not a correction. (After a move the live map's mix means little: on the
            # real one-electrode shift it "saw" movements the healed map rightly drops.)
            lost = lost_classes(comp.classes, mix_live, mix_new)
            if lost:
                return refuse(f"the new map no longer predicts {', '.join(lost)}, which the "
                              "live map sees in these windows; the live map stays.")
            need = MIN_GAIN_NATS_PER_FEATURE if moved is None else \
                REFIT_MIN_GAIN_NATS_PER_FEATURE
            if gain < need:
                where = "" if moved is None else \
                    f" (a refit {moved:g} spacings from the live map's rotation)"
                return refuse(f"the new map explains held-out windows only {gain:.3g} nats "
                              f"per feature better than the live map{where}; it needs "
                              f"{need:g}; the live map stays.")
            rule = f"held-out likelihood improved by {gain:.3g} nats per feature"
    except FitCancelled:
        raise
    except (EmtlError, ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
        return refuse(f"transfer EM failed on the windows: {exc}")
    metrics["fit_ms"] = 1e3 * (time.perf_counter() - t0)
    start = "live map" if rot is None else (f"roll {roll}" if roll is not None
                                            else _spacings(rot))
    reason = f"{rule} (start {start})"
    logger.info("zero-label fit accepted: %s", reason)
    return UnlabelledFit(True, reason, np.ascontiguousarray(H), np.ascontiguousarray(b), metrics)
