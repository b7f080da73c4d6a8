"""MappedClassifier against SourceComponents.log_gauss (plain numpy) and row independence."""

import numpy as np
import pytest

from emtl_stream.model.classify import MappedClassifier
from emtl_stream.model.source import SourceComponents
from naive import transfer as nv


def _source(rng, m, L, per_class, shared, string_classes=False):
    K = L * per_class
    means = rng.normal(size=(K, m)) * 2
    if shared:
        A = rng.normal(size=(m, m))
        Ps = np.repeat(np.linalg.cholesky(A @ A.T / m + np.eye(m))[None], K, 0)
    else:
        Ps = []
        for _ in range(K):
            A = rng.normal(size=(m, m))
            Ps.append(np.linalg.cholesky(A @ A.T / m + 0.5 * np.eye(m)))
        Ps = np.array(Ps)
    logdet = np.array([2 * np.log(np.diag(p)).sum() for p in Ps])
    log_rho = np.full((L, K), -np.inf)
    for k in range(K):
        log_rho[k // per_class, k] = 0.0
    classes = np.array([f"c{i}" for i in range(L)]) if string_classes else np.arange(L)
    return SourceComponents(means, Ps, logdet, np.log(rng.dirichlet(np.ones(K))), log_rho,
                            classes, shared)


@pytest.mark.parametrize("shared", [True, False])
def test_batch_matches_numpy_and_one_at_a_time(rng, shared):
    m, n = 5, 7
    src = _source(rng, m, 4, 2, shared)
    H = rng.normal(size=(m, n))
    b = rng.normal(size=m)
    clf = MappedClassifier(src, H, b)
    X = rng.normal(size=(50, n)) * 3
    X[17, 2] = np.nan
    lp = clf.log_posteriors(X)
    with np.errstate(invalid="ignore"):
        want, wmarg = nv.class_log_posteriors(X @ H.T + b, src)
    ok = np.arange(50) != 17
    np.testing.assert_allclose(lp[ok], want[ok], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(clf.log_marginal(X)[ok], wmarg[ok], rtol=1e-10)
    assert np.isnan(lp[17]).all()
    idx = clf.predict_index(X)
    assert idx[17] == -1
    np.testing.assert_array_equal(idx[ok], np.argmax(want[ok], axis=1))
    np.testing.assert_allclose(clf.predict_proba(X)[ok].sum(1), 1.0, rtol=1e-12)
    for j in range(50):
        i1, p1 = clf.classify_one(X[j])
        assert i1 == idx[j]
        if ok[j]:
            np.testing.assert_allclose(p1, np.exp(lp[j]), rtol=1e-12, atol=1e-15)
        # a row alone gives exactly what it gets inside the batch (no batch shift, W2)
        np.testing.assert_array_equal(clf.log_posteriors(X[j:j + 1])[0], lp[j])


def test_extreme_distances_stay_finite(rng):
    src = _source(rng, 3, 2, 1, True)
    clf = MappedClassifier(src, np.eye(3))
    X = np.array([[1e4, -1e4, 1e4], [0.0, 0.0, 0.0]])
    p = clf.predict_proba(X)
    assert np.all(np.isfinite(p)) and np.allclose(p.sum(1), 1.0)


def test_validation(rng):
    src = _source(rng, 3, 2, 1, True, string_classes=True)
    with pytest.raises(ValueError, match="H must have shape"):
        MappedClassifier(src, np.eye(4))
    with pytest.raises(ValueError, match="NaN or inf"):
        MappedClassifier(src, np.full((3, 3), np.nan))
    clf = MappedClassifier(src, np.eye(3))
    with pytest.raises(ValueError, match="3 features"):
        clf.classify_one(np.zeros(4))
    assert list(clf.classes) == ["c0", "c1"]
    with pytest.raises(TypeError, match="to_components"):
        MappedClassifier(object(), np.eye(3))


def test_accepts_objects_with_to_components(rng):
    src = _source(rng, 3, 2, 1, False)

    class Wrapper:
        def to_components(self):
            return src

    X = rng.normal(size=(4, 3))
    np.testing.assert_array_equal(MappedClassifier(Wrapper(), np.eye(3)).log_posteriors(X),
                                  MappedClassifier(src, np.eye(3)).log_posteriors(X))


# ------------------------------------------------------------------ hostile inputs
def _scipy_posteriors(Z, src):
    """Independent twin: scipy.special.logsumexp over the per-component log joints,
    normalised as (a - max) - log Σ exp(a - max) so that log L is never absorbed."""
    from scipy.special import logsumexp

    d = np.einsum("jki,kia->jka", Z[:, None, :] - src.means[None], src.prec_factor)
    lj = (src.log_weights + 0.5 * src.log_det_prec - 0.5 * Z.shape[1] * np.log(2 * np.pi)
          - 0.5 * (d ** 2).sum(-1))
    joint = logsumexp(lj[:, None, :] + src.log_label_given_comp[None], axis=2)
    mx = joint.max(1, keepdims=True)
    return (joint - mx) - np.log(np.exp(joint - mx).sum(1, keepdims=True)), logsumexp(lj, axis=1)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("value", [1e30, -1e30, 1e200, 1e300])
def test_absurd_inputs_are_flagged_not_certain(rng, shared, value):
    """x = ±1e30 used to give proba [1, 1, 1, 1, 1] (sum 5) with confidence 1.0."""
    src = _source(rng, 4, 5, 1, shared)
    clf = MappedClassifier(src, rng.normal(size=(4, 6)))
    X = np.vstack([np.full(6, value), rng.normal(size=6), np.full(6, -value)])
    X[2, ::2] = value
    idx, p = clf.classify_one(X[0])
    assert idx == -1 and np.isnan(p).all()
    proba = clf.predict_proba(X)
    assert np.isnan(proba[[0, 2]]).all() and list(clf.predict_index(X)[[0, 2]]) == [-1, -1]
    assert np.isnan(clf.log_marginal(X)[[0, 2]]).all()
    np.testing.assert_allclose(proba[1].sum(), 1.0, rtol=1e-12)
    idx1, p1 = clf.classify_one(X[1])
    assert idx1 == int(np.argmax(proba[1])) and np.isclose(p1.sum(), 1.0)


@pytest.mark.parametrize("shared", [True, False])
def test_classification_is_a_distribution_or_flagged_against_scipy(rng, shared):
    """Over 12 orders of magnitude: either a distribution that matches scipy, or index −1."""
    src = _source(rng, 3, 4, 2, shared)
    H, b = rng.normal(size=(3, 5)), rng.normal(size=3)
    clf = MappedClassifier(src, H, b)
    X = rng.normal(size=(60, 5)) * np.logspace(0, 12, 60)[:, None]
    lp = clf.log_posteriors(X)
    want, wmarg = _scipy_posteriors(X @ H.T + b, src)
    flagged = np.isnan(lp).all(1)
    assert not flagged[:20].any() and flagged[-10:].all()  # 1..~100 std fine, 1e10+ flagged
    assert (np.isnan(lp).any(1) == flagged).all()  # a row is all-NaN or all-finite
    np.testing.assert_allclose(lp[~flagged], want[~flagged], rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(clf.log_marginal(X)[~flagged], wmarg[~flagged], rtol=1e-10)
    assert (wmarg[flagged] < clf.min_log_marginal).all()
    assert (wmarg[~flagged] >= clf.min_log_marginal).all()
    np.testing.assert_allclose(np.exp(lp[~flagged]).sum(1), 1.0, rtol=1e-9)
    for j in range(60):
        i1, p1 = clf.classify_one(X[j])
        assert i1 == (-1 if flagged[j] else int(np.argmax(want[j])))
        assert np.isnan(p1).all() if flagged[j] else np.isclose(p1.sum(), 1.0, rtol=1e-9)
