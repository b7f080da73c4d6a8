import numpy as np
import pytest
from sklearn.covariance import ledoit_wolf_shrinkage as sk_lw
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from emtl_stream.model.baselines import ShrinkageLDA, ledoit_wolf_shrinkage


@pytest.mark.parametrize("n,p", [(10, 8), (40, 32), (500, 5)])
def test_ledoit_wolf_shrinkage_matches_sklearn(n, p, rng):
    X = rng.normal(size=(n, p)) @ rng.normal(size=(p, p))
    X -= X.mean(axis=0)
    assert ledoit_wolf_shrinkage(X) == pytest.approx(sk_lw(X, assume_centered=True), rel=1e-10)


@pytest.mark.parametrize("n_per_class", [2, 5, 50])
def test_shrinkage_lda_predicts_like_sklearn(n_per_class, rng):
    means = rng.normal(scale=2.0, size=(4, 16))
    y = np.repeat(np.arange(4), n_per_class)
    X = means[y] + rng.normal(size=(len(y), 16)) * rng.uniform(0.5, 3, size=16)
    Xt = means[np.repeat(np.arange(4), 30)] + rng.normal(size=(120, 16))
    ours = ShrinkageLDA().fit(X, y)
    ref = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(X, y)
    np.testing.assert_allclose(ours.decision_function(Xt), ref.decision_function(Xt),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ours.predict(Xt), ref.predict(Xt))


def test_shrinkage_lda_rejects_single_class():
    with pytest.raises(ValueError, match="two classes"):
        ShrinkageLDA().fit(np.ones((4, 2)), [1, 1, 1, 1])
