"""The daemon's minimal shift watch behind the ShiftWatch interface."""

import json

import numpy as np
import pytest

from emtl_stream.daemon import shift
from emtl_stream.daemon.shift import ShiftReference, ShiftWatch


def _feed(watch, values):
    return [e for t, v in enumerate(values) if (e := watch.update(v, np.zeros(3), t)) is not None]


def test_learns_reference_then_flags_a_drop_once_and_rearms():
    rng = np.random.default_rng(0)
    w = ShiftWatch(n_features=3)
    ref = rng.normal(-10, 1, shift.REFERENCE_WINDOWS)
    assert _feed(w, ref) == []
    assert w.reference.median == pytest.approx(np.median(ref))
    mad = 1.4826 * np.median(np.abs(ref - np.median(ref)))
    assert w.reference.spread == pytest.approx(mad)
    assert _feed(w, rng.normal(-10, 1, 100)) == []  # unshifted: no alarm
    events = _feed(w, rng.normal(-40, 1, 200))  # far below: one alarm
    assert len(events) == 1 and events[0]["baseline"] == pytest.approx(w.reference.median)
    _feed(w, rng.normal(-10, 1, 100))  # back near the reference: re-armed
    assert len(_feed(w, rng.normal(-40, 1, 200))) == 1


def test_given_reference_detects_a_cold_start_shift():
    w = ShiftWatch(3, ShiftReference(-10.0, 1.0, 80))
    events = _feed(w, np.full(shift.RECENT_WINDOWS, -30.0))
    assert len(events) == 1  # no learning phase: shifted from the first window


def test_non_finite_ignored_and_reference_round_trip():
    w = ShiftWatch(3, ShiftReference(-10.0, 1.0, 80))
    assert _feed(w, [np.nan, np.inf, -np.inf] * 50) == []
    d = json.loads(json.dumps(w.reference.to_dict()))
    assert ShiftReference.from_dict(d) == w.reference
    with pytest.raises(ValueError):
        ShiftReference.from_dict({"median": 1.0, "spread": 0.0})
    w.reset()
    assert w.reference is None
