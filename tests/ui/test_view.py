"""ViewState and its helpers, driven by explicit calls (no sockets, no threads).

The prompt arithmetic is checked against the daemon's own PromptSchedule, the
channel activity against a numpy reshape of the channel-major feature vector.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from emtl_stream.daemon.calibration import PromptSchedule
from emtl_stream.ui.view import ViewState, channel_activity, next_class_after, step_kind


@pytest.mark.parametrize("classes,reps,rest_s", [
    (["a", "b", "c"], 1, 1.0), (["a", "b", "c"], 2, 1.0), (["rest", "open", "close"], 2, 0.5),
    (["a", "b"], 3, 0.0), (["only"], 1, 1.0), (["only"], 3, 1.0), (["x", "rest"], 1, 0.0),
])
def test_prompt_kind_and_up_next_match_the_daemons_schedule(classes, reps, rest_s):
    sched = PromptSchedule(classes, 1.0, reps, lead_in_s=0.2, rest_s=rest_s)
    steps, of = sched.steps, len(sched.steps)
    for i, step in enumerate(steps):
        n = i + 1
        assert step_kind(n, of, step.label, classes, reps) == step.kind, (n, step)
        later = [s.label for s in steps[i + 1:] if s.kind == "class"]
        if step.kind == "rest":
            assert next_class_after(n, of, classes, reps) == later[0]


def test_unknown_schedule_claims_no_next_class():
    assert next_class_after(2, 7, ["a", "b"], 1) is None
    assert next_class_after(2, 3, [], 1) is None
    assert step_kind(2, 7, "rest", ["a", "b"], 1) == "rest"  # falls back to the name
    assert step_kind(2, 7, "a", ["a", "b"], 1) == "class"


def test_channel_activity_is_the_mav_column_of_the_channel_major_vector(rng):
    names = ["wl", "mav", "zc", "ssc"]
    X = rng.normal(size=(8, 4))  # (channels, features), channel-major when flattened
    act = channel_activity(X.ravel().tolist(), 8, names)
    assert act["feature"] == "mav"
    np.testing.assert_allclose(act["values"], np.abs(X[:, 1]))
    act = channel_activity(X.ravel().tolist(), 8, [])  # no names: first feature per channel
    np.testing.assert_allclose(act["values"], np.abs(X[:, 0]))
    assert channel_activity([1.0, 2.0, 3.0], 2, []) is None
    assert channel_activity([1.0, 2.0, 3.0], None, ["a", "b"]) is None


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def pred(seq, t=10.0):
    return {"v": 1, "seq": seq, "t": t, "t_pub": t + 0.004, "label": "a", "index": 0,
            "proba": [1.0, 0.0], "confidence": 1.0, "rejected": False, "model": 1}


def status(**kw):
    out = {"v": 1, "ok": True, "state": "streaming", "model": 1, "classes": ["a", "b"],
           "stream": {"name": "s", "channels": 2, "rate": 500.0, "connected": True},
           "windows": 1, "dropped": 0, "uptime_s": 5.0, "maps": [1]}
    out.update(kw)
    return out


def test_lost_messages_rate_and_latency_from_pred_sequence_numbers():
    clock = Clock()
    view = ViewState("c", "p", clock=clock)
    seqs = [1, 2, 3, 7, 8, 10]  # 3 + 1 lost
    for s in seqs:
        view.on_message("pred", pred(s))
        clock.t += 0.05
    parts = view.snapshot()[1]
    assert parts["health"]["lost_messages"] == 4
    assert parts["health"]["latency_ms"] == pytest.approx(4.0)
    assert parts["health"]["window_rate_hz"] == pytest.approx(20.0)


def test_only_changed_parts_are_returned_after_a_seq():
    view = ViewState("c", "p", clock=Clock())
    seq, parts = view.snapshot()
    assert set(parts) == {"link", "status", "pred", "health", "activity", "prompt",
                          "calibration", "history", "alerts"}
    view.on_message("pred", pred(1))
    seq2, changed = view.snapshot(seq)
    assert set(changed) == {"pred", "health"} and seq2 > seq
    assert view.snapshot(seq2)[1] == {}
    view.on_status(status())
    assert view.wait(seq2, 0.0) > seq2
    assert {"link", "status", "history"} <= set(view.snapshot(seq2)[1])


def test_unreachable_then_back_then_restarted():
    clock = Clock()
    view = ViewState("tcp://127.0.0.1:1", "p", clock=clock)
    view.on_unreachable("no reply")  # absent from the start: said once
    view.on_unreachable("no reply")
    assert [a["kind"] for a in view.snapshot()[1]["alerts"]] == ["daemon_lost"]
    view.on_status(status(uptime_s=50.0))
    view.on_unreachable("no reply")
    view.on_unreachable("no reply")  # said once
    view.on_status(status(uptime_s=1.0))
    parts = view.snapshot()[1]
    kinds = [a["kind"] for a in parts["alerts"]]
    assert kinds == ["daemon_lost", "daemon_back", "daemon_lost", "daemon_back",
                     "daemon_restarted"]
    assert parts["link"]["daemon"] and parts["link"]["restarts"] == 1


def test_map_history_from_events_and_status():
    clock = Clock()
    view = ViewState("c", "p", clock=clock)
    view.on_status(status(model=1, maps=[1]))
    view.on_message("event", {"v": 1, "kind": "calibration_started", "t_pub": 1.0,
                              "classes": ["a", "b"], "purpose": "recalibrate",
                              "repetitions": 1})
    clock.t += 5
    view.on_message("event", {"v": 1, "kind": "model_swapped", "t_pub": 2.0, "model": 2,
                              "reason": "recalibration"})
    view.on_message("event", {"v": 1, "kind": "calibration_done", "t_pub": 2.0, "model": 2,
                              "objective": -3.5, "roll": 1, "n_iter": 7})
    clock.t += 5
    view.on_message("event", {"v": 1, "kind": "rollback", "t_pub": 3.0, "model": 1,
                              "previous": 2})
    view.on_status(status(model=1, maps=[1, 2]))
    rows = view.snapshot()[1]["history"]
    assert [(r["version"], r["why"]) for r in rows] == [(1, "rollback"), (2, "prompted"),
                                                       (1, "earlier")]
    assert rows[1]["objective"] == -3.5 and rows[1]["roll"] == 1 and rows[1]["when"] == 1005.0
    assert rows[0]["previous"] == 2 and rows[2]["when"] is None
    # an unlabelled recalibration is told apart from a prompted one
    view.on_message("event", {"v": 1, "kind": "calibration_started", "t_pub": 4.0,
                              "classes": ["a", "b"], "labels": False})
    view.on_message("event", {"v": 1, "kind": "calibration_done", "t_pub": 5.0, "model": 3})
    assert view.snapshot()[1]["history"][0]["why"] == "unlabelled"


def test_prompt_parts_and_expiry():
    clock = Clock()
    view = ViewState("c", "p", clock=clock)
    view.on_message("event", {"v": 1, "kind": "calibration_started", "t_pub": 1.0,
                              "classes": ["rest", "open"], "repetitions": 1})
    view.on_message("prompt", {"v": 1, "class": "rest", "remaining_s": 1.0, "step": 1, "of": 3})
    assert view.snapshot()[1]["prompt"]["kind"] == "class"  # the class called rest
    view.on_message("prompt", {"v": 1, "class": "rest", "remaining_s": 0.8, "step": 2, "of": 3})
    p = view.snapshot()[1]["prompt"]
    assert p["kind"] == "rest" and p["next"] == "open" and p["duration_s"] == 0.8
    view.on_message("prompt", {"v": 1, "class": "rest", "remaining_s": 0.5, "step": 2, "of": 3})
    assert view.snapshot()[1]["prompt"]["duration_s"] == 0.8
    clock.t += 1.0
    view.tick()
    assert view.snapshot()[1]["prompt"] is not None
    clock.t += 1.0
    view.tick()
    assert view.snapshot()[1]["prompt"] is None


def test_alerts_are_bounded_and_plain():
    view = ViewState("c", "p", clock=Clock())
    for i in itertools.islice(itertools.count(), 50):
        view.on_message("event", {"v": 1, "kind": "shift_suspected", "t_pub": 1.0,
                                  "reason": f"log-likelihood dropped {i}"})
    view.on_message("event", {"v": 1, "kind": "calibration_failed", "t_pub": 1.0,
                              "reason": "burst too short", "model": 3})
    alerts = view.snapshot()[1]["alerts"]
    assert len(alerts) == 20
    assert alerts[-1]["text"] == "Calibration failed: burst too short (map 3 stays live)"
    assert alerts[-2]["text"] == "Electrode shift suspected: log-likelihood dropped 49"


def test_map_metadata_in_status_is_used_when_the_daemon_gives_it():
    view = ViewState("c", "p", clock=Clock())
    view.on_status(status(model=2, maps=[
        {"version": 1, "created": 100.0, "objective": None, "parent": None},
        {"version": 2, "created": 200.0, "objective": -4.0, "roll": 3, "purpose": "prompted"},
        {"version": "x"}]))
    rows = view.snapshot()[1]["history"]
    assert [(r["version"], r["when"], r["why"], r["objective"], r["roll"]) for r in rows] == [
        (2, 200.0, "prompted", -4.0, 3), (1, 100.0, "earlier", None, None)]


def test_map_history_of_the_daemons_status_and_speed_on_pred():
    """``status.map_history`` (the daemon's stored provenance) wins over bare versions."""
    view = ViewState("c", "p", clock=Clock())
    view.on_status(status(model=3, maps=[1, 2, 3], map_history=[
        {"version": 1, "created": 100.0, "reason": "new source model", "objective": None},
        {"version": 2, "created": 200.0, "reason": "recalibration", "objective": -4.0,
         "roll": 1},
        {"version": 3, "created": 300.0, "reason": "unlabelled", "objective": None,
         "roll": 7}]))
    rows = view.snapshot()[1]["history"]
    assert [(r["version"], r["when"], r["why"], r["roll"]) for r in rows] == [
        (3, 300.0, "unlabelled", 7), (2, 200.0, "prompted", 1), (1, 100.0, "new source model",
                                                                None)]
    view.on_message("pred", dict(pred(1), speed=0.42, stale=False))
    got = view.snapshot()[1]["pred"]
    assert got["speed"] == 0.42 and got["stale"] is False


def test_ramp_prompts_carry_the_daemons_instruction_and_done_keeps_the_map():
    clock = Clock()
    view = ViewState("c", "p", clock=clock)
    view.on_message("event", {"v": 1, "kind": "calibration_started", "t_pub": 1.0,
                              "purpose": "ramp", "ramp": True, "classes": ["open"],
                              "repetitions": 1})
    assert view.snapshot()[1]["calibration"]["ramp"] is True
    text = "Slowly ramp up open: start relaxed and contract a little harder every moment"
    view.on_message("prompt", {"v": 1, "class": "open", "remaining_s": 4.0, "step": 1,
                               "of": 1, "ramp": True, "instruction": text})
    p = view.snapshot()[1]["prompt"]
    assert p["ramp"] is True and p["instruction"] == text
    view.on_message("prompt", {"v": 1, "class": "open", "remaining_s": 4.0, "step": 1, "of": 1})
    p = view.snapshot()[1]["prompt"]  # an old daemon's prompt: no ramp fields
    assert p["ramp"] is False and p["instruction"] is None
    view.on_message("event", {"v": 1, "kind": "calibration_done", "t_pub": 2.0, "model": 1,
                              "purpose": "ramp", "speed": {"classes": ["open"], "low": [1.0],
                                                           "high": [2.0]}})
    snap = view.snapshot()[1]
    assert snap["calibration"]["ramp"] is True and snap["calibration"]["model"] == 1
    assert not any(e["why"] == "prompted" for e in snap.get("history") or [])  # no new map
