"""ShiftWatch / ShiftReference / MixtureMMD: exactness against independent computations,
cold-start detection on a synthetic armband, no alarms on an unshifted stream."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import optimize
from selfheal_data import stream, trained

from emtl_stream.daemon import shift as sh
from emtl_stream.daemon.shift import MixtureMMD, ShiftReference, ShiftWatch
from emtl_stream.model.classify import MappedClassifier
from emtl_stream.model.source import SourceComponents


def _random_components(rng, K=3, m=4, shared=False):
    means = rng.normal(0.0, 2.0, (K, m))
    if shared:
        A = rng.normal(size=(m, m)) + 2 * np.eye(m)
        prec = np.broadcast_to(np.linalg.inv(A @ A.T / m + 0.5 * np.eye(m)), (K, m, m))
    else:
        prec = []
        for _ in range(K):
            A = rng.normal(size=(m, m))
            prec.append(np.linalg.inv(A @ A.T / m + 0.3 * np.eye(m)))
        prec = np.asarray(prec)
    P = np.linalg.cholesky(prec)  # Λ = P Pᵀ
    w = rng.dirichlet(np.ones(K) * 3)
    with np.errstate(divide="ignore"):
        log_rho = np.log(np.eye(K))
    return SourceComponents(
        means=means, prec_factor=P,
        log_det_prec=2 * np.log(np.diagonal(P, axis1=1, axis2=2)).sum(1),
        log_weights=np.log(w), log_label_given_comp=log_rho, classes=np.arange(K),
        shared_precision=shared)


def _sample_mixture(comp, w, n, rng):
    k = rng.choice(len(w), size=n, p=w)
    cov = np.linalg.inv(comp.precisions)
    return np.array([rng.multivariate_normal(comp.means[j], cov[j]) for j in k])


def _mk_mmd2_naive(Z, S, bandwidths, L, m):
    """Plain V-statistic MK-MMD² between two samples, whitened by L."""
    A, B = Z @ L, S @ L

    def kmean(P, Q, s2):
        d2 = ((P[:, None, :] - Q[None, :, :]) ** 2).sum(-1)
        return np.exp(-d2 / (2 * s2)).mean()

    out = 0.0
    for c in bandwidths:
        s2 = c * c * m
        out += kmean(A, A, s2) - 2 * kmean(A, B, s2) + kmean(B, B, s2)
    return out / len(bandwidths)


@pytest.mark.parametrize("shared", [False, True])
def test_closed_form_mmd_matches_monte_carlo(shared):
    rng = np.random.default_rng(1)
    comp = _random_components(rng, shared=shared)
    mm = MixtureMMD(comp)
    Z = rng.normal(0.5, 1.5, (30, comp.n_features))  # a sample that is not the mixture
    w = np.exp(comp.log_weights)
    S = _sample_mixture(comp, w, 3000, rng)
    naive = _mk_mmd2_naive(Z, S, sh.MMD_BANDWIDTHS, mm._L, comp.n_features)
    exact = mm.mmd2(Z)
    # Monte-Carlo error of kernel means in [0, 1] from 3000 draws is ~0.01.
    assert exact == pytest.approx(naive, abs=0.02)
    assert exact > 0.05  # the test sample really differs from the mixture
    # A sample drawn from the mixture itself has a small MMD.
    assert mm.mmd2(_sample_mixture(comp, w, 400, rng)) < 0.2 * exact


def test_best_mix_matches_scipy_simplex_optimum():
    rng = np.random.default_rng(2)
    comp = _random_components(rng, K=4)
    mm = MixtureMMD(comp)
    # Windows from component 0 only: the best mix must put (almost) all weight there.
    Z = _sample_mixture(comp, np.array([1.0, 0, 0, 0]), 40, rng)
    val, w = mm.mmd2_best_mix(Z)
    res = optimize.minimize(lambda v: mm.mmd2(Z, v), np.full(4, 0.25), method="SLSQP",
                            bounds=[(0, 1)] * 4,
                            constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1}])
    assert val == pytest.approx(res.fun, abs=1e-6)
    assert np.isclose(w.sum(), 1.0) and np.all(w >= 0)
    assert val < mm.mmd2(Z)  # re-weighting helps a one-class stretch


def test_reference_roundtrip_and_validation():
    ref = ShiftReference(-10.5, 1.25, 0.03, 0.004, 300, "heldout")
    back = ShiftReference.from_dict(json.loads(json.dumps(ref.to_dict())))
    assert back == ref
    no_mmd = ShiftReference.from_dict({"ll_median": -1.0, "ll_spread": 0.5})
    assert no_mmd.mmd_threshold() is None
    for bad in ({"ll_median": "x", "ll_spread": 1.0}, {"ll_median": 1.0},
                {"ll_median": 1.0, "ll_spread": -1.0}, {"ll_median": float("nan"), "ll_spread": 1},
                {"ll_median": 1.0, "ll_spread": 1.0, "n_windows": -3}, [1, 2]):
        with pytest.raises(ValueError, match="shift reference"):
            ShiftReference.from_dict(bad)


def test_reference_from_windows_matches_running_median_twin():
    arm, model, X_ho = trained()
    comp = model.to_components()
    m = comp.n_features
    H, b = np.eye(m), np.zeros(m)
    ref = ShiftReference.from_windows(comp, H, b, X_ho)
    ll = MappedClassifier(comp, H, b).log_marginal(X_ho)
    w = sh.LL_WINDOWS
    meds = np.array([np.median(ll[i:i + w]) for i in range(len(ll) - w + 1)])
    assert ref.ll_median == pytest.approx(np.median(meds))
    assert ref.ll_spread == pytest.approx(1.4826 * np.median(np.abs(meds - np.median(meds))))
    assert ref.mmd_median is not None and ref.n_windows == len(X_ho)
    with pytest.raises(ValueError, match="at least"):
        ShiftReference.from_windows(comp, H, b, X_ho[:5])


def _run(watch, comp, H, X, t0=0.0):
    clf = MappedClassifier(comp, H, np.zeros(H.shape[0]))
    ll = clf.log_marginal(X)
    Z = X @ H.T
    return [(i, e) for i in range(len(X))
            if (e := watch.update(ll[i], Z[i], t0 + 0.05 * i)) is not None]


@pytest.fixture(scope="module")
def setup():
    arm, model, X_ho = trained()
    comp = model.to_components()
    m = comp.n_features
    ref = ShiftReference.from_windows(comp, np.eye(m), np.zeros(m), X_ho)
    return arm, comp, ref


def test_cold_start_on_shifted_arm_fires_with_persisted_reference(setup):
    arm, comp, ref = setup
    m = comp.n_features
    X = _shifted(arm, 2.0, 2.0, 2)
    events = _run(ShiftWatch(m, ref, components=comp), comp, np.eye(m), X)
    assert events, "a stream shifted from its first sample must be flagged"
    first, ev = events[0]
    assert first < 100  # the 5 s delay target at a 50 ms step
    assert ev["reference"] == "heldout" and ev["test"] == "likelihood+mmd"
    assert ev["mmd2"] > ev["mmd_threshold"] and ev["log_likelihood"] < ev["ll_threshold"]
    assert ev["statistic"] == ev["log_likelihood"] and ev["threshold"] == ev["ll_threshold"]
    # One event per test until it re-arms: never one per window.
    assert len(events) <= 4
    # Without a persisted reference the live one is learnt on the shifted windows: its
    # level is itself one the persisted reference flags, so nothing is compared with it.
    live = ShiftWatch(m, None, components=comp)
    _run(live, comp, np.eye(m), X[:sh.LIVE_REFERENCE_WINDOWS])
    assert live.reference.source == "live"
    assert live.reference.ll_median < ref.ll_threshold(m)


def test_mmd_test_alone_detects_the_shift(setup):
    arm, comp, ref = setup
    m = comp.n_features
    blind = ShiftReference(ref.ll_median, 1e6, ref.mmd_median, ref.mmd_spread)  # ll test off
    X = _shifted(arm, 3.0, 2.0, 2)
    events = _run(ShiftWatch(m, blind, components=comp, rule="or"), comp, np.eye(m), X)
    assert events and events[0][1]["test"] == "mmd"
    assert events[0][1]["statistic"] > events[0][1]["threshold"]


def test_no_alarm_on_unshifted_stream_and_nan_ignored(setup):
    arm, comp, ref = setup
    m = comp.n_features
    X, _ = stream(arm, 3.0, 6)  # 90 s, every class, transitions included
    X[10] = np.nan
    watch = ShiftWatch(m, ref, components=comp)
    assert _run(watch, comp, np.eye(m), X) == []
    assert watch.last_mmd2 is not None  # the MMD test did run
    assert watch.update(float("nan"), np.zeros(m), 0.0) is None
    assert watch.update(0.0, np.full(m, np.nan), 0.0) is None


def test_reset_rearms_and_live_reference_is_learnt(setup):
    arm, comp, ref = setup
    m = comp.n_features
    watch = ShiftWatch(m, None, components=comp)
    X, _ = stream(arm, 2.0, 1)
    _run(watch, comp, np.eye(m), X)
    assert watch.reference is not None and watch.reference.source == "live"
    arm.set_shift(2.0)
    try:
        Xs, _ = stream(arm, 2.0, 1)
    finally:
        arm.set_shift(0.0)
    assert _run(watch, comp, np.eye(m), Xs), "a shift after the live reference is flagged"
    watch.reset(ref)
    assert watch.reference is ref
    assert _run(watch, comp, np.eye(m), Xs), "after reset the detector fires again"


def test_trained_bundle_carries_a_heldout_reference_that_fires_on_the_shifted_file(
        tmp_path, emg_dir):
    import subprocess
    import sys

    from emtl_stream.daemon.bundle import SourceBundle
    from emtl_stream.evaluate import EvalSettings, _load

    out = tmp_path / "model.npz"
    proc = subprocess.run([sys.executable, "-m", "emtl_stream", "train",
                           str(emg_dir / "ciil_es_s01_baseline.npz"), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    bundle = SourceBundle.load(out)
    ref = ShiftReference.from_dict(bundle.meta["shift_reference"])
    assert ref.source == "heldout" and ref.mmd_median is not None
    comp = bundle.components
    m = comp.n_features
    # Independent check of the level: the bundle model on the baseline windows it was
    # trained on is more likely than the held-out reference (in-sample is optimistic).
    st = EvalSettings()
    base = _load(emg_dir / "ciil_es_s01_baseline.npz", st)
    ll_in = MappedClassifier(comp, np.eye(m), np.zeros(m)).log_marginal(base["X"])
    assert np.median(ll_in) >= ref.ll_median
    # A daemon started on the shifted recording with this bundle notices (subject 1 is
    # one of the slower ones for the default rule), and the likelihood test alone
    # within 5 s.
    shifted = _load(emg_dir / "ciil_es_s01_shifted.npz", st)
    events = _run(ShiftWatch(m, ref, components=comp), comp, np.eye(m), shifted["X"])
    assert events and events[0][0] < 1200  # within the 60 s the evaluation allows
    fast = _run(ShiftWatch(m, ref, rule="or", persist_windows=1), comp, np.eye(m),
                shifted["X"][:400])
    assert fast and fast[0][0] < 100


# ---------------------------------------------------------------- the ring test
def _run_ring(watch, comp, H, X):
    clf = MappedClassifier(comp, H, np.zeros(H.shape[0]))
    ll = clf.log_marginal(X)
    Z = X @ H.T
    out, stats = [], []
    for i in range(len(X)):
        e = watch.update(ll[i], Z[i], 0.05 * i, x=X[i], H=H, b=np.zeros(H.shape[0]))
        stats.append(watch.last_ring)
        if e is not None:
            out.append((i, e))
    return out, stats


def _shifted(arm, k, seconds=2.0, reps=2):
    arm.set_shift(k)
    try:
        return stream(arm, seconds, reps)[0]
    finally:
        arm.set_shift(0.0)


def test_ring_cusum_matches_a_plain_numpy_twin(setup):
    arm, comp, _ = setup
    m, C = comp.n_features, 8
    X = np.vstack([stream(arm, 1.0, 1)[0], _shifted(arm, 1.0, 1.0, 2)])
    off = 1e12  # the likelihood and MMD tests off: the first event is the ring test's
    watch = ShiftWatch(m, None, components=comp, ring_channels=C, ll_spreads=off,
                       mmd_spreads=off)
    events, stats = _run_ring(watch, comp, np.eye(m), X)
    # twin: roll each window's channel-major features with np.roll, score under the source
    ident = MappedClassifier(comp, np.eye(m), np.zeros(m))
    rolled = [np.roll(X.reshape(len(X), C, -1), r, axis=1).reshape(len(X), -1)
              for r in range(C)]
    L = np.stack([ident.log_marginal(Xr) for Xr in rolled])
    decision = np.stack([ident.predict_index(Xr) for Xr in rolled])
    S, twin, first = np.zeros(C - 1), [], None
    for t in range(len(X)):
        d = np.clip(L[1:, t] - L[0, t], -sh.RING_CLIP, sh.RING_CLIP) - sh.RING_DRIFT
        # a roll that leaves the decision as it is counts at a share of its evidence
        same = (decision[1:, t] == decision[0, t]) & (d > 0)
        d = np.where(same, sh.RING_SAME_DECISION_WEIGHT * d, d)
        S = np.maximum(0.0, S + d)
        twin.append(S.max())
        if S.max() > sh.RING_THRESHOLD:
            first = t
            break
    assert first is not None, "a one-electrode shift must cross the ring threshold"
    np.testing.assert_allclose(stats[:first + 1], twin, rtol=1e-9, atol=1e-9)
    assert events[0][0] == first and events[0][1]["test"] == "ring"


def test_without_a_reference_the_ring_test_still_notices_a_cold_shifted_start(setup):
    arm, comp, _ = setup
    m = comp.n_features
    X = _shifted(arm, 1.0)
    # The live reference alone is learnt on the shifted windows and cannot fire ...
    lax = ShiftWatch(m, None, components=comp)
    assert _run(lax, comp, np.eye(m), X) == []
    # ... the ring test needs no reference and fires within the 5 s target.
    events, _ = _run_ring(ShiftWatch(m, None, components=comp, ring_channels=8), comp,
                          np.eye(m), X)
    assert events and events[0][0] < 100 and events[0][1]["test"] == "ring"
    assert events[0][1]["reference"] == "none"


def test_ring_test_silent_on_unshifted_arm_and_relative_to_the_live_map(setup):
    arm, comp, ref = setup
    m = comp.n_features
    X, _ = stream(arm, 3.0, 6)  # 90 s, every class, transitions included
    events, stats = _run_ring(ShiftWatch(m, ref, components=comp, ring_channels=8), comp,
                              np.eye(m), X)
    assert events == [] and max(stats) < sh.RING_THRESHOLD
    # After a heal the live map is the inverse roll: the shifted arm is then "unshifted".
    from emtl_stream.model.transfer import ring_roll_matrix

    Xs = _shifted(arm, 1.0, 3.0, 2)
    healed = ring_roll_matrix(m, 8, -1)
    events, _ = _run_ring(ShiftWatch(m, None, components=comp, ring_channels=8), comp,
                          healed, Xs)
    assert events == []
    with pytest.raises(ValueError, match="components"):
        ShiftWatch(m, ref, ring_channels=8)


def test_false_alarm_bound_is_the_exact_poisson_upper_limit():
    from scipy.optimize import brentq
    from scipy.stats import poisson

    from emtl_stream.eval_unlabelled import poisson_upper

    assert poisson_upper(0, 3.0) == pytest.approx(-np.log(0.05) / 3.0, rel=1e-9)
    for k, h in ((1, 0.8), (4, 2.5)):
        lam = brentq(lambda x: poisson.cdf(k, x) - 0.05, 1e-9, 100.0)
        assert poisson_upper(k, h) == pytest.approx(lam / h, rel=1e-7)


def test_ring_evidence_under_a_general_map_matches_rolled_matrices(setup):
    """The ring test scores H R_r x + b for a live map that is not the identity."""
    from emtl_stream.model.transfer import ring_roll_matrix

    arm, comp, _ = setup
    m, C = comp.n_features, 8
    rng = np.random.default_rng(5)
    H = np.eye(m) + 0.05 * rng.standard_normal((m, m))
    b = 0.1 * rng.standard_normal(m)
    X = stream(arm, 1.0, 1)[0][:10]
    watch = ShiftWatch(m, None, components=comp, ring_channels=C)
    for x in X:
        got, got_index = watch._ring_evidence(x, H, b)
        rolled = [MappedClassifier(comp, H @ ring_roll_matrix(m, C, r), b) for r in range(C)]
        twin = np.array([clf.log_marginal(x[None])[0] for clf in rolled])
        np.testing.assert_allclose(got, twin, rtol=1e-10, atol=1e-9)
        np.testing.assert_array_equal(got_index, [clf.predict_index(x[None])[0]
                                                  for clf in rolled])


def test_ring_evidence_scored_with_the_class_decision_matches_rolled_matrices(setup):
    """The daemon scores the rolled windows in its classification call; same evidence,
    same CUSUM and the same events as the watch computing them itself."""
    from emtl_stream.model.transfer import ring_roll_matrix

    arm, comp, ref = setup
    m, C = comp.n_features, 8
    rng = np.random.default_rng(6)
    H = np.eye(m) + 0.05 * rng.standard_normal((m, m))
    b = 0.1 * rng.standard_normal(m)
    clf = MappedClassifier(comp, H, b)
    arm.set_shift(3.0)
    try:
        X = np.vstack([stream(arm, 2.0, 1)[0]])
    finally:
        arm.set_shift(0.0)
    X = np.vstack([stream(arm, 2.0, 1)[0], X])
    inside = ShiftWatch(m, ref, components=comp, ring_channels=C)
    outside = ShiftWatch(m, ref, components=comp, ring_channels=C)
    rows = outside.ring_rows(m)
    assert rows.shape == (C, m) and (rows[0] == np.arange(m)).all()
    assert ShiftWatch(m, None, components=comp, ring_channels=C).ring_rows(m + 1) is None
    events = [[], []]
    for i, x in enumerate(X):
        index, proba, ll, z, ring_ll, ring_index = clf.classify_window(x, rows)
        twin = np.array([MappedClassifier(comp, H @ ring_roll_matrix(m, C, r), b)
                         .log_marginal(x[None])[0] for r in range(C)])
        np.testing.assert_allclose(ring_ll, twin, rtol=1e-10, atol=1e-9)
        events[0].append(inside.update(ll, z, 0.05 * i, x=x, H=H, b=b))
        events[1].append(outside.update(ll, z, 0.05 * i, ring_ll=ring_ll,
                                        ring_index=ring_index))
        assert inside.last_ring == pytest.approx(outside.last_ring, rel=1e-9, abs=1e-9)
    assert [e is None for e in events[0]] == [e is None for e in events[1]]
    assert any(e is not None for e in events[1])  # the shifted stretch fired the ring test


@pytest.mark.parametrize("n", [1, 2, 7, 20])
def test_running_level_is_numpy_median(n):
    vals = list(np.random.default_rng(n).normal(size=n))
    assert sh._median_of_floats(vals) == np.median(vals)


@pytest.mark.parametrize("seed", range(4))
def test_simplex_projection_is_the_closest_point(seed):
    rng = np.random.default_rng(seed)
    v = rng.normal(0.0, 2.0, 6)
    got = sh._project_simplex(v)
    res = optimize.minimize(lambda w: ((w - v) ** 2).sum(), np.full(6, 1 / 6), method="SLSQP",
                            bounds=[(0, 1)] * 6,
                            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
                            options={"ftol": 1e-14})
    np.testing.assert_allclose(got, res.x, atol=1e-6)
    assert got.sum() == pytest.approx(1.0) and np.all(got >= 0)


def _pg_descent(B, a, iters=200_000):
    """Plain projected-gradient twin of the mixture-weight problem, run to a fixed point."""
    w = np.full(a.size, 1.0 / a.size)
    step = 1.0 / max(np.linalg.eigvalsh(B)[-1], 1e-12)
    for _ in range(iters):
        w_new = sh._project_simplex(w - 2.0 * step * (B @ w - a))
        if np.abs(w_new - w).max() < 1e-15:
            break
        w = w_new
    return w


@pytest.mark.parametrize("seed", range(12))
def test_exact_simplex_qp_reaches_the_optimum(seed):
    """Against a projected-gradient twin and the KKT conditions, on random problems
    with every support size and singular B (repeated components) included."""
    rng = np.random.default_rng(seed)
    K = int(rng.integers(2, 11))
    F = rng.normal(size=(K, max(1, K - seed % 3)))  # rank K, K-1 or K-2
    if seed % 4 == 0:
        F[1] = F[0]  # two equal components
    B = F @ F.T / F.shape[1]
    a = rng.normal(0.0, 1.0, K) * rng.uniform(0.1, 2.0)
    start = rng.dirichlet(np.ones(K))
    w, solved = sh._simplex_qp(B, a, start.copy())
    full_rank = np.linalg.matrix_rank(B) == K
    assert solved or not full_rank  # a strictly convex problem is always solved exactly
    w = sh._best_weights(B, a, start.copy(), 1.0 / np.linalg.eigvalsh(B)[-1])
    assert w.min() >= 0.0 and w.sum() == pytest.approx(1.0, abs=1e-12)

    def f(v):
        return v @ B @ v - 2.0 * a @ v

    assert f(w) <= f(_pg_descent(B, a)) + 1e-10
    g = B @ w - a  # KKT: the gradient is equal on the support and not lower off it
    on = w > 1e-9
    assert np.ptp(g[on]) < 1e-8 and g[~on].min(initial=np.inf) >= g[on].max() - 1e-8


def test_best_mix_falls_back_to_the_descent_when_the_active_set_stalls(monkeypatch):
    rng = np.random.default_rng(4)
    comp = _random_components(rng, K=4)
    mm = MixtureMMD(comp)
    Z = _sample_mixture(comp, np.array([0.6, 0.4, 0, 0]), 40, rng)
    exact, w_exact = mm.mmd2_best_mix(Z)
    monkeypatch.setattr(sh, "_simplex_qp", lambda B, a, w: (w, False))  # always give up
    slow, w_slow = mm.mmd2_best_mix(Z)
    assert slow == pytest.approx(exact, abs=1e-9)
    np.testing.assert_allclose(w_slow, w_exact, atol=1e-5)


def test_best_mix_from_a_warm_start_reaches_the_same_optimum():
    rng = np.random.default_rng(3)
    comp = _random_components(rng, K=4)
    mm = MixtureMMD(comp)
    Z = _sample_mixture(comp, np.array([0.7, 0.3, 0, 0]), 40, rng)
    cold, w_cold = mm.mmd2_best_mix(Z)
    warm, w_warm = mm.mmd2_best_mix(Z, start=np.array([0.0, 0.0, 0.2, 0.8]))
    assert warm == pytest.approx(cold, abs=1e-9)
    np.testing.assert_allclose(w_warm, w_cold, atol=1e-5)


def test_the_watch_mmd_of_a_sliding_batch_is_the_batch_recomputed(setup):
    """Each window's kernel rows are computed once; every MMD the watch reports must be
    the best-mix MMD² of its last MMD_WINDOWS windows computed from scratch, from the
    previous evaluation's weights (NaN windows skipped, a reset starting over)."""
    arm, comp, ref = setup
    m = comp.n_features
    X = _shifted(arm, 1.0, 1.0, 2)
    X[25] = np.nan
    clf = MappedClassifier(comp, np.eye(m), np.zeros(m))
    ll = clf.log_marginal(X)
    watch = ShiftWatch(m, ref, components=comp)
    mm = MixtureMMD(comp)
    kept, start, checked = [], None, 0
    for i in range(len(X)):
        if i == 120:  # a swap: the batch and the warm start start over
            watch.reset(ref)
            kept, start = [], None
        before = watch.last_mmd2
        watch.update(ll[i], X[i], 0.05 * i)
        if np.all(np.isfinite(X[i])):
            kept.append(X[i])
        if watch.last_mmd2 is not None and watch.last_mmd2 is not before:
            want, start = mm.mmd2_best_mix(np.asarray(kept[-sh.MMD_WINDOWS:]), start=start)
            assert watch.last_mmd2 == pytest.approx(want, rel=1e-9, abs=1e-12), i
            checked += 1
    assert checked >= (len(X) - 120 - sh.MMD_WINDOWS) // sh.MMD_EVERY + 5


def test_sliding_reference_batches_match_one_batch_at_a_time(setup):
    _, comp, _ = setup
    rng = np.random.default_rng(5)
    Z = _sample_mixture(comp, np.exp(comp.log_weights), 97, rng)
    mm = MixtureMMD(comp)
    want = [mm.mmd2_best_mix(Z[i:i + 40])[0] for i in range(0, 97 - 40 + 1, 10)]
    np.testing.assert_allclose(mm.sliding_best_mix(Z, 40, 10), want, rtol=1e-10, atol=1e-13)


def test_ring_evidence_that_changes_no_decision_counts_at_its_share(setup):
    """Closed form: steady evidence e per window adds (e - drift) to the sum when the
    roll changes the class decision, and a share of it when it does not."""
    _, comp, _ = setup
    m, C = comp.n_features, 8
    e = 9.0
    ll = np.zeros(C)
    ll[3] = e  # roll 3 explains every window by e nats better
    changed = np.zeros(C, dtype=np.int64)
    changed[3] = 2
    same = np.zeros(C, dtype=np.int64)
    for decisions, per_window in ((changed, e - sh.RING_DRIFT),
                                  (same, sh.RING_SAME_DECISION_WEIGHT * (e - sh.RING_DRIFT))):
        for weight_given in (None, 0.25):
            kw = {} if weight_given is None else {"ring_same_weight": weight_given}
            watch = ShiftWatch(m, None, components=comp, ring_channels=C, **kw)
            want = per_window
            if weight_given is not None and decisions is same:
                want = weight_given * (e - sh.RING_DRIFT)
            for n in range(1, 6):
                watch.update(0.0, np.zeros(m), 0.05 * n, ring_ll=ll, ring_index=decisions)
                assert watch.last_ring == pytest.approx(n * want, rel=1e-12)
    # evidence against a roll is never discounted: the sum stays at zero
    watch = ShiftWatch(m, None, components=comp, ring_channels=C)
    watch.update(0.0, np.zeros(m), 0.0, ring_ll=-ll, ring_index=same)
    assert watch.last_ring == 0.0
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="ring_same_weight"):
            ShiftWatch(m, None, components=comp, ring_channels=C, ring_same_weight=bad)


def test_an_overwhelming_ring_sum_fires_past_a_lax_reference(setup):
    """The likelihood confirmation holds the ring test back while the windows fit as
    well as the reference, but not once the sum passes RING_CONFIRM_BYPASS times the
    threshold (closed form: steady evidence e adds e - drift per window)."""
    _, comp, _ = setup
    m, C = comp.n_features, 8
    e = 9.0
    ll = np.zeros(C)
    ll[2] = e
    decisions = np.zeros(C, dtype=np.int64)
    decisions[2] = 1  # the roll changes the decision: full weight
    per_window = e - sh.RING_DRIFT

    def first_event(reference, level):
        watch = ShiftWatch(m, reference, components=comp, ring_channels=C)
        for n in range(1, 200):
            if watch.update(level, np.zeros(m), 0.05 * n, ring_ll=ll, ring_index=decisions):
                return n
        return None

    lax = ShiftReference(0.0, 1.0, None, None, 100, "heldout")
    strict_level = lax.ll_threshold(m, sh.RING_LL_SPREADS, 0.0) - 1.0
    crossing = int(np.floor(sh.RING_THRESHOLD / per_window)) + 1
    bypass = int(np.floor(sh.RING_CONFIRM_BYPASS * sh.RING_THRESHOLD / per_window)) + 1
    assert crossing < bypass
    # windows below the reference's level: confirmed as soon as the sum crosses
    assert first_event(lax, strict_level) == max(crossing, sh.LL_WINDOWS)
    # windows at the reference's level: held back until the sum is overwhelming
    assert first_event(lax, 0.0) == bypass
