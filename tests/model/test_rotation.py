"""Fractional ring rotations and the continuous rotation-and-gain search of TransferEM."""

import warnings

import numpy as np
import pytest

from emtl_stream.errors import TransferConvergenceWarning
from emtl_stream.eval_rotations import SyntheticProtocol, rotate_ring, synthetic_session
from emtl_stream.model.gmm import LabelledGMM
from emtl_stream.model.transfer import (TransferEM, ring_roll_matrix, ring_rotation_matrix,
                                        rotation_inverse)
from emtl_stream.pipeline.features import FeatureExtractor
from emtl_stream.sim.synthetic import SyntheticArmband
from sources import make_source



@pytest.mark.parametrize("rotation", [0.0, 0.25, 0.5, 1.0, 1.5, 2.75, -0.5, 7.9])
def test_rotation_matrix_is_the_neighbour_interpolation(rng, rotation):
    C, f = 8, 3
    X = rng.normal(size=(5, C * f))
    k = int(np.floor(rotation))
    w = rotation - k
    Xc = X.reshape(5, C, f)
    # channel c of the result = (1 - w) x[c - k] + w x[c - k - 1], per feature type
    want = ((1 - w) * np.roll(Xc, k, axis=1) + w * np.roll(Xc, k + 1, axis=1)).reshape(5, -1)
    np.testing.assert_allclose(X @ ring_rotation_matrix(C * f, C, rotation).T, want, atol=1e-12)
    if rotation == int(rotation):
        np.testing.assert_array_equal(ring_rotation_matrix(C * f, C, rotation),
                                      ring_roll_matrix(C * f, C, int(rotation)))


def test_rotate_ring_matches_the_feature_rotation_on_raw_samples(rng):
    x = rng.normal(size=(50, 8))
    for rot, g in [(0.5, 0.7), (2.25, 1.4), (1.0, 1.0)]:
        np.testing.assert_allclose(rotate_ring(x, rot, g),
                                   g * x @ ring_rotation_matrix(8, 8, rot).T, atol=1e-12)


@pytest.mark.parametrize("rotation", [1.0, 0.5, 2.25])
def test_rotation_inverse_is_the_ridge_closed_form(rotation):
    C, f, eps = 6, 2, 0.05
    n = C * f
    R = ring_rotation_matrix(n, C, rotation)
    U, s, Vt = np.linalg.svd(R)
    want = Vt.T @ np.diag(s / (s ** 2 + eps)) @ U.T  # ridge pseudo-inverse through the SVD
    got = rotation_inverse(n, C, rotation, eps)
    np.testing.assert_allclose(got, want, atol=1e-12)
    if rotation == int(rotation):
        np.testing.assert_allclose(got, ring_roll_matrix(n, C, -int(rotation)) / (1 + eps),
                                   atol=1e-12)


@pytest.mark.parametrize("labelled", [True, False])
@pytest.mark.parametrize("rotation", [2.75, 4.25])
def test_search_finds_the_known_rotation_and_gain(rotation, labelled):
    """Target built exactly from the search family: X = (diag(g) S(θ))⁻¹ z, z ~ source."""
    rng = np.random.default_rng(7)
    C, f, L = 6, 2, 4
    n = C * f
    src = make_source(rng, n, L, sep=3.0)
    comp = rng.integers(0, L, 300)
    cov = np.linalg.inv(src.prec_factor[0] @ src.prec_factor[0].T)
    Z = src.means[comp] + rng.multivariate_normal(np.zeros(n), cov, 300)
    gains = np.array([1 / 0.7, 1.0])  # the amplitude type lost 30 %, the other kept it
    Htrue = np.repeat(gains[None], C, 0).ravel()[:, None] * rotation_inverse(n, C, rotation, 0.05)
    X = Z @ np.linalg.inv(Htrue).T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TransferConvergenceWarning)
        te = TransferEM(src, ring_channels=C, structure="channel", reg=0.1,
                        rotation_search="continuous", search_iter=200)
        te.fit(X, comp if labelled else None)
    assert te.rotation_ == rotation
    np.testing.assert_allclose(te.ring_taps_, gains, rtol=0.05)
    np.testing.assert_allclose(te.H0_, te.H_start_)  # shrunk towards the rotated, scaled start
    assert np.mean(te.predict(X) == comp) > 0.9


def _synthetic(shifts, gain, seed=0):
    p = SyntheticProtocol()
    ex = FeatureExtractor(("mav", "wl", "zc", "ssc"), n_channels=8, fs=p.fs)
    arm = SyntheticArmband(8, p.fs, seed=seed, noise_level=p.noise_level)
    Xs, ys, _ = synthetic_session(arm, p.train_s, ex, p.window_ms, p.step_ms)
    source = LabelledGMM(covariance_type="tied", random_state=0).fit(Xs, ys)
    out = {}
    for sh in shifts:
        arm.set_shift(sh)
        arm.set_gain(gain)
        Xb, yb, _ = synthetic_session(arm, p.burst_s, ex, p.window_ms, p.step_ms)
        Xu, _, _ = synthetic_session(arm, p.unlabelled_s, ex, p.window_ms, p.step_ms)
        Xt, yt, _ = synthetic_session(arm, p.test_s, ex, p.window_ms, p.step_ms)
        accs = {}
        for mode in ("roll", "continuous"):
            kw = dict(structure="channel", reg=0.1, ring_channels=8, rotation_search=mode)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TransferConvergenceWarning)
                tb = TransferEM(source, **kw).fit(Xb, yb)
                tz = TransferEM(source, **kw).fit(Xu, None)
            accs[mode] = (np.mean(tb.predict(Xt) == yt), np.mean(tz.predict(Xt) == yt))
        out[sh] = accs
    return out


def test_synthetic_fractional_rotation_with_gain_recovers():
    """Half and 1.5 spacings at gain 0.7: the continuous search beats the roll starts
    (burst and zero-label) and stays within 0.20 of a whole-electrode shift at the
    same gain (measured gap: 0.08-0.18; "within a few points" is not reached yet)."""
    acc = _synthetic((1.0, 0.5, 1.5), 0.7)
    ref_b, ref_z = acc[1.0]["continuous"]
    for sh in (0.5, 1.5):
        b, z = acc[sh]["continuous"]
        rb, rz = acc[sh]["roll"]
        assert b >= ref_b - 0.20 and z >= ref_z - 0.20, (sh, acc)
        assert b >= rb + 0.05 and z >= rz + 0.05, (sh, acc)


def _gaussian_problem(rotation, N=60, seed=3, sep=3.0):
    rng = np.random.default_rng(seed)
    C, f, L = 6, 2, 4
    n = C * f
    src = make_source(rng, n, L, sep=sep)
    comp = np.arange(N) % L
    cov = np.linalg.inv(src.prec_factor[0] @ src.prec_factor[0].T)
    Z = src.means[comp] + rng.multivariate_normal(np.zeros(n), cov, N)
    return src, Z @ ring_rotation_matrix(n, C, rotation).T, comp, C


def _nearest_mean(src, Z):
    """Independent LDA rule: equal priors, shared precision -> nearest mean in the Λ metric."""
    Lam = src.prec_factor[0] @ src.prec_factor[0].T
    d = Z[:, None, :] - src.means[None]
    return np.argmin(np.einsum("jki,il,jkl->jk", d, Lam, d), axis=1)


def test_guard_keeps_the_live_map_without_a_shift():
    src, X, comp, C = _gaussian_problem(0.0, sep=6.0)
    te = TransferEM(src, ring_channels=C, structure="channel", reg=0.1,
                    rotation_search="continuous").fit(X, comp)
    # both halves are held out in turn, so the live map is scored on every labelled row
    want_live = np.mean(_nearest_mean(src, X) == comp)
    assert te.guard_["live"] == pytest.approx(want_live)
    assert te.guard_["kept_live"] and want_live == 1.0
    np.testing.assert_array_equal(te.H_, np.eye(X.shape[1]))
    np.testing.assert_array_equal(te.b_, 0.0)


def test_guard_lets_a_real_rotation_through():
    src, X, comp, C = _gaussian_problem(2.0)
    te = TransferEM(src, ring_channels=C, structure="channel", reg=0.1,
                    rotation_search="continuous").fit(X, comp)
    assert not te.guard_["kept_live"] and te.guard_["new"] > te.guard_["live"]
    assert te.guard_["live"] == pytest.approx(np.mean(_nearest_mean(src, X) == comp))
    assert np.mean(te.predict(X) == comp) > 0.9
    off = TransferEM(src, ring_channels=C, structure="channel", reg=0.1,
                     rotation_search="continuous", guard=False).fit(X, comp)
    assert off.guard_ is None
    np.testing.assert_array_equal(off.H_, te.H_)
    # without labels there is nothing to hold out
    assert TransferEM(src, ring_channels=C, structure="channel", reg=0.1,
                      rotation_search="continuous").fit(X, None).guard_ is None


def test_synthetic_gain_scales_every_sample():
    a = SyntheticArmband(8, 500.0, seed=4, noise_level=0.5, shift=0.5)
    b = SyntheticArmband(8, 500.0, seed=4, noise_level=0.5, shift=0.5, gain=1.4)
    for c in (0, 2):
        np.testing.assert_allclose(b.generate(300, c), 1.4 * a.generate(300, c), rtol=1e-6,
                                   atol=1e-6)
    with pytest.raises(ValueError, match="gain"):
        a.set_gain(0.0)


def test_guard_holds_out_both_halves_in_turn():
    # Windows 0, 2, 4, ... of class 0 sit on class 1's mean: the live map gets them
    # wrong and the others right, so a one-split guard would score the live map 1.0.
    src, X, comp, C = _gaussian_problem(0.0, sep=6.0)
    X = X.copy()
    first_half = np.flatnonzero(comp == 0)[0::2]
    X[first_half] = src.means[1]
    te = TransferEM(src, ring_channels=C, structure="channel", reg=0.1,
                    rotation_search="continuous").fit(X, comp)
    want_live = np.mean(_nearest_mean(src, X) == comp)
    assert want_live < 1.0
    assert te.guard_["live"] == pytest.approx(want_live)


@pytest.mark.parametrize("rotation", [2.5, 4.5])
def test_a_half_spacing_rotation_beats_the_live_map_start(rotation):
    """With ``H_init`` (the daemon's live map) as an extra start, the refined rotation
    candidate still wins: both are scored with the search's floored Jacobian, so S(θ)'s
    near-zero singular values at half a spacing do not hand the win to the live map."""
    src, X, comp, C = _gaussian_problem(rotation, N=300, seed=7)  # the armband turned
    n = X.shape[1]
    fits = {}
    for name, H_init in (("alone", None), ("with the live map", np.eye(n))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TransferConvergenceWarning)
            te = TransferEM(src, ring_channels=C, structure="channel", reg=0.1,
                            rotation_search="continuous").fit(X, None, H_init=H_init)
        fits[name] = (te.rotation_, np.mean(te.predict(X) == comp))
    assert fits["alone"][0] == rotation and fits["alone"][1] > 0.9, fits
    assert fits["with the live map"] == fits["alone"], fits
