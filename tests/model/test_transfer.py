"""TransferEM against closed forms, a plain-numpy EM and synthetic/real shifts."""

import warnings

import numpy as np
import pytest

from emtl_stream.errors import BurstTooShort, DegenerateBurst, TransferConvergenceWarning
from emtl_stream.model.source import SourceComponents
from emtl_stream.model.transfer import CG_RTOL, TransferEM, ring_roll_matrix
from naive import transfer as nv
from sources import lda_source, make_source, sample, shifted


# ---------------------------------------------------------------- exactness
def test_reference_compatible_mode_is_closed_form_ridge(rng):
    src = make_source(rng, 6, 4, 1, True)
    X, y, _ = shifted(rng, src, 25)
    te = TransferEM(src, kind="shared", reg=1e-5, reg_scale="absolute", shrink_to="zero",
                    bias=False).fit(X, y)
    My = src.means[y].T
    H = My @ X @ np.linalg.inv(X.T @ X + 1e-5 * np.eye(6))
    np.testing.assert_allclose(te.H_, H, rtol=1e-8, atol=1e-12 * np.abs(H).max())
    assert te.converged_ and te.lambda_ == 1e-5


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("solver", ["dense", "cg"])
def test_full_fit_equals_plain_numpy_em(rng, bias, solver):
    src = make_source(rng, 4, 3, 2, False)
    X, y, _ = shifted(rng, src, 40)
    y = y.astype(object)
    y[::5] = None  # semi-supervised
    n_iter = 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TransferConvergenceWarning)
        te = TransferEM(src, kind="full", bias=bias, reg=0.1, max_iter=n_iter, tol=0.0,
                        solver=solver, cg_rtol=1e-13).fit(X, y)
    yi = np.array([-1 if v is None else v for v in y])
    Ht, trace = nv.transfer_em(src, X, yi, np.eye(4), np.eye(4), te.lambda_, bias, n_iter)
    np.testing.assert_allclose(te.H_, Ht[:, :4], rtol=1e-7, atol=1e-9)
    if bias:
        np.testing.assert_allclose(te.b_, Ht[:, 4], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(te.log_likelihood_, trace, rtol=1e-9)
    if solver == "cg":
        assert te.cg_iters_ and max(te.cg_iters_) > 0  # the CG path really ran


def test_default_cg_tolerance_follows_the_exact_em_path(rng):
    """CG stopped at CG_RTOL is a generalised EM step: the objective never drops, and
    trace and map match a tight solve far below a map's sampling error."""
    src = make_source(rng, 12, 4, 2, False)
    X, y, _ = shifted(rng, src, 120)
    kw = dict(kind="full", reg=0.1, max_iter=8, tol=0.0, solver="cg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TransferConvergenceWarning)
        loose = TransferEM(src, **kw).fit(X, y)
        tight = TransferEM(src, cg_rtol=1e-13, **kw).fit(X, y)
    assert loose.cg_rtol == CG_RTOL
    assert sum(loose.cg_iters_) < sum(tight.cg_iters_)  # the point of the default
    trace = np.asarray(loose.log_likelihood_)
    assert np.all(np.diff(trace) >= -1e-12 * np.abs(trace[:-1]))
    np.testing.assert_allclose(loose.log_likelihood_, tight.log_likelihood_, rtol=1e-5)
    np.testing.assert_allclose(loose.H_, tight.H_, rtol=0, atol=1e-4 * np.abs(tight.H_).max())


def test_shared_step_equals_exact_full_step_on_a_tied_source(rng):
    # With equal precisions the per-component system reduces to the ridge closed form.
    src = make_source(rng, 5, 3, 2, True)
    X, y, _ = shifted(rng, src, 30)
    kw = dict(reg=0.5, bias=True, max_iter=6, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TransferConvergenceWarning)
        a = TransferEM(src, kind="shared", **kw).fit(X, y)
        b = TransferEM(src, kind="full", **kw).fit(X, y)
    np.testing.assert_allclose(a.H_, b.H_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(a.b_, b.b_, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("shared", [True, False])
def test_objective_never_decreases(seed, shared):
    rng = np.random.default_rng(seed)
    src = make_source(rng, 6, 3, 3, shared, sep=1.5)  # overlapping sub-components
    X, y, _ = shifted(rng, src, 60, strength=0.5, noise=0.6)
    y = y.astype(object)
    y[rng.random(60) < 0.5] = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TransferConvergenceWarning)
        te = TransferEM(src, reg=0.05, bias=True, max_iter=30, tol=1e-12,
                        solver="cg" if seed % 2 else "dense").fit(X, y)
    tr = np.array(te.log_likelihood_)
    assert len(tr) > 3
    assert np.all(np.diff(tr) >= -1e-10 * np.abs(tr[:-1]).max())
    # and the reported trace is the independent penalised objective of the final map
    Ht = np.hstack([te.H_, te.b_[:, None]])
    Xt = np.hstack([X, np.ones((60, 1))])
    yi = np.array([-1 if v is None else v for v in y])
    want = nv.penalised_objective(src, Xt, yi, Ht, te.H0_, te.lambda_, 6)
    assert tr[-1] == pytest.approx(want, rel=1e-10)
    assert te.objective(X, y) == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("shared", [True, False])
def test_scale_invariance(rng, shared):
    src = make_source(rng, 5, 3, 2, shared)
    X, y, _ = shifted(rng, src, 30)
    c = 37.0
    src_c = SourceComponents(src.means * c, src.prec_factor / c,
                             src.log_det_prec - 2 * 5 * np.log(c), src.log_weights,
                             src.log_label_given_comp, src.classes, shared)
    kw = dict(reg=0.3, bias=True, tol=1e-12, max_iter=200)
    a = TransferEM(src, **kw).fit(X, y)
    b = TransferEM(src_c, **kw).fit(X * c, y)
    np.testing.assert_allclose(a.H_, b.H_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(a.b_ * c, b.b_, rtol=1e-6, atol=1e-6)
    Xt, _, _ = shifted(rng, src, 200)
    np.testing.assert_array_equal(a.predict(Xt), b.predict(Xt * c))


# ---------------------------------------------------------------- labels
def test_unknown_label_is_named(rng):
    src = make_source(rng, 3, 3, 1, True, classes=["fist", "open", "rest"])
    X = rng.normal(size=(6, 3))
    with pytest.raises(ValueError, match=r"'pinch'.*fist.*open.*rest"):
        TransferEM(src).fit(X, ["fist", "open", "rest", "pinch", None, "fist"])


def test_string_classes_and_unlabelled_rows(rng):
    src = make_source(rng, 3, 3, 1, True, classes=["fist", "open", "rest"])
    Z, yi = sample(rng, src, 30, noise=0.2)
    y = [src.classes[i] if j % 3 else None for j, i in enumerate(yi)]
    te = TransferEM(src, reg=0.1).fit(Z, y)
    assert np.mean(te.predict(Z) == src.classes[yi]) > 0.95
    assert te.predict_proba(Z).shape == (30, 3)


def test_unsupervised_recovers_a_permutation(rng):
    # more classes than dimensions, so only the true permutation maps every
    # cluster onto a source mean (with L <= m any assignment would fit exactly)
    m, L, sigma = 3, 8, 0.3
    means = rng.normal(size=(L, m)) * 4.0
    src = SourceComponents(means, np.repeat(np.eye(m)[None] / sigma, L, 0),
                           np.full(L, -2 * m * np.log(sigma)), np.full(L, -np.log(L)),
                           np.where(np.eye(L) > 0, 0.0, -np.inf), np.arange(L), True)
    yi = rng.integers(0, L, 200)
    Z = means[yi] + sigma * rng.normal(size=(200, m))
    perm = np.array([2, 0, 1])
    X = Z[:, perm]  # target features are permuted source features
    Hp = np.zeros((m, m))
    Hp[perm, np.arange(m)] = 1.0  # X @ Hp.T == Z
    start = 0.8 * Hp + 0.2 * np.eye(m)  # near the answer: EM must finish the job without labels
    te = TransferEM(src, reg=1e-3, shrink_to="zero").fit(X, None, H_init=start)
    assert np.mean(te.predict(X) == yi) > 0.95
    np.testing.assert_allclose(te.H_, Hp, atol=0.1)
    from emtl_stream.model.classify import MappedClassifier
    assert np.mean(MappedClassifier(src, np.eye(m)).predict_index(X) == yi) < 0.8


def test_integer_minus_one_is_unlabelled(rng):
    src = make_source(rng, 3, 2, 1, True)
    Z, yi = sample(rng, src, 20)
    y = yi.copy()
    y[:10] = -1
    a = TransferEM(src, reg=0.1).fit(Z, y)
    b = TransferEM(src, reg=0.1).fit(Z, [None if v == -1 else v for v in y])
    np.testing.assert_allclose(a.H_, b.H_)


# ---------------------------------------------------------------- degenerate
def test_degenerate_inputs(rng):
    src = make_source(rng, 4, 2, 1, True)
    with pytest.raises(BurstTooShort):
        TransferEM(src).fit(np.empty((0, 4)))
    with pytest.raises(BurstTooShort):
        TransferEM(src).fit(np.ones((1, 4)), [0])
    X = rng.normal(size=(10, 4))
    X[3, 1] = np.nan
    X[7, 0] = np.inf
    with pytest.raises(DegenerateBurst, match="2 of 10 rows"):
        TransferEM(src).fit(X)
    with pytest.raises(DegenerateBurst, match="all zeros"):
        TransferEM(src).fit(np.zeros((5, 4)))
    with pytest.raises(ValueError, match="one label per row"):
        TransferEM(src).fit(rng.normal(size=(5, 4)), [0, 1])


@pytest.mark.parametrize("shared", [True, False])
def test_constant_feature_rank_deficient_and_absent_class_give_finite_H(rng, shared):
    src = make_source(rng, 4, 3, 1, shared)
    Z, y = sample(rng, src, 12)
    keep = y != 2  # one class absent
    X = Z[keep].copy()
    X[:, 1] = 5.0  # constant feature
    X[:, 3] = 2 * X[:, 0]  # rank deficient
    te = TransferEM(src, bias=True).fit(X, y[keep])
    assert np.all(np.isfinite(te.H_)) and np.all(np.isfinite(te.b_))
    with pytest.raises(DegenerateBurst, match="reg"):
        TransferEM(src, reg=0.0, reg_scale="absolute", kind="shared").fit(X[:3], y[keep][:3])


@pytest.mark.parametrize("n, shared, kw", [
    (16, False, dict(kind="full", bias=True)),  # per-component CG (272 unknowns)
    (64, True, dict(structure="channel", ring_channels=16)),  # block-Jacobi CG
    (64, True, dict(structure="channel", ring_channels=16, bias=True)),  # masked CG
])
def test_degenerate_bursts_on_the_cg_paths_give_a_finite_map_or_a_clear_error(rng, n,
                                                                             shared, kw):
    """At the sizes the M-step solves by CG (stopped at CG_RTOL), a burst with a constant,
    a duplicated and ten silent features still gives a finite map, and an unregularised
    rank-deficient one a DegenerateBurst, never NaN."""
    src = make_source(rng, n, 3, 1, shared)
    Z, y = sample(rng, src, 30)
    X = Z.copy()
    X[:, 1] = 5.0
    X[:, 3] = 2 * X[:, 0]
    X[:, 10:20] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TransferConvergenceWarning)
        te = TransferEM(src, **kw).fit(X, y)
    assert te.cg_iters_ and max(te.cg_iters_) > 0  # the CG path ran
    assert np.all(np.isfinite(te.H_)) and np.all(np.isfinite(te.b_))
    with pytest.raises(DegenerateBurst, match="reg"):
        TransferEM(src, reg=0.0, reg_scale="absolute", **kw).fit(X[:3], y[:3])


def test_max_iter_warns(rng):
    src = make_source(rng, 4, 2, 2, True, sep=1.0)
    X, y, _ = shifted(rng, src, 40, noise=1.0)
    with pytest.warns(TransferConvergenceWarning):
        te = TransferEM(src, max_iter=1, tol=0.0).fit(X, None)
    assert te.n_iter_ == 1 and not te.converged_


# ---------------------------------------------------------------- ring
@pytest.mark.parametrize("k", [1, 3, 5])
def test_ring_roll_recovers_the_right_roll(k):
    rng = np.random.default_rng(k)
    C, f, L = 6, 2, 5
    n = C * f
    src = make_source(rng, n, L, 1, True, sep=2.0)
    Z, y = sample(rng, src, 400, noise=0.5)
    R = ring_roll_matrix(n, C, k)
    X = Z @ R  # target = source rolled: X @ R.T == Z
    np.testing.assert_allclose(X @ R.T, Z)
    idx = np.concatenate([np.flatnonzero(y == c)[:3] for c in range(L)])  # 3 points per class
    te = TransferEM(src, ring_channels=C, reg=1.0).fit(X[idx], y[idx])
    assert te.best_roll_ == k
    assert set(te.roll_objectives_) == set(range(C))
    acc = np.mean(te.predict(X) == y)
    from emtl_stream.model.classify import MappedClassifier
    base = np.mean(MappedClassifier(src, np.eye(n)).predict_index(X) == y)
    assert acc > 0.9 and acc > base + 0.3


def test_ring_requires_square_divisible(rng):
    src = make_source(rng, 6, 2, 1, True)
    with pytest.raises(ValueError, match="ring_channels=4"):
        TransferEM(src, ring_channels=4).fit(rng.normal(size=(5, 6)), [0, 1, 0, 1, 0])


# ---------------------------------------------------------------- real data
def _mav_wl(emg_dir, subject, condition):
    z = np.load(emg_dir / f"ciil_es_s{subject:02d}_{condition}.npz")
    emg = z["emg"].astype(float)
    win, step = 40, 10
    X, y, rep, t = [], [], [], []
    for s, n, c, r in zip(z["seg_start"], z["seg_len"], z["seg_class"], z["seg_rep"]):
        seg = emg[s:s + n]
        for a in range(0, n - win + 1, step):
            w = seg[a:a + win]
            mav = np.abs(w).mean(0)
            wl = np.abs(np.diff(w, axis=0)).sum(0)
            X.append(np.column_stack([mav, wl]).ravel())  # channel-major
            y.append(c)
            rep.append(r)
            t.append(a)
    return np.array(X), np.array(y), np.array(rep), np.array(t)


def test_real_emg_shift_recovered_from_half_a_second(emg_dir):
    gains = []
    for subject in (0, 5, 12):
        Xb, yb, _, _ = _mav_wl(emg_dir, subject, "baseline")
        Xs, ys, rs, ts = _mav_wl(emg_dir, subject, "shifted")
        # log features: amplitude scaling becomes an offset; one scale pooled over channels
        Xb, Xs = np.log(Xb + 1.0), np.log(Xs + 1.0)
        src = lda_source(Xb, yb)
        cal = (rs == 0) & (ts < 100)  # the first 0.5 s of each class in shifted rep 0
        test = rs >= 2
        from emtl_stream.model.classify import MappedClassifier
        none = np.mean(MappedClassifier(src, np.eye(16)).predict_index(Xs[test]) == ys[test])
        te = TransferEM(src, ring_channels=8, reg=1.0).fit(Xs[cal], ys[cal])
        acc = np.mean(te.predict(Xs[test]) == ys[test])
        gains.append(acc - none)
        assert acc > none + 0.15, (subject, none, acc)
    assert np.mean(gains) > 0.25
