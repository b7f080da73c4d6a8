"""State machine: the table is data; legal paths work, illegal ones name both sides."""

from __future__ import annotations

import pytest

from emtl_stream.daemon.state import (EVENTS, IDLE, TRANSITIONS, IllegalTransition, State,
                                      StateMachine)
from emtl_stream.errors import EmtlError


def run(events, initial=State.NO_MODEL):
    fsm = StateMachine(initial)
    return [fsm.transition(e) for e in events], fsm


def test_recalibration_path():
    states, _ = run(["model_loaded", "start_prompting", "start_recording", "start_fitting",
                     "fit_done"])
    assert states == [State.STREAMING, State.PROMPTING, State.RECORDING, State.FITTING,
                      State.STREAMING]


def test_manual_labelling_path():
    states, _ = run(["model_loaded", "start_recording", "start_fitting", "fit_done"])
    assert states[-3:] == [State.RECORDING, State.FITTING, State.STREAMING]


@pytest.mark.parametrize("via", [["start_prompting"], ["start_prompting", "start_recording"],
                                 ["start_recording", "start_fitting"]])
@pytest.mark.parametrize("end", ["cancel", "fail"])
def test_cancel_and_fail_return_to_streaming_with_a_model(via, end):
    states, _ = run(["model_loaded", *via, end])
    assert states[-1] == State.STREAMING


@pytest.mark.parametrize("end", ["cancel", "fail"])
def test_failed_first_training_returns_to_no_model(end):
    states, fsm = run(["start_prompting", "start_recording", "start_fitting", end])
    assert states[-1] == State.NO_MODEL and not fsm.has_model


def test_training_from_no_model_succeeds():
    states, fsm = run(["start_prompting", "start_recording", "start_fitting", "fit_done"])
    assert states[-1] == State.STREAMING and fsm.has_model
    assert fsm.transition("start_prompting") == State.PROMPTING
    assert fsm.transition("fail") == State.STREAMING  # now a model exists


def test_illegal_transition_names_event_and_state_and_keeps_state():
    fsm = StateMachine()
    fsm.transition("model_loaded")
    fsm.transition("start_prompting")
    with pytest.raises(IllegalTransition) as info:
        fsm.transition("start_prompting")
    msg = str(info.value)
    assert "'start_prompting'" in msg and "'prompting'" in msg and "cancel" in msg
    assert fsm.state == State.PROMPTING
    assert isinstance(info.value, EmtlError)
    with pytest.raises(IllegalTransition, match="unknown state-machine event 'explode'"):
        fsm.transition("explode")


def test_every_table_entry_against_an_independent_enumeration():
    # enumerate all (state, event) pairs; a transition is legal exactly when the table
    # lists it, and the result is the listed target (IDLE resolved by the model flag)
    for has_model in (False, True):
        for state in State:
            for event in sorted(EVENTS):
                fsm = StateMachine(state)
                fsm._has_model = has_model
                target = TRANSITIONS[state].get(event)
                if target is None:
                    with pytest.raises(IllegalTransition):
                        fsm.transition(event)
                    assert fsm.state == state
                else:
                    expected = (State.STREAMING if has_model else State.NO_MODEL) \
                        if target == IDLE else target
                    assert fsm.transition(event) == expected, (state, event)


def test_stop_from_everywhere_and_stopped_is_final():
    for state in State:
        if state == State.STOPPED:
            continue
        fsm = StateMachine(state)
        assert fsm.transition("stop") == State.STOPPED
        assert fsm.allowed() == []
        with pytest.raises(IllegalTransition, match="final state"):
            fsm.transition("model_loaded")


def test_on_change_and_history_and_force():
    seen = []
    fsm = StateMachine(on_change=lambda old, new, ev: seen.append((old, new, ev)))
    fsm.transition("model_loaded")
    fsm.transition("model_loaded")  # self-loop: no change callback
    fsm.force(State.STOPPED, "shutdown")
    assert seen == [(State.NO_MODEL, State.STREAMING, "model_loaded"),
                    (State.STREAMING, State.STOPPED, "shutdown")]
    assert [h[3] for h in fsm.history] == ["model_loaded", "model_loaded", "shutdown"]


def test_state_values_and_properties():
    assert [s.value for s in State] == ["no_model", "streaming", "prompting", "recording",
                                        "fitting", "stopped"]
    assert State.FITTING.calibrating and not State.STREAMING.calibrating
    assert str(State.PROMPTING) == "prompting" and State("fitting") is State.FITTING
    assert StateMachine().can("model_loaded") and not StateMachine().can("fit_done")
