"""The oracle maps of the rotation loss breakdown (emtl_stream.eval_rotations)."""

import numpy as np

from emtl_stream.eval_rotations import paired_channel_map, paired_type_gains
from emtl_stream.model.transfer import channel_mask, rotation_inverse


def test_paired_channel_map_recovers_a_known_channel_map(rng):
    C, f, N = 6, 3, 200
    n = C * f
    mask = channel_mask(n, C)
    H = np.where(mask, rng.normal(size=(n, n)), 0.0)
    X_new = rng.normal(size=(N, n))
    got = paired_channel_map(X_new, X_new @ H.T, C)
    np.testing.assert_allclose(got, H, atol=1e-10)
    assert np.all(got[~mask] == 0.0)


def test_paired_channel_map_is_the_per_row_least_squares_fit(rng):
    C, f, N = 4, 2, 60
    n = C * f
    X_new, X_old = rng.normal(size=(N, n)), rng.normal(size=(N, n))
    got = paired_channel_map(X_new, X_old, C)
    for i in range(n):  # normal equations on the columns of i's feature type
        idx = np.arange(i % f, n, f)
        A = X_new[:, idx]
        np.testing.assert_allclose(got[i, idx], np.linalg.solve(A.T @ A, A.T @ X_old[:, i]),
                                   atol=1e-10)


def test_paired_type_gains_recovers_known_gains(rng):
    C, f, N = 8, 4, 100
    n = C * f
    S = rotation_inverse(n, C, 1.5, 0.05)
    g = np.array([0.7, 1.4, 1.0, 0.9])
    X_new = rng.normal(size=(N, n))
    X_old = X_new @ (np.tile(g, C)[:, None] * S).T
    np.testing.assert_allclose(paired_type_gains(S, X_new, X_old, f),
                               np.tile(g, C)[:, None] * S, atol=1e-10)
