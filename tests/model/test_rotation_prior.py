"""Per-feature-kind start maps for rotations between electrodes (emtl_stream.model.rotation)."""

import numpy as np
import pytest

from emtl_stream.model.rotation import blur_gain, count_types, rotation_prior
from emtl_stream.model.transfer import TransferEM, ring_roll_matrix, rotation_inverse


@pytest.mark.parametrize("f,rho", [(0.5, 0.32), (0.25, 0.0), (0.75, 0.8)])
def test_blur_gain_undoes_the_amplitude_lost_by_mixing(f, rho):
    rng = np.random.default_rng(3)
    N = 400_000
    a = rng.normal(size=N)
    b = rho * a + np.sqrt(1 - rho ** 2) * rng.normal(size=N)  # corr(a, b) = rho, same power
    mixed = (1 - f) * a + f * b
    # the mean absolute value (MAV) of the mix against the mix of the MAVs
    want = ((1 - f) * np.abs(a).mean() + f * np.abs(b).mean()) / np.abs(mixed).mean()
    assert blur_gain(f, rho) == pytest.approx(want, rel=5e-3)


def test_blur_gain_is_one_at_a_whole_electrode():
    for k in (0.0, 1.0, 3.0, -2.0):
        assert blur_gain(k) == pytest.approx(1.0, abs=1e-12)


def test_count_types_names_zc_and_ssc():
    assert count_types(("mav", "wl", "zc", "ssc")) == (2, 3)
    assert count_types(("MAV", "log_rms")) == ()


@pytest.mark.parametrize("rotation", [0.5, 1.25, 6.75])
def test_rotation_prior_interpolates_counts_back_and_sharpens_amplitudes(rng, rotation):
    C, f, eps = 8, 4, 0.05
    n = C * f
    H = rotation_prior(n, C, rotation, eps, counts=(2, 3), rho=0.3)
    Xr = rng.normal(size=(6, n))
    k = int(np.floor(rotation))
    w = rotation - k
    Xc = Xr.reshape(6, C, f)
    # source channel c = (1 - w) x'[c + k] + w x'[c + k + 1]: the back-interpolation
    back = ((1 - w) * np.roll(Xc, -k, axis=1) + w * np.roll(Xc, -k - 1, axis=1))
    Z = (Xr @ H.T).reshape(6, C, f)
    np.testing.assert_allclose(Z[:, :, 2:], back[:, :, 2:], atol=1e-12)
    sharp = (Xr @ rotation_inverse(n, C, rotation, eps).T).reshape(6, C, f)
    np.testing.assert_allclose(Z[:, :, :2], blur_gain(w, 0.3) * sharp[:, :, :2], atol=1e-12)


def test_rotation_prior_is_the_roll_at_a_whole_electrode():
    C, f, eps = 8, 4, 0.05
    n = C * f
    H = rotation_prior(n, C, 3.0, eps, counts=(2, 3))
    R = ring_roll_matrix(n, C, -3)
    amp = np.arange(n) % f < 2
    np.testing.assert_allclose(H[~amp], R[~amp], atol=1e-12)
    np.testing.assert_allclose(H[amp], R[amp] / (1 + eps), atol=1e-12)


def test_transfer_em_takes_the_count_types():
    from emtl_stream.model.source import SourceComponents
    from emtl_stream.model.transfer import _rotation_map

    rng = np.random.default_rng(0)
    L, n = 3, 16
    P = np.repeat(np.eye(n)[None], L, 0)
    src = SourceComponents(rng.normal(size=(L, n)), P, np.zeros(L), np.full(L, -np.log(L)),
                           np.where(np.eye(L) > 0, 0.0, -np.inf), np.arange(L), True)
    s = TransferEM(src, ring_channels=8, rotation_search="continuous",
                   rotation_counts=[1])._validate()
    assert s.rotation_counts == (1,)
    np.testing.assert_allclose(_rotation_map(s, n, 0.5, per_kind=True),
                               rotation_prior(n, 8, 0.5, s.rotation_ridge, (1,)))
    np.testing.assert_allclose(_rotation_map(s, n, 0.5),  # a labelled burst: S(θ)
                               rotation_inverse(n, 8, 0.5, s.rotation_ridge))
    plain = TransferEM(src, ring_channels=8, rotation_search="continuous")._validate()
    np.testing.assert_allclose(_rotation_map(plain, n, 0.5, per_kind=True),
                               rotation_inverse(n, 8, 0.5, plain.rotation_ridge))


def test_the_daemon_passes_the_count_types_with_the_continuous_search():
    from emtl_stream.config import load_config
    from emtl_stream.daemon.bundle import transfer_kwargs

    assert "rotation_counts" not in transfer_kwargs(load_config(None, env={}), 8)
    cfg = load_config(None, env={"EMTL_TRANSFER_ROTATION_SEARCH": "continuous"})
    names = [str(v).lower() for v in cfg.features.names]
    kw = transfer_kwargs(cfg, 8)
    assert kw["rotation_counts"] == tuple(i for i, v in enumerate(names) if v in ("zc", "ssc"))
    assert kw["rotation_counts"]  # the default Hudgins set has counts
