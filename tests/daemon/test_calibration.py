"""Calibration protocol: schedule vs a hand-rolled table, window labelling, burst checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emtl_stream.daemon.calibration import BurstCollector, PromptSchedule, check_burst
from emtl_stream.errors import BurstTooShort, CalibrationError, DegenerateBurst
from naive.calibration import label_by_sampling, schedule_table


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=4, unique=True),
       st.floats(0.1, 3.0), st.integers(1, 3), st.just(0.0) | st.floats(0.05, 1.0),
       st.just(0.0) | st.floats(0.05, 1.5))
def test_schedule_matches_a_hand_rolled_table(classes, seconds, reps, lead, rest):
    sched = PromptSchedule(classes, seconds, reps, lead, rest)
    rows = schedule_table(classes, seconds, reps, lead, rest)
    assert len(sched) == len(rows)
    for step, (kind, label, start, end, rec) in zip(sched.steps, rows):
        assert (step.kind, step.label) == (kind, label)
        assert step.start_s == pytest.approx(start) and step.end_s == pytest.approx(end)
        if kind == "class":
            assert step.record_start_s == pytest.approx(rec)
        assert step.of == len(rows) and 1 <= step.step <= len(rows)
    assert sched.duration_s == pytest.approx(rows[-1][3])
    # at(t) at the midpoint of every step is that step
    for i, (_, _, start, end, _) in enumerate(rows):
        assert sched.at((start + end) / 2).index == i
    assert sched.at(-0.01) is None and sched.at(sched.duration_s) is None


@settings(max_examples=60, deadline=None)
@given(st.floats(0.0, 12.0), st.sampled_from([0.0, 0.15, 0.2]))
def test_window_labels_match_sampling_the_window(t, window_s):
    classes, seconds, reps, lead, rest = ["fist", "open"], 1.0, 2, 0.5, 1.0
    sched = PromptSchedule(classes, seconds, reps, lead, rest)
    rows = schedule_table(classes, seconds, reps, lead, rest)
    assert sched.label_for_window(t, window_s) == label_by_sampling(rows, t, window_s)


def test_window_counts_per_class_match_expected_windows():
    sched = PromptSchedule(["fist", "open", "rest"], 1.0, 2, lead_in_s=0.5, rest_s=1.0)
    col = BurstCollector(sched, t0=100.0, window_s=0.2)
    step = 0.05
    for k in range(int(sched.duration_s / step) + 5):
        t = 100.0 + k * step
        col.add(np.full(3, float(k)), None, t)
    per_rep = sched.expected_windows(0.2, step)
    assert per_rep == 17  # (1.0 - 0.2) / 0.05 + 1
    assert col.counts() == {"fist": 2 * per_rep, "open": 2 * per_rep, "rest": 2 * per_rep}
    assert col.n_discarded == int(sched.duration_s / step) + 5 - 6 * per_rep
    X, labels, stamps = col.arrays()
    assert X.shape == (6 * per_rep, 3) and len(labels) == len(stamps) == X.shape[0]
    # no accepted window starts in a lead-in
    for t, lab in zip(stamps, labels):
        s = sched.at(t - 100.0 - 1e-6)
        assert s.kind == "class" and s.label == lab and t - 100.0 - 0.2 >= s.record_start_s - 1e-9


def test_schedule_arguments_are_checked():
    with pytest.raises(ValueError, match="non-empty list"):
        PromptSchedule([], 1.0)
    with pytest.raises(ValueError, match="more than once"):
        PromptSchedule(["a", "a"], 1.0)
    with pytest.raises(ValueError, match="seconds_per_class"):
        PromptSchedule(["a"], 0.0)
    with pytest.raises(ValueError, match="rest_s"):
        PromptSchedule(["a"], 1.0, rest_s=-1)
    with pytest.raises(ValueError, match="repetitions"):
        PromptSchedule(["a"], 1.0, repetitions=0)
    one = PromptSchedule("a", 1.0, 1, lead_in_s=0.0, rest_s=0.0)
    assert len(one) == 1 and one.duration_s == 1.0
    assert one.expected_windows(2.0, 0.05) == 0


def test_manual_collector_and_arrays_for_the_store():
    col = BurstCollector()
    assert not col.add([1.0, 2.0], None, 0.0)  # unlabelled: discarded
    assert col.add([1.0, 2.0], "fist", 0.1, raw=np.zeros((4, 2)))
    assert col.add([3.0, 4.0], "open", 0.2, raw=np.ones((4, 2)))
    arrays = col.to_arrays()
    assert arrays["labels"].dtype.kind == "U" and arrays["raw"].shape == (2, 4, 2)
    np.testing.assert_array_equal(arrays["timestamps"], [0.1, 0.2])
    with pytest.raises(ValueError, match="raw for every window"):
        col.add([1.0, 1.0], "fist", 0.3)
    c = BurstCollector()
    c.add([1.0, 2.0], "a")
    with pytest.raises(ValueError, match="3 features"):
        c.add([1.0, 2.0, 3.0], "a")
    small = BurstCollector(max_windows=1)
    small.add([1.0], "a")
    with pytest.raises(CalibrationError, match="max_windows=1"):
        small.add([1.0], "a")
    with pytest.raises(ValueError, match="t0"):
        BurstCollector(PromptSchedule(["a"], 1.0))
    assert BurstCollector().arrays()[0].shape == (0, 0)


def good_burst(rng, n=10, d=6):
    X = np.vstack([rng.normal(loc=0.0, size=(n, d)), rng.normal(loc=3.0, size=(n, d))])
    return X, ["fist"] * n + ["open"] * n


def test_good_burst_summary_matches_numpy(rng):
    X, labels = good_burst(rng)
    out = check_burst(X, labels, ["fist", "open", "rest"], 2)
    assert out["counts"] == {"fist": 10, "open": 10} and out["n_windows"] == 20
    assert out["rank"] == np.linalg.matrix_rank(X - X.mean(axis=0))
    assert out["constant_features"] == []
    low = np.hstack([X[:, :2], X[:, :2] @ rng.normal(size=(2, 4))])
    assert check_burst(low, labels)["rank"] == 2


def test_too_short_names_the_class_and_counts(rng):
    X, labels = good_burst(rng)
    labels = ["fist"] * 19 + ["open"]
    with pytest.raises(BurstTooShort) as info:
        check_burst(X, labels, None, 2)
    msg = str(info.value)
    assert "'open' has 1 window" in msg and "fist=19" in msg and "open=1" in msg
    with pytest.raises(BurstTooShort, match="no labelled windows"):
        check_burst(np.zeros((0, 0)), [], None, 2)


def test_subset_is_fine_unless_all_are_required(rng):
    X, labels = good_burst(rng)
    check_burst(X, labels, ["fist", "open", "rest"], 2)
    with pytest.raises(BurstTooShort, match="'rest' has 0 window"):
        check_burst(X, labels, ["fist", "open", "rest"], 2, require_all=True)


def test_unknown_labels_and_shape_mismatch(rng):
    X, labels = good_burst(rng)
    with pytest.raises(CalibrationError, match=r"\['open'\] are not classes"):
        check_burst(X, labels, ["fist"], 2)
    with pytest.raises(CalibrationError, match="20 windows but 19 labels"):
        check_burst(X, labels[:-1])
    with pytest.raises(CalibrationError, match="2-D"):
        check_burst(X[0], labels[:1])


@pytest.mark.parametrize("where", [0, 7, 19])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_windows_are_degenerate(rng, where, bad):
    X, labels = good_burst(rng)
    X[where, 3] = bad
    with pytest.raises(DegenerateBurst, match=f"1 of 20 .*first: window {where}"):
        check_burst(X, labels)


def test_constant_features(rng):
    X, labels = good_burst(rng)
    X[:, 1] = 5.0  # one dead channel is tolerated (and reported)
    assert check_burst(X, labels)["constant_features"] == [1]
    X[:, :4] = 0.0
    with pytest.raises(DegenerateBurst, match=r"4 of 6 features are constant.*\[0, 1, 2, 3\]"):
        check_burst(X, labels)
    with pytest.raises(DegenerateBurst, match="every feature is constant"):
        check_burst(np.ones((20, 6)), labels)


def test_identical_classes_are_degenerate(rng):
    half = rng.normal(size=(10, 6))
    X = np.vstack([half, half])
    with pytest.raises(DegenerateBurst, match="identical features"):
        check_burst(X, ["fist"] * 10 + ["open"] * 10)
