"""A calibration session: prompted, manual or unlabelled.

A plain object driven by explicit calls from the loop thread (no sockets, no
threads): :meth:`Session.add_window` with every window while the session runs,
:meth:`Session.tick` with the LSL clock to learn the current prompt and whether
the session is over. The one window-labelling rule lives in
:meth:`Session.label_for`.

Kinds (``purpose``):

``recalibrate`` / ``train``
    Prompted: a :class:`~.calibration.PromptSchedule` started at LSL time ``t0``.
    A window is labelled with a class only if it lies entirely inside the recorded
    part of one class step. The session is over as soon as the last window that
    can still be labelled has arrived (given the window step, the next one would
    end past the schedule's end) or samples up to the schedule's end were pulled,
    without waiting for another window.
``ramp``
    Prompted like ``recalibrate``, but every class prompt asks for a slow ramp from
    rest to a strong contraction (:data:`RAMP_INSTRUCTION`; the prompt carries
    ``"ramp": true``). Its windows re-derive the proportional-speed calibration
    through the live map; the map itself is not refitted.
``manual``
    Labels from ``label`` commands (or a Markers stream): a window belongs to the
    current label if it starts at or after the moment the label was given.
``unlabelled``
    Every finite window during ``seconds``; no prompts, no labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import CalibrationError
# Per-field bounds are the wire protocol's (one documented table); this module adds the
# bound on a whole session, which no single field shows.
from ..io.protocol import MAX_REPETITIONS, MAX_SECONDS_PER_CLASS
from .calibration import BurstCollector, PromptSchedule, check_burst

#: Prompts are re-published at most this often (Hz) while a step lasts; a new
#: step is published at once.
PROMPT_MAX_HZ = 10.0
#: Longest prompted session accepted (s): longer requests are refused before anything starts.
MAX_SESSION_S = 600.0
#: Longest unlabelled collection (s).
MAX_UNLABELLED_S = 30.0
#: A prompted burst closes once the stream has delivered samples up to the schedule's
#: end; if it stalls, at the latest this long after the end on the LSL clock (s).
BURST_CLOSE_FALLBACK_S = 0.5
#: What a ramp session's class prompt asks for (``{cls}``: the class name); the prompt's
#: ``instruction`` field and the patient page show it.
RAMP_INSTRUCTION = ("Slowly ramp up {cls}: start relaxed and contract a little harder "
                    "every moment, reaching a strong contraction as the step ends")

#: The next window counts as ending past the schedule only if it ends more than this
#: after the end (s): timestamps jitter, and a window that might still be labelled is
#: waited for.
CLOSE_MARGIN_S = 0.002


def check_session_request(classes, seconds_per_class, repetitions, lead_in_s: float,
                          rest_s: float) -> PromptSchedule:
    """Validate a prompted request and build its schedule, or raise ``CalibrationError``.

    Nothing is allocated in proportion to the requested numbers before they are
    checked against :data:`MAX_SECONDS_PER_CLASS`, :data:`MAX_REPETITIONS` and
    :data:`MAX_SESSION_S`.

    Parameters
    ----------
    classes : list of str
        Classes to prompt, in order.
    seconds_per_class : float
        Recorded seconds per class step.
    repetitions : int
        Passes over the classes.
    lead_in_s : float
        Seconds shown before the recording of each step starts.
    rest_s : float
        Rest between class steps.
    """
    try:
        seconds = float(seconds_per_class)
        reps_f = float(repetitions)
    except (TypeError, ValueError, OverflowError):
        raise CalibrationError("seconds_per_class and repetitions must be numbers") from None
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_SECONDS_PER_CLASS):
        raise CalibrationError(f"seconds_per_class must be in (0, {MAX_SECONDS_PER_CLASS:g}] s, "
                               f"got {seconds_per_class!r}")
    if not (math.isfinite(reps_f) and reps_f == int(reps_f) and 1 <= reps_f <= MAX_REPETITIONS):
        raise CalibrationError(f"repetitions must be an integer in [1, {MAX_REPETITIONS}], "
                               f"got {repetitions!r}")
    reps = int(reps_f)
    n = len(classes)
    estimate = reps * n * (seconds + lead_in_s + rest_s)
    if estimate > MAX_SESSION_S:
        raise CalibrationError(f"the session would last about {estimate:.0f} s, longer than "
                               f"{MAX_SESSION_S:g} s; ask for fewer seconds or repetitions")
    return PromptSchedule(list(classes), seconds, reps, lead_in_s, rest_s)


@dataclass(frozen=True)
class Prompt:
    """What to show now: one prompt message's fields."""

    cls: str
    remaining_s: float
    step: int
    of: int
    new_step: bool
    ramp: bool = False

    def extra(self) -> dict:
        """Return the optional ``prompt`` fields: a ramp step says so and what to do."""
        if not self.ramp:
            return {}
        return {"ramp": True, "instruction": RAMP_INSTRUCTION.format(cls=self.cls)}


class Session:
    """One calibration session.

    Parameters
    ----------
    purpose : str
        ``"recalibrate"``, ``"train"``, ``"ramp"``, ``"manual"`` or ``"unlabelled"``.
    t0 : float
        LSL time the session started.
    window_s : float
        Window length (s).
    schedule : PromptSchedule, optional
        Required for the prompted purposes.
    seconds : float
        Collection time of an unlabelled session.
    max_windows : int
        Cap on collected windows (a forgotten manual label must not eat memory).
    step_s : float, optional
        Window step (s). With it a prompted session is over as soon as a window
        arrived whose successor would end past the schedule's end.
    """

    PROMPTED = ("recalibrate", "train", "ramp")

    def __init__(self, purpose: str, t0: float, window_s: float, *,
                 schedule: PromptSchedule | None = None, seconds: float = 0.0,
                 max_windows: int = 100_000, step_s: float | None = None):
        if purpose not in (*self.PROMPTED, "manual", "unlabelled"):
            raise ValueError(f"unknown session purpose {purpose!r}")
        if purpose in self.PROMPTED and schedule is None:
            raise ValueError(f"a {purpose} session needs a schedule")
        self.purpose = purpose
        self.t0 = float(t0)
        self.window_s = float(window_s)
        self.schedule = schedule
        self.seconds = float(seconds)
        self.collector = BurstCollector(max_windows=max_windows)
        self._unlabelled: list[np.ndarray] = []
        self.max_windows = int(max_windows)
        self.manual_label: str | None = None
        self.label_since = self.t0
        self.step_index = -1
        self._last_prompt_t = -math.inf
        self.step_s = None if step_s is None else float(step_s)
        self.last_window_t = -math.inf  # end of the newest window offered

    # ----------------------------------------------------------------- labelling
    @property
    def prompted(self) -> bool:
        """True for a prompted (scheduled) session."""
        return self.purpose in self.PROMPTED

    @property
    def duration_s(self) -> float:
        """Planned length (s); ``inf`` for a manual session."""
        if self.schedule is not None:
            return self.schedule.duration_s
        return self.seconds if self.purpose == "unlabelled" else math.inf

    def set_label(self, label: str | None, since: float) -> None:
        """Manual session: windows starting at or after ``since`` get ``label`` (None: none).

        Parameters
        ----------
        label : str or None
            A class, or ``None`` for no label.
        since : float
            LSL time of the first labelled window start.
        """
        self.manual_label = label
        self.label_since = float(since)

    def label_for(self, t_last: float) -> str | None:
        """Apply the one window-labelling rule: the class of the window ending at ``t_last``.

        Parameters
        ----------
        t_last : float
            LSL time of the window's last sample.
        """
        if self.purpose == "manual":
            if self.manual_label is None or t_last - self.window_s < self.label_since:
                return None
            return self.manual_label
        if self.prompted:
            return self.schedule.label_for_window(t_last - self.t0, self.window_s)
        return None

    def add_window(self, x, t_last: float, raw=None) -> bool:
        """Offer one window; returns True if it was kept.

        Parameters
        ----------
        x : ndarray of shape (n_features,)
            The window's feature vector.
        t_last : float
            LSL time of the window's last sample.
        raw : ndarray of shape (window, n_channels), optional
            The raw samples, kept with the burst when given.
        """
        self.last_window_t = max(self.last_window_t, float(t_last))
        if self.purpose == "unlabelled":
            if t_last < self.t0 or t_last > self.t0 + self.seconds:
                return False
            if len(self._unlabelled) >= self.max_windows or not np.all(np.isfinite(x)):
                return False
            self._unlabelled.append(np.array(x, dtype=np.float64).ravel())
            return True
        label = self.label_for(t_last)
        if label is None:
            return False
        return self.collector.add(x, label, t_last, raw=raw)

    @property
    def n_windows(self) -> int:
        """Windows kept so far."""
        return len(self._unlabelled) if self.purpose == "unlabelled" else self.collector.n_windows

    def unlabelled_windows(self) -> np.ndarray:
        """Windows of an unlabelled session, shape (N, n)."""
        return np.vstack(self._unlabelled) if self._unlabelled else np.zeros((0, 0))

    # ----------------------------------------------------------------- time
    def tick(self, now: float, data_until: float = -math.inf) -> tuple[Prompt | None, bool]:
        """Where the session is at LSL time ``now``.

        Parameters
        ----------
        now : float
            LSL local clock.
        data_until : float
            Timestamp of the newest sample pulled so far.

        Returns
        -------
        prompt : Prompt or None
            A prompt to publish now (a new step, or at most :data:`PROMPT_MAX_HZ`
            times a second while a step lasts); None otherwise.
        done : bool
            The session's collection is over. Prompted: every burst window ends by the
            schedule's end, so it is over as soon as the last window that can end
            by then has arrived (with ``step_s``: the next window would end more than
            :data:`CLOSE_MARGIN_S` past the end), or samples up to that end were
            pulled, or :data:`BURST_CLOSE_FALLBACK_S` after it on the LSL clock.
            Unlabelled: ``seconds`` passed.
        """
        elapsed = now - self.t0
        if self.purpose == "unlabelled":
            return None, elapsed >= self.seconds
        if not self.prompted:
            return None, False
        end = self.t0 + self.schedule.duration_s
        if data_until >= end or now >= end + BURST_CLOSE_FALLBACK_S:
            return None, True
        if self.step_s is not None and self.last_window_t + self.step_s > end + CLOSE_MARGIN_S:
            return None, True  # no later window can end inside the schedule
        step = self.schedule.at(elapsed)
        if step is None:
            return None, False
        new = step.index != self.step_index
        if not new and now - self._last_prompt_t < 1.0 / PROMPT_MAX_HZ:
            return None, False
        self.step_index = step.index
        self._last_prompt_t = now
        return Prompt(step.label, max(0.0, step.start_s + step.duration_s - elapsed),
                      step.index + 1, len(self.schedule.steps), new,
                      ramp=self.purpose == "ramp" and step.kind == "class"), False

    def recording_at(self, now: float) -> bool:
        """Return True while windows are being recorded.

        Manual and unlabelled sessions: always. Prompted: inside the recorded part
        of a class step, not in a lead-in or a rest.

        Parameters
        ----------
        now : float
            Seconds on the session's clock.
        """
        if not self.prompted:
            return True
        step = self.schedule.at(now - self.t0)
        return step is not None and step.kind == "class" and now - self.t0 >= step.record_start_s

    # ----------------------------------------------------------------- acceptance
    def check(self, classes, min_windows_per_class: int):
        """Burst acceptance: ``(X, labels)`` or ``CalibrationError`` naming what is missing.

        Parameters
        ----------
        classes : list of str or None
            The source model's classes (recalibration); ``None`` for training.
        min_windows_per_class : int
        """
        X, labels, _ = self.collector.arrays()
        if self.purpose == "train":
            check_burst(X, labels, sorted(set(labels)), min_windows_per_class, require_all=True)
        else:
            check_burst(X, labels, classes, min_windows_per_class)
        return X, labels
