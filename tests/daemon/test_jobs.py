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
