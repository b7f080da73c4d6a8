"""Pruned roll search: every roll scored by its start map, EM only from the best few."""

import warnings

import numpy as np
import pytest
from scipy.special import logsumexp

from emtl_stream.errors import TransferConvergenceWarning
from emtl_stream.eval_rotations import SyntheticProtocol, synthetic_session
from emtl_stream.model.gmm import LabelledGMM
from emtl_stream.model.transfer import (ROLL_PRUNE_KEEP, ROLL_PRUNE_MIN_CHANNELS, TransferEM,
                                        ring_roll_matrix)
from emtl_stream.pipeline.features import FeatureExtractor
from emtl_stream.sim.synthetic import SyntheticArmband
from sources import lda_source, make_source, shared_hudgins


def _numpy_start_objective(src, X, y, H, b):
    """Mean log p(H x + b, y) under the source mixture, in plain numpy."""
    Z = X @ H.T + b
    K = src.means.shape[0]
    la = np.empty((len(X), K))
    for k in range(K):
        P = src.prec_factor[k]
        D = (Z - src.means[k]) @ P
        la[:, k] = (src.log_weights[k] + 0.5 * src.log_det_prec[k]
                    - 0.5 * Z.shape[1] * np.log(2 * np.pi) - 0.5 * np.sum(D * D, axis=1))
    if y is not None:
        la = la + src.log_label_given_comp[np.searchsorted(src.classes, y)]
    return float(logsumexp(la, axis=1).mean())


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("labelled", [True, False])
@pytest.mark.parametrize("bias", [False, True])
def test_roll_scores_are_the_start_objective(rng, shared, labelled, bias):
    C, f, L = 6, 2, 4
    n = C * f
    src = make_source(rng, n, L, 1 if shared else 2, shared, sep=2.0)
    comp = rng.integers(0, L, 30)
    X = (src.means[comp] + 0.5 * rng.normal(size=(30, n))) @ ring_roll_matrix(n, C, 2)
    y = comp if labelled else None
    te = TransferEM(src, ring_channels=C, structure="channel", reg=0.1, bias=bias,
                    roll_starts=2).fit(X, y)
    assert sorted(te.roll_scores_) == list(range(C))
    for r in range(C):
        want = _numpy_start_objective(src, X, y, ring_roll_matrix(n, C, r), np.zeros(n))
        np.testing.assert_allclose(te.roll_scores_[r], want, rtol=1e-10)
    best2 = sorted(sorted(range(C), key=lambda r: -te.roll_scores_[r])[:2])
    assert sorted(te.roll_objectives_) == best2  # EM ran from exactly those two


def test_default_keeps_the_exhaustive_search_on_small_rings(rng):
    C, f = 8, 2
    src = make_source(rng, C * f, 3, 1, True)
    X = rng.normal(size=(20, C * f))
    y = np.arange(20) % 3
    te = TransferEM(src, ring_channels=C, structure="channel", reg=0.1).fit(X, y)
    assert C <= ROLL_PRUNE_MIN_CHANNELS
    assert te.roll_scores_ is None and sorted(te.roll_objectives_) == list(range(C))


def _roll_error(roll, shift, C):
    """Electrode spacings between ``roll`` and undoing ``shift`` (either sign convention)."""
    return min(min(a % C, C - a % C) for a in (roll + shift, roll - shift))


def _fit(src, X, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TransferConvergenceWarning)
        return TransferEM(src, **kw).fit(X, y)


def test_pruned_search_picks_the_full_searchs_roll_on_real_emg(emg_dir):
    """8 electrodes, channel-structured map: labelled 0.5 s burst and unlabelled 2 s."""
    for subject in (1, 7, 13):
        Xb, yb, rb, _ = shared_hudgins(emg_dir, subject, "baseline")
        Xs, ys, rs, ts = shared_hudgins(emg_dir, subject, "shifted")
        src = lda_source(Xb[rb <= 2], yb[rb <= 2])
        cal = (rs == 0) & (ts <= 0.5 + 1e-9)
        unl = (rs == 1) & (ts <= 2.0 + 1e-9)
        for X, y in ((Xs[cal], ys[cal]), (Xs[unl], None)):
            kw = dict(ring_channels=8, reg=0.1, structure="channel")
            full = _fit(src, X, y, **kw)
            pruned = _fit(src, X, y, roll_starts=ROLL_PRUNE_KEEP, **kw)
            assert pruned.best_roll_ == full.best_roll_, (subject, y is None)
            np.testing.assert_allclose(pruned.H_, full.H_)


@pytest.mark.parametrize("shift", [3.0, 5.5, 10.25])
def test_pruned_search_picks_the_full_searchs_roll_on_a_16_channel_armband(shift):
    """The daemon's settings at 16 electrodes (4 Hudgins features, channel-structured map,
    reg 0.1): pruned by default, the same roll and map as all 16 starts."""
    p = SyntheticProtocol()
    ex = FeatureExtractor(("mav", "wl", "zc", "ssc"), n_channels=16, fs=p.fs)
    arm = SyntheticArmband(16, p.fs, seed=1, noise_level=p.noise_level)
    Xs, ys, _ = synthetic_session(arm, 3.0, ex, p.window_ms, p.step_ms)
    src = LabelledGMM(covariance_type="tied", random_state=0).fit(Xs, ys)
    arm.set_shift(shift)
    Xb, yb, _ = synthetic_session(arm, p.burst_s, ex, p.window_ms, p.step_ms)
    Xu, _, _ = synthetic_session(arm, 2.0, ex, p.window_ms, p.step_ms)
    kw = dict(ring_channels=16, reg=0.1, structure="channel")
    for X, y in ((Xb, yb), (Xu, None)):
        full = _fit(src, X, y, roll_starts=16, **kw)
        pruned = _fit(src, X, y, **kw)
        assert len(pruned.roll_objectives_) == ROLL_PRUNE_KEEP
        assert pruned.best_roll_ == full.best_roll_, (shift, y is None)
        np.testing.assert_allclose(pruned.H_, full.H_)
        assert _roll_error(full.best_roll_, shift, 16) <= 1.0, (shift, full.best_roll_)
        # 1024 free entries: the default solves by CG (to CG_RTOL); the dense Cholesky
        # agrees to what that tolerance leaves (about 2e-6 of the largest entry here)
        dense = _fit(src, X, y, solver="dense", **kw)
        assert pruned.cg_iters_ and not dense.cg_iters_ and dense.best_roll_ == pruned.best_roll_
        np.testing.assert_allclose(pruned.H_, dense.H_, rtol=0,
                                   atol=2e-5 * np.abs(dense.H_).max())


@pytest.fixture(scope="module")
def armband64():
    """64 electrodes, MAV and WL, tied source trained at shift 0 (fs 1 kHz)."""
    p = SyntheticProtocol()
    ex = FeatureExtractor(("mav", "wl"), n_channels=64, fs=p.fs)
    arm = SyntheticArmband(64, p.fs, seed=0, noise_level=p.noise_level)
    Xs, ys, _ = synthetic_session(arm, 5.0, ex, p.window_ms, p.step_ms)
    src = LabelledGMM(covariance_type="tied", random_state=0).fit(Xs, ys)
    return p, ex, arm, src


@pytest.mark.parametrize("shift", [10.0, 10.5, 37.25])
def test_pruned_search_picks_the_full_searchs_roll_on_the_64_channel_armband(armband64,
                                                                              shift):
    p, ex, arm, src = armband64
    arm.set_shift(shift)
    Xb, yb, _ = synthetic_session(arm, p.burst_s, ex, p.window_ms, p.step_ms)
    Xu, _, _ = synthetic_session(arm, 2.0, ex, p.window_ms, p.step_ms)
    for X, y in ((Xb, yb), (Xu, None)):
        full = _fit(src, X, y, ring_channels=64, reg=1.0, roll_starts=64)
        pruned = _fit(src, X, y, ring_channels=64, reg=1.0)  # default: pruned above 8
        assert len(pruned.roll_objectives_) == ROLL_PRUNE_KEEP
        assert pruned.best_roll_ == full.best_roll_, (shift, y is None)
        np.testing.assert_allclose(pruned.H_, full.H_)
        # a roll undoing the shift to within 1.5 spacings
        assert _roll_error(full.best_roll_, shift, 64) <= 1.5, (shift, full.best_roll_)


@pytest.mark.parametrize("shift,labelled", [(10.5, True), (37.25, True), (37.25, False)])
def test_pruned_channel_structured_search_on_the_64_channel_armband(armband64, shift,
                                                                    labelled):
    """The daemon's map (structure="channel", reg 0.1): 8,192 free entries, block CG."""
    p, ex, arm, src = armband64
    arm.set_shift(shift)
    if labelled:
        X, y, _ = synthetic_session(arm, p.burst_s, ex, p.window_ms, p.step_ms)
    else:
        (X, _, _), y = synthetic_session(arm, 2.0, ex, p.window_ms, p.step_ms), None
    kw = dict(ring_channels=64, reg=0.1, structure="channel")
    full = _fit(src, X, y, roll_starts=64, **kw)
    pruned = _fit(src, X, y, **kw)
    assert len(pruned.roll_objectives_) == ROLL_PRUNE_KEEP
    assert pruned.best_roll_ == full.best_roll_, (shift, labelled)
    np.testing.assert_allclose(pruned.H_, full.H_)
    assert _roll_error(full.best_roll_, shift, 64) <= 1.5, (shift, full.best_roll_)


def test_warm_up_prepares_the_solver_the_fit_uses():
    """The daemon's warm-up mirrors the dense/CG threshold of structured maps."""
    from emtl_stream.daemon.warmup import transfer_solvers
    from emtl_stream.model.transfer import MASKED_DENSE_MAX_UNKNOWNS

    kw = {"structure": "channel"}
    assert 8 * 8 * 4 <= MASKED_DENSE_MAX_UNKNOWNS < 16 * 16 * 4
    assert transfer_solvers(kw, 8, 4, True) == ("dense",)
    assert transfer_solvers(kw, 16, 4, True) == ("cg",)
