"""The daemon's states and the allowed transitions, as data.

::

    NO_MODEL --model_loaded--> STREAMING --start_prompting--> PROMPTING
        |                        |   ^                          | start_recording
        | start_prompting        |   | fit_done  pause_recording ^ v
        | (training session)     |   +------ FITTING <--start_fitting-- RECORDING
        +--> PROMPTING           +--start_recording (manual label)-->  RECORDING

``cancel`` and ``fail`` from PROMPTING, RECORDING or FITTING go back to the idle
state: STREAMING when a source model is loaded, NO_MODEL otherwise (a failed
first training session). ``stop`` goes to STOPPED from anywhere; STOPPED is final.
Whether an LSL stream is connected is not a state here (it is reported by
``status`` and by ``stream_lost``/``stream_restored`` events): a stream can drop
and come back in any state without changing what the daemon is doing.
"""

from __future__ import annotations

import collections
import enum
import threading
import time
from typing import Callable

from ..errors import EmtlError
from ..logs import logger


class State(str, enum.Enum):
    """Daemon states; ``.value`` is the name used in ``status`` and ``state`` events."""

    NO_MODEL = "no_model"
    STREAMING = "streaming"
    PROMPTING = "prompting"
    RECORDING = "recording"
    FITTING = "fitting"
    STOPPED = "stopped"

    @property
    def calibrating(self) -> bool:
        """True while a calibration (prompting, recording or fitting) is in progress."""
        return self in (State.PROMPTING, State.RECORDING, State.FITTING)

    def __str__(self) -> str:
        return self.value


#: Placeholder target: STREAMING if a model is loaded, else NO_MODEL.
IDLE = "idle"

#: (state, event) -> target state (or IDLE). Everything not listed is illegal.
TRANSITIONS: dict[State, dict[str, State | str]] = {
    State.NO_MODEL: {
        "model_loaded": State.STREAMING,
        "start_prompting": State.PROMPTING,  # prompted training of a first source model
        "stop": State.STOPPED,
    },
    State.STREAMING: {
        "model_loaded": State.STREAMING,  # a new source model replaces the old one
        "start_prompting": State.PROMPTING,
        "start_recording": State.RECORDING,  # manual labelling (label command)
        "stop": State.STOPPED,
    },
    State.PROMPTING: {
        "start_recording": State.RECORDING,  # the first class prompt began
        "start_fitting": State.FITTING,
        "cancel": IDLE,
        "fail": IDLE,
        "stop": State.STOPPED,
    },
    State.RECORDING: {
        "pause_recording": State.PROMPTING,  # a lead-in or rest prompt: nothing recorded
        "start_fitting": State.FITTING,
        "cancel": IDLE,
        "fail": IDLE,
        "stop": State.STOPPED,
    },
    State.FITTING: {
        "model_loaded": State.FITTING,  # a trained source model is installed before fit_done
        "fit_done": State.STREAMING,
        "cancel": IDLE,
        "fail": IDLE,
        "stop": State.STOPPED,
    },
    State.STOPPED: {},
}

EVENTS = frozenset(e for table in TRANSITIONS.values() for e in table)


class IllegalTransition(EmtlError, RuntimeError):
    """An event that the current state does not allow."""


class StateMachine:
    """Current state plus the transition table; thread-safe.

    Parameters
    ----------
    initial : State
    on_change : callable, optional
        ``on_change(old, new, event)`` after every transition that changes the state
        (e.g. to publish a ``state`` event). Called outside the lock.
    """

    def __init__(self, initial: State = State.NO_MODEL,
                 on_change: Callable[[State, State, str], None] | None = None):
        self._state = State(initial)
        self._has_model = self._state not in (State.NO_MODEL,)
        self._lock = threading.Lock()
        self.on_change = on_change
        #: recent transitions as (monotonic time, old, new, event)
        self.history: collections.deque = collections.deque(maxlen=200)

    @property
    def state(self) -> State:
        """The current state."""
        return self._state

    @property
    def has_model(self) -> bool:
        """True once a source model was loaded (decides where ``cancel``/``fail`` go)."""
        return self._has_model

    def allowed(self, state: State | None = None) -> list[str]:
        """Events allowed in ``state`` (default: the current one), sorted.

        Parameters
        ----------
        state : State, optional
            The state to ask about.
        """
        return sorted(TRANSITIONS[self._state if state is None else State(state)])

    def can(self, event: str) -> bool:
        """Whether ``event`` is allowed now.

        Parameters
        ----------
        event : str
            An event of the transition table.
        """
        return event in TRANSITIONS[self._state]

    def _resolve(self, target: State | str, event: str) -> State:
        if target == IDLE:
            return State.STREAMING if self._has_model else State.NO_MODEL
        return target  # type: ignore[return-value]

    def transition(self, event: str) -> State:
        """Apply ``event``; return the new state.

        Parameters
        ----------
        event : str
            An event of the transition table.

        Raises
        ------
        IllegalTransition
            The event is unknown or not allowed in the current state; the message
            names both and lists what is allowed.
        """
        with self._lock:
            old = self._state
            table = TRANSITIONS[old]
            if event not in table:
                if event not in EVENTS:
                    raise IllegalTransition(f"unknown state-machine event {event!r}; events: "
                                            f"{', '.join(sorted(EVENTS))}.")
                raise IllegalTransition(
                    f"cannot {event!r} in state {old.value!r}; allowed there: "
                    f"{', '.join(sorted(table)) or 'nothing (final state)'}.")
            if event == "model_loaded":
                self._has_model = True
            new = self._resolve(table[event], event)
            if new == State.STREAMING:
                self._has_model = True
            self._state = new
            self.history.append((time.monotonic(), old, new, event))
        logger.debug("state %s --%s--> %s", old.value, event, new.value)
        if new != old and self.on_change is not None:
            self.on_change(old, new, event)
        return new

    def force(self, state: State, reason: str = "forced") -> State:
        """Set the state without the table (shutdown paths, recovery); logged.

        Parameters
        ----------
        state : State
            The new state.
        reason : str
            Why, for the log.
        """
        with self._lock:
            old, self._state = self._state, State(state)
            if self._state == State.STREAMING:
                self._has_model = True
            self.history.append((time.monotonic(), old, self._state, reason))
        logger.info("state %s forced to %s (%s)", old.value, self._state.value, reason)
        if self._state != old and self.on_change is not None:
            self.on_change(old, self._state, reason)
        return self._state
