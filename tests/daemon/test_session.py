"""Calibration sessions: the labelling rule, prompt rate, end on the LSL clock, bounds."""

import math

import numpy as np
import pytest

from emtl_stream.daemon import session as S
from emtl_stream.daemon.calibration import PromptSchedule
from emtl_stream.errors import CalibrationError


def _prompted(t0=100.0, window_s=0.2):
    sched = PromptSchedule(["a", "b"], 1.0, 1, 0.2, 0.3)
    return S.Session("recalibrate", t0, window_s, schedule=sched), sched


def test_prompted_labels_follow_the_schedule_rule():
    s, sched = _prompted()
    for t in np.arange(100.0, 100.0 + sched.duration_s + 0.5, 0.05):
        assert s.label_for(t) == sched.label_for_window(t - 100.0, 0.2)
        s.add_window(np.array([t, 2 * t, 1.0]), t)
    X, labels = s.check(["a", "b"], 2)
    assert len(X) == len(labels) == sum(
        sched.label_for_window(t - 100.0, 0.2) is not None
        for t in np.arange(100.0, 100.0 + sched.duration_s + 0.5, 0.05))


def test_prompts_at_most_ten_per_second_and_new_steps_at_once():
    s, sched = _prompted()
    ticks = np.arange(100.0, 100.0 + sched.duration_s, 0.001)  # a loop at 1 kHz
    prompts = [p for t in ticks if (p := s.tick(t)[0]) is not None]
    assert len(prompts) <= sched.duration_s * S.PROMPT_MAX_HZ + len(sched.steps) + 1
    assert sorted({p.step for p in prompts if p.new_step}) == list(range(1, len(sched.steps) + 1))


def test_prompted_session_ends_with_the_schedule_without_another_window():
    s, sched = _prompted(window_s=0.2)
    end = 100.0 + sched.duration_s
    assert s.tick(end + 0.01, data_until=end - 0.01)[1] is False  # last samples not in yet
    assert s.tick(end + 0.01, data_until=end)[1] is True  # samples up to the end: close now
    # a stalled stream: closed on the LSL clock
    assert s.tick(end + S.BURST_CLOSE_FALLBACK_S - 0.01)[1] is False
    assert s.tick(end + S.BURST_CLOSE_FALLBACK_S)[1] is True


@pytest.mark.parametrize("phase", [0.0, 0.013, 0.031, 0.049])
def test_prompted_session_closes_on_its_last_labellable_window(phase):
    # Windows end on a 50 ms grid whose phase the schedule does not know. The session
    # must close on the window after which no window can be labelled any more, and the
    # burst must hold exactly the windows the schedule labels (the independent count).
    step, window = 0.05, 0.2
    sched = PromptSchedule(["a", "b"], 1.0, 1, 0.2, 0.3)
    s = S.Session("recalibrate", 100.0, window, schedule=sched, step_s=step)
    end = 100.0 + sched.duration_s
    ends = 100.0 + phase + step * np.arange(200)
    closed_at = None
    for t in ends:
        s.add_window(np.array([t, 1.0]), t)
        if s.tick(t, data_until=t)[1]:
            closed_at = t
            break
    last_labelled = max(t for t in ends if sched.label_for_window(t - 100.0, window))
    assert closed_at == pytest.approx(last_labelled)
    assert end - step - S.CLOSE_MARGIN_S < closed_at <= end + 1e-9
    X, _ = s.check(["a", "b"], 2)
    assert len(X) == sum(sched.label_for_window(t - 100.0, window) is not None for t in ends)


def test_manual_rule_only_windows_starting_after_the_label():
    s = S.Session("manual", 10.0, 0.2)
    assert s.label_for(11.0) is None
    s.set_label("a", 11.0)
    assert s.label_for(11.19) is None and s.label_for(11.2) == "a"
    s.set_label(None, 12.0)
    assert s.label_for(13.0) is None


def test_unlabelled_collects_finite_windows_for_its_seconds():
    s = S.Session("unlabelled", 0.0, 0.2, seconds=1.0, max_windows=50)
    for t in np.arange(0.0, 2.0, 0.05):
        s.add_window(np.array([t, np.nan]) if 0.5 < t < 0.6 else np.array([t, 1.0]), t)
    X = s.unlabelled_windows()
    assert np.all(np.isfinite(X)) and X[:, 0].max() <= 1.0
    assert s.tick(0.99)[1] is False and s.tick(1.0)[1] is True


@pytest.mark.parametrize("seconds,reps", [
    (1e300, 1), (1e308, 10), (math.inf, 1), (float("nan"), 1), (0.0, 1), (-1.0, 1),
    (1.0, 10 ** 30), (1.0, 10 ** 6), (1.0, 0), (1.0, 2.5), (60.0, 50)])
def test_out_of_bound_requests_are_refused_before_anything_is_built(seconds, reps):
    with pytest.raises(CalibrationError):
        S.check_session_request(["a", "b", "c"], seconds, reps, 0.5, 1.0)


def test_in_bound_request_builds_the_schedule():
    sched = S.check_session_request(["a", "b"], 2.0, 3, 0.5, 1.0)
    assert sched.repetitions == 3 and sched.seconds_per_class == 2.0


def test_ramp_session_prompts_say_ramp_on_class_steps_only():
    sched = PromptSchedule(["a", "b"], 1.0, 1, 0.2, 0.3)
    s = S.Session("ramp", 100.0, 0.2, schedule=sched)
    prompts = [p for t in np.arange(100.0, 100.0 + sched.duration_s, 0.01)
               if (p := s.tick(t)[0]) is not None and p.new_step]
    assert [(p.cls, p.ramp) for p in prompts] == [("a", True), ("rest", False), ("b", True)]
    extra = prompts[0].extra()
    assert extra["ramp"] is True and "ramp" in extra["instruction"].lower()
    assert "a" in extra["instruction"] and "strong" in extra["instruction"]
    assert prompts[1].extra() == {}
    # a plain recalibration's prompts carry no ramp fields
    plain = S.Session("recalibrate", 100.0, 0.2, schedule=sched)
    assert plain.tick(100.0)[0].extra() == {}
    # the labelling rule is the prompted one
    assert s.label_for(100.0 + 0.2 + 0.5) == "a"
