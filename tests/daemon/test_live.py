"""LiveModel and the one-call window classification."""

import numpy as np
import pytest

from emtl_stream.daemon.live import LiveModel, source_fingerprint


def test_fingerprint_changes_with_the_model(source):
    bundle, model, X, y = source
    fp = source_fingerprint(bundle.components)
    assert fp == source_fingerprint(bundle.components)
    comp = bundle.components
    import dataclasses
    other = dataclasses.replace(comp, means=comp.means + 1e-9)
    assert source_fingerprint(other) != fp


def test_classify_window_agrees_with_the_batch_methods(source):
    bundle, model, X, y = source
    m = bundle.components.n_features
    rng = np.random.default_rng(1)
    H = np.eye(m) + 0.01 * rng.normal(size=(m, m))
    b = 0.01 * rng.normal(size=m)
    live = LiveModel.build(bundle, H, b, 3)
    clf = live.classifier
    for x in X[:20]:
        index, proba, lm, z, extra, extra_index = clf.classify_window(x)
        assert extra is None and extra_index is None
        assert index == int(clf.predict_index(x[None])[0])
        np.testing.assert_allclose(proba, clf.predict_proba(x[None])[0], rtol=1e-12)
        assert lm == pytest.approx(float(clf.log_marginal(x[None])[0]), rel=1e-12)
        np.testing.assert_allclose(z, H @ x + b, rtol=1e-12)
    index, proba, lm, z, _, _ = clf.classify_window(np.full(X.shape[1], np.nan))
    assert index == -1 and not np.isfinite(lm)
    rows = np.stack([rng.permutation(X.shape[1]) for _ in range(5)])
    for x in X[20:30]:
        score = clf.classify_window(x, rows=rows)
        index, proba, lm, z, extra, extra_index = score
        np.testing.assert_allclose(extra, [clf.log_marginal(x[r][None])[0] for r in rows],
                                   rtol=1e-12)
        np.testing.assert_array_equal(extra_index, [clf.predict_index(x[r][None])[0]
                                                    for r in rows])
        assert score.row_index is extra_index and score.log_marginal == lm
        assert index == int(clf.predict_index(x[None])[0])
        assert lm == pytest.approx(float(clf.log_marginal(x[None])[0]), rel=1e-12)
    bad = np.full(X.shape[1], np.nan)
    flagged = clf.classify_window(bad, rows=rows)
    assert np.isnan(flagged.row_log_marginals).all() and (flagged.row_index == -1).all()
    assert not live.H.flags.writeable  # one immutable value
    with pytest.raises(Exception):
        live.version = 4
