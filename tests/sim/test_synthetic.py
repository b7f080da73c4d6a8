"""SyntheticArmband: determinism, continuity, class separability, electrode-shift geometry."""

import numpy as np
import pytest
from scipy import signal
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from emtl_stream.sim.synthetic import SyntheticArmband
from naive.features import mav_wl_windows


def _dataset(arm, shift, seconds=2.0, settle=0.3):
    arm.set_shift(shift)
    win, step = int(0.2 * arm.fs), int(0.05 * arm.fs)
    X, y = [], []
    for k in range(len(arm.class_names)):
        x = arm.generate(int(seconds * arm.fs), k)[int(settle * arm.fs):]
        F = mav_wl_windows(x, win, step)
        X.append(F)
        y += [k] * len(F)
    return np.vstack(X), np.array(y)


def test_same_seed_same_signal_other_seed_other_signal():
    a, b, c = (SyntheticArmband(8, 500.0, seed=s) for s in (3, 3, 4))
    xa = np.r_[a.generate(400, "open"), a.generate(300, "close")]
    xb = np.r_[b.generate(400, "open"), b.generate(300, "close")]
    xc = np.r_[c.generate(400, "open"), c.generate(300, "close")]
    assert xa.dtype == np.float32 and xa.shape == (700, 8)
    np.testing.assert_array_equal(xa, xb)
    assert not np.allclose(xa, xc)


def test_state_is_continuous_across_calls():
    a, b = SyntheticArmband(6, 1000.0, seed=1), SyntheticArmband(6, 1000.0, seed=1)
    whole = a.generate(1000, "flex")
    parts = np.r_[b.generate(1, "flex"), b.generate(333, "flex"), b.generate(666, "flex")]
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-6)


def test_spectrum_is_emg_like():
    arm = SyntheticArmband(4, 1000.0, seed=2, noise_level=0.0)
    x = arm.generate(20000, "close")
    f, p = signal.welch(x, fs=1000.0, axis=0, nperseg=512)
    p = p.mean(1)
    in_band = p[(f >= 20) & (f <= 150)].sum()
    assert in_band / p.sum() > 0.9  # power is in the 20-150 Hz muscle band
    assert np.isfinite(x).all()


@pytest.mark.parametrize("fs", [200.0, 1000.0])
def test_classes_separable_and_one_electrode_shift_collapses_accuracy(fs):
    arm = SyntheticArmband(8, fs, seed=0)
    Xtr, ytr = _dataset(arm, 0.0)
    Xte, yte = _dataset(arm, 0.0)
    Xsh, ysh = _dataset(arm, 1.0)
    lda = LinearDiscriminantAnalysis().fit(Xtr, ytr)
    assert lda.score(Xte, yte) > 0.95
    assert lda.score(Xsh, ysh) < 0.7


def test_mixing_rolls_exactly_for_whole_electrodes_and_smoothly_between():
    arm = SyntheticArmband(8, 1000.0, seed=5)
    g0 = arm.mixing.copy()
    arm.set_shift(1.0)
    g1 = arm.mixing.copy()
    arm.set_shift(0.5)
    gh = arm.mixing.copy()
    arm.set_shift(-3.0)
    gm3 = arm.mixing.copy()
    np.testing.assert_allclose(g1, np.roll(g0, 1, axis=0), atol=1e-12)
    np.testing.assert_allclose(gm3, np.roll(g0, -3, axis=0), atol=1e-12)
    d01 = np.linalg.norm(g1 - g0)
    assert np.linalg.norm(gh - g0) < d01 and np.linalg.norm(gh - g1) < d01
    # in between, every gain lies between its two neighbours' values (up to the
    # von-Mises curvature): its distance to the average of both is small
    assert np.linalg.norm(gh - (g0 + g1) / 2) < 0.25 * d01


def test_shifted_signal_is_the_channel_roll_of_the_unshifted_one():
    a = SyntheticArmband(8, 1000.0, seed=9, noise_level=0.0)
    b = SyntheticArmband(8, 1000.0, seed=9, noise_level=0.0, shift=1.0)
    xa, xb = a.generate(2000, "ext"), b.generate(2000, "ext")
    np.testing.assert_allclose(xb, np.roll(xa, 1, axis=1), rtol=1e-4, atol=1e-5)
    # with electrode noise the per-channel amplitude pattern still rolls
    a = SyntheticArmband(8, 1000.0, seed=9)
    b = SyntheticArmband(8, 1000.0, seed=9, shift=1.0)
    c = SyntheticArmband(8, 1000.0, seed=9, shift=0.5)
    pa, pb, pc = (np.abs(m.generate(4000, "ext")).mean(0) for m in (a, b, c))
    np.testing.assert_allclose(pb, np.roll(pa, 1), rtol=0.05)
    lo, hi = np.minimum(pa, np.roll(pa, 1)), np.maximum(pa, np.roll(pa, 1))
    assert np.all(pc >= 0.8 * lo) and np.all(pc <= 1.2 * hi)
    assert np.linalg.norm(pc - pa) < np.linalg.norm(pb - pa)


def test_large_grid_and_argument_errors():
    arm = SyntheticArmband(320, 2048.0, seed=0)
    x = arm.generate(512, "open")
    assert x.shape == (512, 320) and x.dtype == np.float32 and np.isfinite(x).all()
    assert arm.generate(0, "rest").shape == (0, 320)
    with pytest.raises(ValueError, match=r"class_ must be one of \['rest'"):
        arm.generate(10, "wave")
    with pytest.raises(ValueError, match="n_channels must be <= 320"):
        SyntheticArmband(321)
    with pytest.raises(ValueError, match="distinct"):
        SyntheticArmband(classes=("a", "a"))
