"""LVQ source models through the scaling trick into TransferEM (the reference's own test idea).

The reference package converts with σ = 1 and never checks the conversion itself;
here the converted model must map a mirrored / rotated target back so that the
*LVQ classifier* (nearest prototype, not the Gaussian mixture) is right again.
"""

import numpy as np
import pytest

from emtl_stream.model.lvq import GMLVQ, LGMLVQ
from emtl_stream.model.transfer import TransferEM


def _three_classes_1d(rng, n_per_class):
    y = np.repeat([0, 1, 2], n_per_class)
    X = (np.array([-1.0, 0.0, 1.0])[y] + 0.2 * rng.standard_normal(len(y)))[:, None]
    return X, y


@pytest.mark.parametrize("model,ppc", [(GMLVQ, 1), (GMLVQ, 2), (LGMLVQ, 2)])
def test_mirrored_target_recovered_from_two_of_three_classes(model, ppc, rng):
    Xs, ys = _three_classes_1d(rng, 50)
    clf = model(ppc, random_state=0).fit(Xs, ys)
    assert clf.score(Xs, ys) > 0.9

    # target: the same classes mirrored (x → −x); calibration sees only the outer two
    Xt, yt = _three_classes_1d(rng, 50)
    Xt = -Xt
    assert clf.score(Xt, yt) < 0.5
    cal = np.flatnonzero(yt != 1)
    cal = np.r_[cal[yt[cal] == 0][:10], cal[yt[cal] == 2][:10]]
    tem = TransferEM(clf, reg=1e-5, reg_scale="absolute", shrink_to="zero", max_iter=50)
    tem.fit(Xt[cal], yt[cal])
    assert tem.kind_ == ("shared" if model is GMLVQ else "full")
    # oracle: hard-assignment EM in 1-D with plain numpy (the LVQ limit). The 1-D metric
    # is a scalar and cancels; each point is pulled to its nearest same-class prototype.
    x, yc = Xt[cal, 0], yt[cal]
    w, pl = clf.prototypes_[:, 0], clf.prototype_labels_
    h = 1.0
    for _ in range(100):
        cost = np.where(pl[None, :] == yc[:, None], (h * x[:, None] - w[None, :]) ** 2, np.inf)
        target = w[np.argmin(cost, axis=1)]
        h = np.sum(x * target) / (np.sum(x * x) + 1e-5)
    assert h < -0.5
    # near the LVQ limit (σ a tenth of the default) EM lands on the hard fixed point
    hard = TransferEM(clf.to_components(sigma=0.1 * clf.default_sigma_), reg=1e-5,
                      reg_scale="absolute", shrink_to="zero", max_iter=50).fit(Xt[cal], yt[cal])
    assert hard.H_[0, 0] == pytest.approx(h, abs=1e-9)
    if ppc == 1:  # σ plays no role with one prototype per class
        assert tem.H_[0, 0] == pytest.approx(h, abs=1e-9)
    # the LVQ classifier itself on the mapped target, all three classes
    assert clf.score(tem.transform(Xt), yt) > 0.9
    # and the converted mixture agrees
    assert np.mean(tem.predict(Xt) == yt) > 0.9


def test_rotated_anisotropic_target_with_local_metrics(rng):
    # two classes, (−1, 0) with std (0.5, 0.2) and (+1, 0) with std (0.2, 0.5);
    # the target is the source rotated by 180 degrees
    def sample(n):
        y = np.repeat([0, 1], n)
        centre = np.array([[-1.0, 0.0], [1.0, 0.0]])[y]
        std = np.array([[0.5, 0.2], [0.2, 0.5]])[y]
        return centre + std * rng.standard_normal((2 * n, 2)), y

    Xs, ys = sample(100)
    clf = LGMLVQ(1, random_state=0).fit(Xs, ys)
    assert clf.score(Xs, ys) > 0.9
    R = -np.eye(2)
    Xt, yt = sample(100)
    Xt = Xt @ R.T
    assert clf.score(Xt, yt) < 0.5
    cal = np.r_[np.flatnonzero(yt == 0)[:10], np.flatnonzero(yt == 1)[:10]]
    tem = TransferEM(clf, reg=1e-3, max_iter=50).fit(Xt[cal], yt[cal])
    assert tem.kind_ == "full"
    held = np.setdiff1d(np.arange(len(yt)), cal)
    assert clf.score(tem.transform(Xt[held]), yt[held]) > 0.9
    assert tem.H_[0, 0] < -0.5  # the class axis is flipped back


def test_unlabelled_adaptation_follows_gmlvq_metric(rng):
    # 3-class 2-D source whose second feature is pure noise: GMLVQ learns to ignore it.
    # Unlabelled target = x scaled by 2 on the informative axis; EM from the identity
    # must shrink it back (all rows unlabelled, so the label-marginal is used).
    def sample(n):
        y = np.repeat([0, 1, 2], n)
        X = np.c_[np.array([-2.0, 0.0, 2.0])[y] + 0.3 * rng.standard_normal(3 * n),
                  1.0 * rng.standard_normal(3 * n)]
        return X, y

    Xs, ys = sample(60)
    clf = GMLVQ(1, random_state=0).fit(Xs, ys)
    assert clf.relevances_[1, 1] < 0.05
    Xt, yt = sample(60)
    Xt[:, 0] *= 1.6
    tem = TransferEM(clf, reg=1e-2, max_iter=100).fit(Xt)
    assert tem.H_[0, 0] == pytest.approx(1 / 1.6, rel=0.1)
    assert clf.score(tem.transform(Xt), yt) > 0.9
