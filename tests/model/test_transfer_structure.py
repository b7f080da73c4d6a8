"""Structured transfer maps (structure="channel" / boolean masks) against plain-numpy twins."""

import warnings

import numpy as np
import pytest

from emtl_stream.errors import ModelError, TransferConvergenceWarning
from emtl_stream.model.classify import MappedClassifier
from emtl_stream.model.source import SourceComponents
from emtl_stream.model.transfer import TransferEM, channel_mask, ring_roll_matrix
from naive import transfer as nv
from sources import lda_source, make_source, shared_hudgins, shifted


def fit_quiet(src, X, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TransferConvergenceWarning)
        return TransferEM(src, **kw).fit(X, y)


def test_channel_mask_is_same_feature_type():
    M = channel_mask(12, 4)  # f = 3
    want = np.array([[i % 3 == j % 3 for j in range(12)] for i in range(12)])
    np.testing.assert_array_equal(M, want)
    for r in range(4):  # every roll is a block permutation that respects the mask
        P = ring_roll_matrix(12, 4, r)
        assert not np.any(P[~M])


# ---------------------------------------------------------------- exactness
@pytest.mark.parametrize("penalty", ["identity", "precision"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("solver", ["dense", "cg"])
@pytest.mark.parametrize("shared", [True, False])
def test_masked_fit_equals_plain_numpy_em(rng, penalty, bias, solver, shared):
    C, f = 3, 2
    n = C * f
    src = make_source(rng, n, 3, 1 if shared else 2, shared)
    X, y, _ = shifted(rng, src, 40)
    y = y.astype(object)
    y[::4] = None  # semi-supervised, so responsibilities really change between iterations
    n_iter = 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TransferConvergenceWarning)
        te = TransferEM(src, structure="channel", ring_channels=C, bias=bias, reg=0.2,
                        max_iter=n_iter, tol=0.0, solver=solver, cg_rtol=1e-13,
                        penalty=penalty).fit(X, y, H_init=np.eye(n))
    mask = channel_mask(n, C)
    assert te.penalty_ == penalty and te.mask_ is not None
    yi = np.array([-1 if v is None else v for v in y])
    Pen = np.eye(n) if penalty == "identity" else None
    # the winning start is some roll (or H_init); replay EM from it with the twin
    start = ring_roll_matrix(n, C, te.best_roll_) if te.best_roll_ is not None else np.eye(n)
    Ht, trace = nv.transfer_em(src, X, yi, start * mask, te.H0_, te.lambda_, bias, n_iter,
                               mask=mask, Pen=Pen)
    np.testing.assert_allclose(te.H_, Ht[:, :n], rtol=1e-7, atol=1e-9)
    if bias:
        np.testing.assert_allclose(te.b_, Ht[:, n], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(te.log_likelihood_, trace, rtol=1e-9)
    assert not np.any(te.H_[~mask])
    if solver == "cg":
        assert te.cg_iters_ and max(te.cg_iters_) > 0


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("bias", [False, True])
def test_random_mask_equals_twin(rng, shared, bias):
    m, n = 4, 5
    src = make_source(rng, m, 3, 1, shared)
    Z, y, _ = shifted(rng, make_source(rng, m, 3, 1, shared), 30)
    X = np.hstack([Z, rng.normal(size=(30, 1))])
    y = y.astype(object)
    y[::3] = None
    mask = rng.random((m, n)) < 0.5
    mask[np.arange(m), np.arange(m)] = True
    H0 = rng.normal(size=(m, n))
    te = fit_quiet(src, X, y, structure=mask, shrink_to=H0, bias=bias, reg=0.3, max_iter=3,
                   tol=0.0, penalty="precision")
    np.testing.assert_array_equal(te.H0_, H0 * mask)  # H₀ projected onto the mask
    yi = np.array([-1 if v is None else v for v in y])
    Ht, trace = nv.transfer_em(src, X, yi, H0 * mask, H0 * mask, te.lambda_, bias, 3,
                               mask=mask)
    np.testing.assert_allclose(te.H_, Ht[:, :n], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(te.log_likelihood_, trace, rtol=1e-9)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("bias", [False, True])
def test_all_true_mask_equals_dense(rng, shared, bias):
    src = make_source(rng, 5, 3, 2, shared)
    X, y, _ = shifted(rng, src, 30)
    kw = dict(reg=0.5, bias=bias, max_iter=6, tol=0.0, penalty="precision")
    a = fit_quiet(src, X, y, **kw)
    b = fit_quiet(src, X, y, structure=np.ones((5, 5), bool), **kw)
    assert b.lambda_ == pytest.approx(a.lambda_, rel=1e-12)
    np.testing.assert_allclose(a.H_, b.H_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(a.b_, b.b_, rtol=1e-8, atol=1e-10)
    k = min(len(a.log_likelihood_), len(b.log_likelihood_))  # tol=0 may stop on a tie
    assert k >= 3
    np.testing.assert_allclose(a.log_likelihood_[:k], b.log_likelihood_[:k], rtol=1e-10)


def test_identity_penalty_lambda_is_the_prototype_trace_ratio(rng):
    # λ = reg · tr(G)/p with G = Σ_j A_jᵀ Λ A_j the normal matrix of the p free entries
    C, f = 4, 2
    n = C * f
    src = make_source(rng, n, 4, 1, True)
    X, y, _ = shifted(rng, src, 25)
    te = TransferEM(src, structure="channel", ring_channels=C, reg=0.1).fit(X, y)
    assert te.penalty_ == "identity"
    mask = channel_mask(n, C)
    fi, fa = np.nonzero(mask)
    Lam = src.precisions[0]
    G = np.zeros((fi.size, fi.size))
    for x in X:
        A = np.zeros((n, fi.size))
        A[fi, np.arange(fi.size)] = x[fa]
        G += A.T @ Lam @ A
    assert te.lambda_ == pytest.approx(0.1 * np.trace(G) / fi.size, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shared", [True, False])
def test_masked_objective_never_decreases(seed, shared):
    rng = np.random.default_rng(seed)
    C, f = 3, 2
    src = make_source(rng, C * f, 3, 3, shared, sep=1.5)
    X, y, _ = shifted(rng, src, 60, strength=0.5, noise=0.6)
    y = y.astype(object)
    y[rng.random(60) < 0.5] = None
    te = fit_quiet(src, X, y, structure="channel", ring_channels=C, reg=0.05, bias=True,
                   max_iter=30, tol=1e-12, solver="cg" if seed % 2 else "dense")
    tr = np.array(te.log_likelihood_)
    assert len(tr) > 3
    assert np.all(np.diff(tr) >= -1e-10 * np.abs(tr).max())
    Ht = np.hstack([te.H_, te.b_[:, None]])
    Xt = np.hstack([X, np.ones((60, 1))])
    yi = np.array([-1 if v is None else v for v in y])
    want = nv.penalised_objective(src, Xt, yi, Ht, te.H0_, te.lambda_, C * f, np.eye(C * f))
    assert tr[-1] == pytest.approx(want, rel=1e-10)
    assert te.objective(X, y) == pytest.approx(want, rel=1e-10)
    # objective() of another map: also the twin's value (the daemon compares maps with it)
    H2 = te.H_ * 0.9
    want2 = nv.penalised_objective(src, Xt, yi, np.hstack([H2, te.b_[:, None]]), te.H0_,
                                   te.lambda_, C * f, np.eye(C * f))
    assert te.objective(X, y, H=H2) == pytest.approx(want2, rel=1e-10)


@pytest.mark.parametrize("penalty", ["identity", "precision"])
@pytest.mark.parametrize("shared", [True, False])
def test_masked_scale_invariance(rng, penalty, shared):
    C, f = 3, 2
    n = C * f
    src = make_source(rng, n, 3, 2, shared)
    X, y, _ = shifted(rng, src, 30)
    c = 23.0
    src_c = SourceComponents(src.means * c, src.prec_factor / c,
                             src.log_det_prec - 2 * n * np.log(c), src.log_weights,
                             src.log_label_given_comp, src.classes, shared)
    kw = dict(reg=0.3, bias=True, tol=1e-12, max_iter=200, structure="channel", ring_channels=C,
              penalty=penalty)
    a = fit_quiet(src, X, y, **kw)
    b = fit_quiet(src_c, X * c, y, **kw)
    np.testing.assert_allclose(a.H_, b.H_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(a.b_ * c, b.b_, rtol=1e-6, atol=1e-6)


def test_h_init_and_shrink_target_are_projected(rng):
    C, f = 3, 2
    n = C * f
    src = make_source(rng, n, 3, 1, True)
    X, y, _ = shifted(rng, src, 20)
    H0 = rng.normal(size=(n, n))
    te = fit_quiet(src, X, y, structure="channel", ring_channels=C, shrink_to=H0, max_iter=1)
    mask = channel_mask(n, C)
    assert not np.any(te.H_[~mask])
    fit = TransferEM(src, structure=mask, shrink_to=H0, max_iter=50).fit(
        X, y, H_init=rng.normal(size=(n, n)))
    np.testing.assert_array_equal(fit.H0_, H0 * mask)
    assert not np.any(fit.H_[~mask])


def test_bad_masks_are_named(rng):
    src = make_source(rng, 4, 2, 1, True)
    X = rng.normal(size=(6, 4))
    y = [0, 1] * 3
    with pytest.raises(TypeError, match="astype\\(bool\\)"):
        TransferEM(src, structure=np.ones((4, 4))).fit(X, y)
    with pytest.raises(ValueError, match=r"shape \(4, n\)"):
        TransferEM(src, structure=np.ones((3, 4), bool)).fit(X, y)
    bad = np.ones((4, 4), bool)
    bad[2] = False
    with pytest.raises(ValueError, match=r"row\(s\) \[2\]"):
        TransferEM(src, structure=bad).fit(X, y)
    with pytest.raises(ValueError, match=r"shape \(4, 4\)"):
        TransferEM(src, structure=np.ones((4, 5), bool)).fit(X, y)
    with pytest.raises(ValueError, match="structure must be one of"):
        TransferEM(src, structure="diagonal").fit(X, y)
    with pytest.raises(ValueError, match="ring_channels=C"):
        TransferEM(src, structure="channel").fit(X, y)
    with pytest.raises(ValueError, match="ring_channels=3"):
        TransferEM(src, structure="channel", ring_channels=3).fit(X, y)
    with pytest.raises(ValueError, match="penalty must be one of"):
        TransferEM(src, penalty="l1").fit(X, y)


def test_constructor_stores_arguments_and_fit_validates_them(rng):
    src = make_source(rng, 4, 2, 1, True)
    mask = np.ones((4, 4))  # not boolean: an error, but only when fitting
    te = TransferEM(src, structure=mask, penalty="auto", reg=3, max_iter=7)
    assert te.structure is mask and te.penalty == "auto" and te.reg == 3 and te.max_iter == 7
    assert not hasattr(te, "penalty_")
    with pytest.raises(ModelError, match="TransferEM is not fitted"):
        te.predict(np.zeros((2, 4)))
    te.structure = np.ones((4, 4), bool)
    te.fit(rng.normal(size=(6, 4)), [0, 1] * 3)
    assert te.penalty_ == "identity"


@pytest.mark.parametrize("k", [1, 4])
def test_channel_ring_recovers_the_right_roll(k):
    rng = np.random.default_rng(k)
    C, f, L = 6, 2, 5
    n = C * f
    src = make_source(rng, n, L, 1, True, sep=2.0)
    comp = rng.integers(0, L, 400)
    Z = src.means[comp] + 0.5 * rng.normal(size=(400, n))
    X = Z @ ring_roll_matrix(n, C, k)
    idx = np.concatenate([np.flatnonzero(comp == c)[:3] for c in range(L)])
    te = TransferEM(src, ring_channels=C, structure="channel", reg=0.1).fit(X[idx], comp[idx])
    assert te.best_roll_ == k
    assert np.mean(te.predict(X) == comp) > 0.9
    assert np.mean(MappedClassifier(src, np.eye(n)).predict_index(X) == comp) < 0.6


# ---------------------------------------------------------------- real data
def test_real_emg_channel_structure_at_least_as_good_as_dense(emg_dir):
    acc_dense, acc_chan = [], []
    for subject in (1, 7, 13):
        Xb, yb, rb, _ = shared_hudgins(emg_dir, subject, "baseline")
        Xs, ys, rs, ts = shared_hudgins(emg_dir, subject, "shifted")
        src = lda_source(Xb[rb <= 2], yb[rb <= 2])
        cal = (rs == 0) & (ts <= 0.5 + 1e-9)  # the first 0.5 s of each class, shifted rep 0
        test = rs >= 2
        dense = TransferEM(src, ring_channels=8, reg=1.0).fit(Xs[cal], ys[cal])
        chan = TransferEM(src, ring_channels=8, reg=0.1, structure="channel").fit(Xs[cal], ys[cal])
        assert chan.mask_.sum() == 4 * 64
        acc_dense.append(np.mean(dense.predict(Xs[test]) == ys[test]))
        acc_chan.append(np.mean(chan.predict(Xs[test]) == ys[test]))
    assert np.mean(acc_chan) >= np.mean(acc_dense), (acc_dense, acc_chan)
    assert np.mean(acc_chan) > 0.8, acc_chan
