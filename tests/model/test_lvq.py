"""GMLVQ / LGMLVQ: gradient, predictions, metric learning, scaling-trick conversion, I/O."""

import os

import numpy as np
import pytest
from naive.lvq import components_log_posterior, distances, glvq_cost, nearest_prototype_predict
from scipy.optimize import approx_fprime, check_grad

from emtl_stream.errors import FitConvergenceWarning, ModelError
from emtl_stream.model import lvq
from emtl_stream.model.lvq import GMLVQ, LGMLVQ
from emtl_stream.model.source import SourceComponents

MODELS = [GMLVQ, LGMLVQ]
ignore_convergence = pytest.mark.filterwarnings("ignore::emtl_stream.errors.FitConvergenceWarning")


def _blobs(rng, n_per_class=40, centres=((0, 0), (4, 0), (0, 4)), spread=0.6, noise_dims=0,
           noise_scale=1.0):
    centres = np.asarray(centres, dtype=float)
    y = np.repeat(np.arange(len(centres)), n_per_class)
    X = centres[y] + spread * rng.standard_normal((len(y), centres.shape[1]))
    if noise_dims:
        X = np.c_[X, noise_scale * rng.standard_normal((len(y), noise_dims))]
    return X, y


def _multimodal(rng, n=30):
    """Two classes, each made of two separated clusters (needs 2 prototypes per class)."""
    centres = np.array([[0, 0, 0], [6, 6, 0], [6, 0, 0], [0, 6, 0]], dtype=float)
    lab = np.array([0, 0, 1, 1])
    idx = np.repeat(np.arange(4), n)
    X = centres[idx] + 0.7 * rng.standard_normal((len(idx), 3)) * [1.0, 1.0, 0.5]
    return X, lab[idx]


# --------------------------------------------------------------------------- cost / gradient

@pytest.mark.parametrize("local", [False, True])
@pytest.mark.parametrize("beta", [None, 2.0, 7.5])
@pytest.mark.parametrize("r", [1, 4])
def test_analytic_gradient_matches_finite_differences(local, beta, r, rng):
    N, m, K = 30, 4, 6
    X = rng.standard_normal((N, m))
    y = rng.integers(0, 3, N)
    pl = np.repeat(np.arange(3), 2)
    same = pl[None, :] == y[:, None]
    n_om = K if local else 1
    theta = np.concatenate([rng.standard_normal(K * m), rng.standard_normal(n_om * r * m)])
    f = lambda t: lvq._cost_grad(t, X, same, r, local, beta)[0]  # noqa: E731
    g = lambda t: lvq._cost_grad(t, X, same, r, local, beta)[1]  # noqa: E731
    err = check_grad(f, g, theta, epsilon=1e-7)
    assert err < 1e-5 * np.linalg.norm(g(theta))
    # and the same with central differences, coordinate by coordinate
    h = 1e-6
    fd = np.array([(f(theta + h * e) - f(theta - h * e)) / (2 * h) for e in np.eye(theta.size)])
    np.testing.assert_allclose(g(theta), fd, rtol=1e-5, atol=1e-8)


def test_gradient_with_fixed_metric(rng):
    N, m, K = 25, 3, 4
    X = rng.standard_normal((N, m))
    y = rng.integers(0, 2, N)
    same = np.repeat(np.arange(2), 2)[None, :] == y[:, None]
    fixed = (rng.standard_normal((m, m)) / 3)[None]
    theta = rng.standard_normal(K * m)
    fg = lambda t: lvq._cost_grad(t, X, same, m, False, 2.0, False, fixed)  # noqa: E731
    np.testing.assert_allclose(fg(theta)[1], approx_fprime(theta, lambda t: fg(t)[0], 1e-7),
                               rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("local", [False, True])
@pytest.mark.parametrize("beta", [None, 2.0])
def test_cost_equals_plain_loop_twin(local, beta, rng):
    N, m, K, r = 20, 3, 4, 2
    X = rng.standard_normal((N, m))
    y = rng.integers(0, 2, N)
    pl = np.repeat(np.arange(2), 2)
    W = rng.standard_normal((K, m))
    raw = rng.standard_normal((K if local else 1, r, m))
    om = raw / np.linalg.norm(raw, axis=(1, 2), keepdims=True)  # trace normalisation
    same = pl[None, :] == y[:, None]
    cost, _ = lvq._cost_grad(np.r_[W.ravel(), raw.ravel()], X, same, r, local, beta)
    ref = glvq_cost(X, y, W, pl, om if local else om[0], beta)
    assert cost == pytest.approx(ref, rel=1e-12)


# --------------------------------------------------------------------------- prediction

@ignore_convergence
@pytest.mark.parametrize("model", MODELS)
def test_prediction_equals_nearest_prototype_twin(model, rng):
    X, y = _multimodal(rng)
    clf = model(2, max_iter=40, random_state=3).fit(X, y)
    Xt = rng.uniform(-2, 8, size=(200, 3))
    om = clf.omega_ if model is GMLVQ else clf.omegas_
    np.testing.assert_allclose(clf.decision_function(Xt), distances(Xt, clf.prototypes_, om),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(
        clf.predict(Xt),
        nearest_prototype_predict(Xt, clf.prototypes_, clf.prototype_labels_, clf.classes_, om))


@pytest.mark.parametrize("model", MODELS)
def test_fitted_attributes(model, rng):
    X, y = _multimodal(rng)
    clf = model(2, random_state=0).fit(X, np.array(["a", "b"])[y])
    assert list(clf.classes_) == ["a", "b"]
    np.testing.assert_array_equal(clf.prototype_labels_, [0, 0, 1, 1])
    assert clf.prototypes_.shape == (4, 3)
    if model is GMLVQ:
        assert clf.omega_.shape == (3, 3)
        assert np.trace(clf.relevances_) == pytest.approx(1.0)
    else:
        assert clf.omegas_.shape == (4, 3, 3)
        np.testing.assert_allclose(np.trace(clf.relevances_, axis1=1, axis2=2), 1.0)
    assert clf.converged_ and clf.n_iter_ > 0
    assert clf.score(X, np.array(["a", "b"])[y]) > 0.95
    # the cost reported is the cost of the returned parameters (plain-loop twin)
    om = clf.omega_ if model is GMLVQ else clf.omegas_
    assert clf.cost_ == pytest.approx(
        glvq_cost(X, y, clf.prototypes_, clf.prototype_labels_, om, clf.beta), rel=1e-9)


def test_fixed_identity_metric_matches_nearest_class_mean(rng):
    X, y = _blobs(rng, centres=((0, 0, 0), (5, 0, 1), (0, 5, -1), (5, 5, 0)))
    clf = GMLVQ(1, learn_metric=False).fit(X, y)
    m = X.shape[1]
    np.testing.assert_allclose(clf.omega_, np.eye(m) / np.sqrt(m))
    means = np.array([X[y == c].mean(axis=0) for c in range(4)])
    # each prototype stays on its own class's side: nearest class mean is its own
    own = np.argmin(((clf.prototypes_[:, None] - means[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(own, clf.prototype_labels_)
    Xt = rng.uniform(-2, 7, size=(400, m))
    Xt = Xt[np.sort(((Xt[:, None] - means[None]) ** 2).sum(-1), axis=1)[:, 1]
            - ((Xt[:, None] - means[None]) ** 2).sum(-1).min(axis=1) > 2.0]  # away from ties
    ncm = np.argmin(((Xt[:, None] - means[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(clf.predict(Xt), ncm)
    np.testing.assert_array_equal(clf.predict(X), y)


def test_gmlvq_learns_relevant_subspace(rng):
    # Two informative dims with a small class gap, six loud noise dims: a Euclidean
    # nearest-class-mean classifier drowns in the noise, GMLVQ learns to ignore it.
    centres = ((0, 0), (1.6, 0), (0, 1.6))
    X, y = _blobs(rng, 60, centres, spread=0.3, noise_dims=6, noise_scale=3.0)
    Xt, yt = _blobs(rng, 100, centres, spread=0.3, noise_dims=6, noise_scale=3.0)
    means = np.array([X[y == c].mean(axis=0) for c in range(3)])
    euclid = np.mean(np.argmin(((Xt[:, None] - means[None]) ** 2).sum(-1), axis=1) == yt)
    clf = GMLVQ(1, random_state=0).fit(X, y)
    acc = clf.score(Xt, yt)
    assert euclid < 0.8 and acc > 0.9, (euclid, acc)
    lam = clf.relevances_
    assert np.trace(lam[2:, 2:]) < 0.05, np.diag(lam)


def test_lgmlvq_separates_classes_with_different_local_shapes(rng):
    # class 0 elongated along x, class 1 along y, centres close: local metrics help
    n = 80
    X0 = np.c_[3.0 * rng.standard_normal(n), 0.2 * rng.standard_normal(n)]
    X1 = np.c_[0.2 * rng.standard_normal(n), 3.0 * rng.standard_normal(n)] + [0.0, 0.0]
    X1 = X1[np.abs(X1[:, 1]) > 0.8]  # remove the overlap at the centre
    X0 = X0[np.abs(X0[:, 0]) > 0.8]
    X, y = np.r_[X0, X1], np.r_[np.zeros(len(X0), int), np.ones(len(X1), int)]
    clf = LGMLVQ(1, random_state=0).fit(X, y)
    assert clf.score(X, y) > 0.9
    g = GMLVQ(1, random_state=0).fit(X, y)
    assert clf.score(X, y) > g.score(X, y)


@pytest.mark.filterwarnings("error::emtl_stream.errors.FitConvergenceWarning")
def test_convergence_warning_names_max_iter(rng):
    X, y = _blobs(rng, noise_dims=3)
    with pytest.raises(FitConvergenceWarning, match="increase max_iter"):
        GMLVQ(max_iter=2).fit(X, y)


# --------------------------------------------------------------------------- conversion

@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("ppc", [1, 2])
def test_conversion_small_sigma_reproduces_lvq_prediction(model, ppc, rng):
    X, y = _multimodal(rng) if ppc == 2 else _blobs(rng, centres=((0, 0, 0), (3, 0, 1), (0, 3, 2)))
    clf = model(ppc, random_state=1).fit(X, y)
    Xt = np.r_[X, rng.uniform(X.min(0), X.max(0), size=(300, X.shape[1]))]
    scale = np.sqrt(np.median(clf.decision_function(X).min(axis=1)))
    comp = clf.to_components(sigma=1e-4 * scale)
    assert isinstance(comp, SourceComponents)
    assert comp.shared_precision is (model is GMLVQ)
    log_post, _ = components_log_posterior(comp, Xt)
    np.testing.assert_array_equal(comp.classes[np.argmax(log_post, axis=1)], clf.predict(Xt))
    # structure of the components: means, crisp labels, uniform weights, Λ = ΩᵀΩ/σ²
    np.testing.assert_allclose(comp.means, clf.prototypes_)
    np.testing.assert_allclose(np.exp(comp.log_weights), 1.0 / len(clf.prototype_labels_))
    np.testing.assert_array_equal(np.isfinite(comp.log_label_given_comp),
                                  clf.prototype_labels_[None, :] == np.arange(2 if ppc == 2 else 3)[:, None])
    lam = clf.relevances_ if model is LGMLVQ else np.broadcast_to(clf.relevances_, comp.precisions.shape)
    np.testing.assert_allclose(comp.precisions, lam / (1e-4 * scale) ** 2, rtol=1e-10)


@pytest.mark.parametrize("model", MODELS)
def test_responsibilities_become_one_hot_as_sigma_shrinks(model, rng):
    X, y = _multimodal(rng)
    clf = model(2, random_state=2).fit(X, y)
    om = clf.omega_ if model is GMLVQ else clf.omegas_
    d = distances(X, clf.prototypes_, om)
    # nearest prototype of the point's own class, from plain distances
    own = np.where(clf.prototype_labels_[None, :] == y[:, None], d, np.inf)
    winner = np.argmin(own, axis=1)
    base = np.sqrt(np.median(d.min(axis=1)))
    spread = []
    for s in (30.0, 1.0, 0.1, 0.01):
        _, log_resp = components_log_posterior(clf.to_components(sigma=s * base), X)
        resp = np.exp(log_resp[np.arange(len(X)), winner])
        spread.append(np.mean(1.0 - resp))
    assert spread[0] > 0.2  # wide Gaussians: far from one-hot
    assert all(a >= b for a, b in zip(spread, spread[1:]))
    assert spread[-1] < 1e-8


@pytest.mark.parametrize("model", MODELS)
def test_default_sigma_is_near_the_lvq_limit(model, rng):
    X, y = _multimodal(rng)
    clf = model(2, random_state=2).fit(X, y)
    om = clf.omega_ if model is GMLVQ else clf.omegas_
    d = distances(X, clf.prototypes_, om)
    assert clf.default_sigma_ == pytest.approx(np.sqrt(0.01 * np.median(d.min(axis=1))))
    comp = clf.to_components()
    log_post, log_resp = components_log_posterior(comp, X)
    assert np.mean(comp.classes[np.argmax(log_post, axis=1)] == clf.predict(X)) > 0.98
    own = np.where(clf.prototype_labels_[None, :] == y[:, None], d, np.inf)
    hard = np.exp(log_resp[np.arange(len(X)), np.argmin(own, axis=1)])
    assert np.median(hard) > 0.999
    # and the default follows the data units: features in other units, same limit
    clf2 = model(2, random_state=2).fit(X / 100.0, y)
    assert clf2.default_sigma_ == pytest.approx(clf.default_sigma_ / 100.0, rel=1e-3)


@pytest.mark.parametrize("model", MODELS)
def test_rank_deficient_metric_gives_finite_clipped_log_det(model, rng):
    X, y = _blobs(rng, centres=((0, 0, 0, 0), (3, 1, 0, 0), (1, 3, 0, 0)))
    clf = model(1, omega_rank=1, random_state=0).fit(X, y)
    sigma, min_rel = 0.5, 1e-3
    comp = clf.to_components(sigma=sigma, min_rel=min_rel)
    assert np.all(np.isfinite(comp.log_det_prec))
    oms = clf.omegas_ if model is LGMLVQ else clf.omega_[None].repeat(3, axis=0)
    for k, om in enumerate(oms):
        # rank 1: one eigenvalue ‖ω‖²/σ² = 1/σ² (trace 1), three clipped to min_rel times it
        top = np.linalg.norm(om) ** 2 / sigma**2
        assert comp.log_det_prec[k] == pytest.approx(np.log(top) + 3 * np.log(min_rel * top))
    # the log-densities are then finite too
    assert np.all(np.isfinite(comp.log_gauss(X)))


# --------------------------------------------------------------------------- persistence

@pytest.mark.parametrize("model", MODELS)
def test_save_load_round_trip(model, rng, tmp_path):
    X, y = _multimodal(rng)
    labels = np.array(["open", "close"])[y]
    clf = model(2, omega_rank=2, random_state=5, sigma=0.3).fit(X, labels)
    path = clf.save(tmp_path / "sub" / "m.npz")
    assert sorted(os.listdir(path.parent)) == ["m.npz"]  # no temp file left
    back = model.load(path)
    assert back.get_params() == clf.get_params()
    for attr in ("classes_", "prototypes_", "prototype_labels_", "n_iter_", "cost_",
                 "converged_", "default_sigma_"):
        np.testing.assert_array_equal(getattr(back, attr), getattr(clf, attr))
    np.testing.assert_array_equal(back.relevances_, clf.relevances_)
    Xt = rng.uniform(-2, 8, size=(50, 3))
    np.testing.assert_array_equal(back.predict(Xt), clf.predict(Xt))
    a, b = clf.to_components(), back.to_components()
    for k, v in a.to_arrays().items():
        np.testing.assert_array_equal(b.to_arrays()[k], v)
    with np.load(path, allow_pickle=False) as z:  # readable without pickle
        assert "header_json" in z.files
    other = LGMLVQ if model is GMLVQ else GMLVQ
    with pytest.raises(ModelError, match=f"{model.__name__}.load"):
        other.load(path)


def test_load_rejects_foreign_file(tmp_path):
    p = tmp_path / "x.npz"
    np.savez(p, a=np.zeros(3))
    with pytest.raises(ModelError, match="cannot load a GMLVQ model from .*x.npz"):
        GMLVQ.load(p)


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("model", MODELS)
def test_bad_input_messages(model, rng):
    X, y = _blobs(rng, n_per_class=5)
    Xn = X.copy()
    Xn[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf .*row 3"):
        model().fit(Xn, y)
    with pytest.raises(ValueError, match="at least two classes"):
        model().fit(X, np.zeros(len(X), int))
    with pytest.raises(ValueError, match="fewer than prototypes_per_class=6"):
        model(6).fit(X, y)
    with pytest.raises(ValueError, match="y must have shape"):
        model().fit(X, y[:-1])
    with pytest.raises(ValueError, match="omega_rank must be <= the number of features"):
        model(omega_rank=5).fit(X, y)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        model(sigma=0.0).fit(X, y)
    with pytest.raises(ModelError, match="not fitted"):
        model().predict(X)
    clf = model().fit(X, y)
    with pytest.raises(ValueError, match="must have 2 columns"):
        clf.predict(np.c_[X, X])
    with pytest.raises(ValueError, match="sigma must be > 0"):
        clf.to_components(sigma=-1.0)


# --------------------------------------------------------------------------- real EMG

def _mav_wl(z, win=40, step=10):
    emg = z["emg"].astype(np.float64)
    X, y, rep = [], [], []
    for s, n, c, r in zip(z["seg_start"], z["seg_len"], z["seg_class"], z["seg_rep"]):
        seg = emg[s:s + n]
        for a in range(0, n - win + 1, step):
            w = seg[a:a + win]
            X.append(np.r_[np.abs(w).mean(0), np.abs(np.diff(w, axis=0)).sum(0)])
            y.append(c)
            rep.append(r)
    return np.array(X), np.array(y), np.array(rep)


@ignore_convergence
def test_real_emg_within_session_accuracy(emg_dir):
    with np.load(emg_dir / "ciil_es_s00_baseline.npz", allow_pickle=False) as z:
        X, y, rep = _mav_wl(z)
    tr, te = rep <= 2, rep >= 3
    clf = GMLVQ(1, max_iter=60, random_state=0).fit(X[tr], y[tr])
    acc = clf.score(X[te], y[te])
    assert acc >= 0.8, acc
    # converted source agrees with the classifier on the held-out windows
    comp = clf.to_components()
    log_post, _ = components_log_posterior(comp, X[te])
    assert np.mean(comp.classes[np.argmax(log_post, axis=1)] == clf.predict(X[te])) > 0.99
