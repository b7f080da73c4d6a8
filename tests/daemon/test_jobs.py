"""Fit jobs as pure functions: zero-label transfer on shifted synthetic windows, cancel."""

import threading

import numpy as np
import pytest
from daemon.conftest import STEP_MS, WINDOW_MS, armband

from emtl_stream.config import load_config
from emtl_stream.daemon import adapt, jobs
from emtl_stream.model.classify import MappedClassifier
from emtl_stream.pipeline.offline import featurize


def _windows(bundle, shift):
    arm = armband()
    arm.set_shift(shift)
    ext = bundle.make_extractor()
    Xs, ys = [], []
    for cls in arm.class_names:
        emg = arm.generate(150 + 1000, cls)[150:]
        X, _, _ = featurize(emg, arm.fs, ext, WINDOW_MS, STEP_MS)
        Xs.append(X)
        ys += [cls] * len(X)
    return np.vstack(Xs), np.asarray(ys)


def _acc(bundle, H, b, X, y):
    clf = MappedClassifier(bundle.components, H, b)
    return float(np.mean(np.asarray(bundle.classes)[clf.predict_index(X)] == y))


@pytest.fixture
def settings(source):
    bundle = source[0]
    m = bundle.components.n_features
    H, b = np.eye(m), np.zeros(m)
    kw, ring = jobs.transfer_settings(load_config(None, env={}), bundle.n_channels, H)
    return bundle, H, b, kw, ring


def test_unlabelled_job_recovers_a_one_electrode_shift(settings):
    bundle, H, b, kw, ring = settings
    X, y = _windows(bundle, 1.0)
    X[5] = np.nan  # a bad window is dropped, not fitted
    r = jobs.unlabelled_transfer_job(bundle.components, X, H, b, transfer_kwargs=kw,
                                     ring_channels=ring)
    assert r.accepted, r.reason
    assert r.metrics["heldout_gain_per_feature"] > 0 and r.metrics["ll_new"] > r.metrics["ll_live"]
    assert r.metrics["n_windows"] == len(X) and r.metrics["n_nonfinite"] == 1
    assert r.metrics["fit_s"] > 0
    ok = np.isfinite(X).all(axis=1)
    assert _acc(bundle, H, b, X[ok], y[ok]) < 0.6 < 0.95 < _acc(bundle, r.H, r.b, X[ok], y[ok])


def test_unlabelled_job_refuses_too_few_windows_and_keeps_the_live_map(settings):
    bundle, H, b, kw, ring = settings
    X, _ = _windows(bundle, 1.0)
    r = jobs.unlabelled_transfer_job(bundle.components, X[: adapt.MIN_WINDOWS - 1], H,
                                     b, transfer_kwargs=kw, ring_channels=ring)
    assert not r.accepted and "too few" in r.reason
    np.testing.assert_array_equal(r.H, H)


def test_a_cancelled_job_raises_and_returns_nothing(settings):
    bundle, H, b, kw, ring = settings
    X, y = _windows(bundle, 0.0)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(jobs.FitCancelled):
        jobs.unlabelled_transfer_job(bundle.components, X, H, b, transfer_kwargs=kw,
                                     ring_channels=ring, cancel=cancel)
    with pytest.raises(jobs.FitCancelled):
        jobs.transfer_job(bundle.components, X, list(y), H, b, transfer_kwargs=kw,
                          ring_channels=ring, cancel=cancel)


def test_labelled_job_reports_both_objectives(settings):
    bundle, H, b, kw, ring = settings
    X, y = _windows(bundle, 1.0)
    r = jobs.transfer_job(bundle.components, X, list(y), H, b, transfer_kwargs=kw,
                          ring_channels=ring)
    assert r["objective"] >= r["previous_objective"]
    assert _acc(bundle, r["H"], r["b"], X, y) > 0.95


def test_continuous_rotation_search_is_a_config_choice_the_jobs_honour(source):
    """``[transfer] rotation_search = "continuous"`` reaches TransferEM; "roll" stays default."""
    bundle = source[0]
    m = bundle.components.n_features
    H, b = np.eye(m), np.zeros(m)
    kw_roll, _ = jobs.transfer_settings(load_config(None, env={}), bundle.n_channels, H)
    assert "rotation_search" not in kw_roll
    cfg = load_config(None, env={"EMTL_TRANSFER_ROTATION_SEARCH": "continuous"})
    kw, ring = jobs.transfer_settings(cfg, bundle.n_channels, H)
    assert kw["rotation_search"] == "continuous" and ring == bundle.n_channels
    X, y = _windows(bundle, 1.0)
    r = jobs.unlabelled_transfer_job(bundle.components, X, H, b, transfer_kwargs=kw,
                                     ring_channels=ring)
    assert r.accepted, r.reason
    assert _acc(bundle, H, b, X, y) < 0.6 < 0.9 < _acc(bundle, r.H, r.b, X, y)


class CountingEvent(threading.Event):
    """A cancel event that counts how often the job looks at it.

    It is set (as if a ``cancel`` request arrived) at the ``set_at``-th look.
    """

    def __init__(self, set_at=None):
        super().__init__()
        self.calls, self.set_at = 0, set_at

    def is_set(self):
        self.calls += 1
        if self.calls == self.set_at:
            self.set()
        return super().is_set()


def _slow_burst(bundle):
    """Unlabelled windows halfway between two movements.

    Their responsibilities are soft, so EM takes many iterations (the plain bursts
    converge in two).
    """
    X, _ = _windows(bundle, 1.0)
    i, j = np.random.default_rng(0).integers(0, len(X), (2, 200))
    return 0.5 * (X[i] + X[j])


def test_cancel_stops_a_running_transfer_fit_within_one_iteration(settings):
    bundle, H, b, kw, ring = settings
    X = _slow_burst(bundle)
    labels = [None] * len(X)
    # the general (masked) solver iterates in Python, checking the hook every iteration
    slow_kw = dict(kw, max_iter=1000, tol=0.0, penalty="identity", structure="dense")
    full = CountingEvent()
    r = jobs.transfer_job(bundle.components, X, labels, H, b, transfer_kwargs=slow_kw,
                          ring_channels=None, cancel=full)
    # uncancelled: one look before the job, one per start, one per iteration, one after
    assert r["n_iter"] >= 8 and full.calls == 1 + 1 + (r["n_iter"] + 1) + 1
    for set_at in (3, 6):  # a cancel arriving during the 1st and the 4th iteration
        cancel = CountingEvent(set_at=set_at)
        with pytest.raises(jobs.FitCancelled):
            jobs.transfer_job(bundle.components, X, labels, H, b, transfer_kwargs=slow_kw,
                              ring_channels=None, cancel=cancel)
        assert cancel.calls == set_at  # stopped at that very check, nothing ran after it


def test_should_stop_is_checked_before_every_start_and_iteration(settings):
    from emtl_stream.errors import FitCancelled
    from emtl_stream.model.transfer import TransferEM

    bundle, H, b, kw, ring = settings
    X = _slow_burst(bundle)
    # structure="channel" with the ring: one EM per roll start, each checked
    tem = TransferEM(bundle.components, ring_channels=ring, **dict(kw, tol=0.0))
    looks = []
    tem.fit(X, None, H_init=H, should_stop=lambda: looks.append(1) and False)
    assert len(looks) > tem.n_iter_ + 1  # more than the winning start's iterations
    for stop_at in (1, 2, len(looks) - 1):
        calls = []

        def should_stop():
            calls.append(1)
            return len(calls) >= stop_at

        tem = TransferEM(bundle.components, ring_channels=ring, **dict(kw, tol=0.0))
        with pytest.raises(FitCancelled):
            tem.fit(X, None, H_init=H, should_stop=should_stop)
        assert len(calls) == stop_at


@pytest.mark.parametrize("kind", ["lgmm", "gmlvq"])
def test_a_training_fit_stops_within_one_iteration(source, kind):
    """cancel reaches into the source-model fits (EM or L-BFGS), not only between them."""
    bundle = source[0]
    X, y = _windows(bundle, 0.0)
    kw = dict(kind=kind, covariance_type="full", n_components_per_class=2,
              extractor=bundle.make_extractor(), window_ms=WINDOW_MS, step_ms=STEP_MS,
              n_channels=bundle.n_channels, rate=bundle.fs)
    full = CountingEvent()
    r = jobs.train_job(X, list(y), cancel=full, **kw)
    # before and after the job, and inside both fits (held-out refit and the model):
    # at least once before each fit's optimisation and once in its first iteration
    assert list(r["bundle"].classes) == sorted(set(y))
    assert full.calls >= 2 + 2 * 2, full.calls
    # a look inside the first fit's first iterations, in the middle and in the last one
    for set_at in sorted({2, 3, full.calls // 2, full.calls - 1}):
        cancel = CountingEvent(set_at=set_at)
        with pytest.raises(jobs.FitCancelled):
            jobs.train_job(X, list(y), cancel=cancel, **kw)
        assert cancel.calls == set_at  # stopped at that very look


def test_estimators_keep_their_state_when_stopped():
    from emtl_stream.errors import FitCancelled
    from emtl_stream.model.gmm import LabelledGMM
    from emtl_stream.model.lvq import GMLVQ

    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (60, 3)), rng.normal(3, 1, (60, 3))])
    y = np.repeat(["a", "b"], 60)
    for model in (LabelledGMM(n_components_per_class=2, tol=1e-9, max_iter=500),
                  GMLVQ(prototypes_per_class=1)):
        looks = []
        model.fit(X, y, should_stop=lambda: looks.append(1) and False)
        assert len(looks) >= model.n_iter_  # asked at every iteration
        before = model.predict(X).copy()
        with pytest.raises(FitCancelled):
            model.fit(X[::-1] + 5.0, y, should_stop=lambda: True)
        np.testing.assert_array_equal(model.predict(X), before)


def test_the_guard_is_a_config_choice(source):
    """``[transfer] guard``: "auto" leaves TransferEM's default, "on"/"off" force it."""
    bundle = source[0]
    H = np.eye(bundle.components.n_features)
    kw, _ = jobs.transfer_settings(load_config(None, env={}), bundle.n_channels, H)
    assert "guard" not in kw
    for value, want in (("on", True), ("off", False)):
        cfg = load_config(None, env={"EMTL_TRANSFER_GUARD": f'"{value}"',
                                     "EMTL_TRANSFER_ROTATION_SEARCH": '"continuous"'})
        assert jobs.transfer_settings(cfg, bundle.n_channels, H)[0]["guard"] is want


def test_a_guarded_burst_the_live_map_already_classifies_is_refused(tmp_path, source):
    """An unshifted arm with ``guard = "on"``: ``calibration_failed`` naming the guard,
    no new map version; a shifted arm's burst goes live."""
    from daemon.conftest import daemon_config, unique_id

    from emtl_stream.daemon import calibrate
    from emtl_stream.daemon.service import Daemon

    bundle = source[0]
    m = bundle.components.n_features
    H, b = np.eye(m), np.zeros(m)
    cfg = daemon_config(tmp_path / "state", unique_id("guard"), EMTL_TRANSFER_GUARD='"on"')
    kw, ring = jobs.transfer_settings(cfg, bundle.n_channels, H)
    d = Daemon(cfg, bundle=bundle)
    sent = []
    d.events.bind(lambda topic, msg: sent.append(msg))
    results = {}
    for shift in (0.0, 1.0):
        X, y = _windows(bundle, shift)
        results[shift] = r = jobs.transfer_job(bundle.components, X, list(y), H, b,
                                               transfer_kwargs=kw, ring_channels=ring)
        assert r["guard"]["live"] == pytest.approx(_acc(bundle, H, b, X, y))
    assert results[0.0]["guard"]["kept_live"] and results[0.0]["guard"]["live"] > 0.95
    np.testing.assert_array_equal(results[0.0]["H"], H)
    assert not results[1.0]["guard"]["kept_live"]

    v0, maps0 = d.version, len(d.store.list_maps())
    d.fsm.transition("start_prompting")
    d.fsm.transition("start_fitting")
    calibrate._install_transfer(d, results[0.0], burst_id=7)
    kinds = [e["kind"] for e in sent]
    assert "model_swapped" not in kinds and d.version == v0
    assert len(d.store.list_maps()) == maps0
    fail = [e for e in sent if e["kind"] == "calibration_failed"][-1]
    assert "held-out burst windows" in fail["reason"] and fail["burst"] == 7
    assert fail["guard"] == results[0.0]["guard"] and fail["model"] == v0

    d.fsm.transition("start_prompting")
    d.fsm.transition("start_fitting")
    calibrate._install_transfer(d, results[1.0], burst_id=8)
    swapped = [e for e in sent if e["kind"] == "model_swapped"]
    assert swapped and swapped[-1]["burst"] == 8 and d.version != v0
