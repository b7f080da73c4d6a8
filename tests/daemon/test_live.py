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
        # the same rows in a call of their own (the daemon's path for wide windows)
        alone_ll, alone_index = clf.score_rows(x, rows)
        np.testing.assert_allclose(alone_ll, extra, rtol=1e-12)
        np.testing.assert_array_equal(alone_index, extra_index)
    bad = np.full(X.shape[1], np.nan)
    flagged = clf.classify_window(bad, rows=rows)
    assert np.isnan(flagged.row_log_marginals).all() and (flagged.row_index == -1).all()
    alone_ll, alone_index = clf.score_rows(bad, rows)
    assert np.isnan(alone_ll).all() and (alone_index == -1).all()
    assert not live.H.flags.writeable  # one immutable value
    with pytest.raises(Exception):
        live.version = 4


@pytest.mark.parametrize("inline_max", [0, None])
def test_the_shift_watch_gets_the_same_ring_evidence_in_one_call_or_two(
        tmp_path, source, start_player, start_daemon, monkeypatch, inline_max):
    """Wide windows publish first and score their rolled windows after; the evidence the
    shift watch receives equals the one-call scores either way."""
    import time

    from daemon.conftest import daemon_config, unique_id

    from emtl_stream.daemon import service
    from emtl_stream.daemon.shift import ShiftWatch
    from emtl_stream.model.classify import MappedClassifier

    if inline_max is not None:  # every ring is "wide": the separate call runs
        monkeypatch.setattr(service, "RING_ROWS_INLINE_MAX", inline_max)
    bundle = source[0]
    calls, updates = [], []
    orig_classify, orig_update = MappedClassifier.classify_window, ShiftWatch.update

    def classify_spy(self, x, rows=None):
        calls.append((self, np.array(x), rows))
        return orig_classify(self, x, rows)

    def update_spy(self, ll, z, t, ring_ll=None, ring_index=None):
        # the window's own classification is the loop's latest call (same thread)
        updates.append((calls[-1], ll, None if ring_ll is None else np.array(ring_ll),
                        None if ring_index is None else np.array(ring_index)))
        return orig_update(self, ll, z, t, ring_ll=ring_ll, ring_index=ring_index)

    monkeypatch.setattr(MappedClassifier, "classify_window", classify_spy)
    monkeypatch.setattr(ShiftWatch, "update", update_spy)
    sid = unique_id("ringcall")
    start_player(sid, class_schedule=[(c, 0.5) for c in bundle.classes], loop=True)
    d = start_daemon(daemon_config(tmp_path / "state", sid), bundle=bundle)
    deadline = time.monotonic() + 20.0
    while len(updates) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    d.stop(timeout=10.0)
    assert len(updates) >= 20, "the shift watch saw too few windows"
    assert len(calls) >= len(updates)
    rows = d.watch.ring_rows(calls[0][1].shape[0])
    assert rows is not None  # the daemon's ring test is on for this source
    assert all((r is None) == (inline_max == 0) for _, _, r in calls)
    # independent: score every window again with its rows, in one call
    for (clf, x, _), ll, ring_ll, ring_index in updates:
        one = orig_classify(clf, x, rows)
        assert ll == pytest.approx(one.log_marginal, rel=1e-12)
        np.testing.assert_allclose(ring_ll, one.row_log_marginals, rtol=1e-12)
        np.testing.assert_array_equal(ring_index, one.row_index)


@pytest.mark.parametrize("meta, expect", [
    ({"map_rotation": 0.0}, 0.0), ({"map_rotation": 7}, 7.0), ({"map_rotation": 1.25}, 1.25),
    ({}, None), ({"map_rotation": None, "reason": "recalibration"}, None),
    ({"reason": "new source model"}, 0.0),  # an identity map stored before the field
    ({"map_rotation": "1"}, None), ({"map_rotation": True}, None),
    ({"map_rotation": float("nan")}, None), ({"map_rotation": float("inf")}, None),
    ({"map_rotation": [1.0], "reason": "new source model"}, None)])
def test_a_stored_map_rotation_is_used_only_when_it_is_a_finite_number(meta, expect):
    """A hand-edited or foreign map meta must not steer the zero-label guard: anything
    but a finite number is an unknown rotation (the guard's old margin applies)."""
    from emtl_stream.daemon.maps import stored_rotation

    assert stored_rotation(meta) == expect


def test_the_live_model_carries_its_rotation_through_a_swap(source):
    bundle = source[0]
    m = bundle.components.n_features
    live = LiveModel.build(bundle, np.eye(m), np.zeros(m), 1, rotation=0.0)
    assert live.rotation == 0.0
    assert live.with_map(np.eye(m), np.zeros(m), 2, rotation=7.0).rotation == 7.0
    assert live.with_map(np.eye(m), np.zeros(m), 3).rotation is None  # unknown unless given
