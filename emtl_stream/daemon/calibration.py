"""Calibration protocol: the prompt schedule, label bookkeeping and burst acceptance.

A prompted burst is a sequence of steps. Each class step shows the class for
``lead_in_s + seconds_per_class``; the first ``lead_in_s`` are not recorded (the user
is still moving into the gesture). Between two class steps a ``rest`` step of
``rest_s`` is shown and not recorded. The sequence of classes is repeated
``repetitions`` times. Times are seconds relative to the start of the schedule.
A class may itself be called ``"rest"`` (the synthetic armband's is): resting during
a rest prompt is then the right thing anyway, and only the class step is recorded.

A window (of length ``window_s``, ending at ``t``) is labelled with a class only if
it lies entirely inside the recorded part of that class's step, so no window mixes
the lead-in transition or the following rest into a class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ..errors import BurstTooShort, CalibrationError, DegenerateBurst

_EPS = 1e-9  # seconds; float round-off in sums of step durations


@dataclass(frozen=True)
class Step:
    """One prompt.

    Attributes
    ----------
    index : int
        0-based position in the schedule.
    kind : {"class", "rest"}
    label : str
        The class name, or ``"rest"``.
    start_s, duration_s : float
        When the prompt is shown, relative to the schedule start.
    lead_in_s : float
        Unrecorded start of a class step (0 for rest).
    repetition : int
        0-based repetition of the class sequence.
    of : int
        Number of steps in the schedule.
    """

    index: int
    kind: str
    label: str
    start_s: float
    duration_s: float
    lead_in_s: float
    repetition: int
    of: int

    @property
    def step(self) -> int:
        """1-based step number (the ``step`` field of ``prompt`` messages)."""
        return self.index + 1

    @property
    def end_s(self) -> float:
        """End of the prompt."""
        return self.start_s + self.duration_s

    @property
    def record_start_s(self) -> float:
        """Start of the recorded part (after the lead-in)."""
        return self.start_s + self.lead_in_s

    def remaining_s(self, t: float) -> float:
        """Seconds of this prompt left at time ``t``.

        Parameters
        ----------
        t : float
            Seconds since the start of the schedule.
        """
        return max(0.0, self.end_s - t)


class PromptSchedule:
    """The steps of a prompted calibration.

    Parameters
    ----------
    classes : sequence of str
        Classes to prompt, in order; no duplicates.
    seconds_per_class : float
        Recorded seconds per class and repetition (> 0).
    repetitions : int
        How often the class sequence is prompted (>= 1).
    lead_in_s : float
        Unrecorded seconds at the start of each class prompt (>= 0).
    rest_s : float
        Rest prompt between two class prompts (>= 0; 0 = no rest steps).

    Attributes
    ----------
    steps : list of Step
    duration_s : float
    """

    def __init__(self, classes: Sequence[str], seconds_per_class: float, repetitions: int = 1,
                 lead_in_s: float = 0.5, rest_s: float = 1.0):
        classes = [classes] if isinstance(classes, str) else list(classes)
        if not classes or not all(isinstance(c, str) and c for c in classes):
            raise ValueError(f"classes must be a non-empty list of class names, got {classes!r}.")
        dup = sorted({c for c in classes if classes.count(c) > 1})
        if dup:
            raise ValueError(f"classes lists {dup} more than once; use repetitions instead.")
        for name, value, strict in (("seconds_per_class", seconds_per_class, True),
                                    ("lead_in_s", lead_in_s, False), ("rest_s", rest_s, False)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value) or (value <= 0 if strict else value < 0):
                raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} 0, "
                                 f"got {value!r}.")
        if isinstance(repetitions, bool) or not isinstance(repetitions, int) or repetitions < 1:
            raise ValueError(f"repetitions must be an integer >= 1, got {repetitions!r}.")
        self.classes = classes
        self.seconds_per_class = float(seconds_per_class)
        self.repetitions = repetitions
        self.lead_in_s = float(lead_in_s)
        self.rest_s = float(rest_s)

        plan: list[tuple[str, str, float, float, int]] = []  # kind, label, duration, lead, rep
        for rep in range(repetitions):
            for c in classes:
                if plan and self.rest_s > 0:
                    plan.append(("rest", "rest", self.rest_s, 0.0, rep))
                plan.append(("class", c, self.lead_in_s + self.seconds_per_class,
                             self.lead_in_s, rep))
        steps, t = [], 0.0
        for i, (kind, label, dur, lead, rep) in enumerate(plan):
            steps.append(Step(i, kind, label, t, dur, lead, rep, len(plan)))
            t += dur
        self.steps: list[Step] = steps
        self.duration_s = t

    def __len__(self) -> int:
        return len(self.steps)

    def at(self, t: float) -> Step | None:
        """Return the step shown at time ``t`` (seconds from the start); ``None`` outside.

        Parameters
        ----------
        t : float
            Seconds since the start of the schedule.
        """
        if t < 0 or t >= self.duration_s:
            return None
        # Few steps (tens): a linear scan is clearer than bisect and fast enough at 20 Hz.
        for step in self.steps:
            if t < step.end_s:
                return step
        return None  # pragma: no cover - t < duration_s guarantees a hit

    def label_for_window(self, t: float, window_s: float = 0.0) -> str | None:
        """Class of the window ``[t - window_s, t]``, or ``None`` if it is not recorded.

        A window is recorded when it lies entirely inside the recorded part (after the
        lead-in) of one class step.

        Parameters
        ----------
        t : float
            End of the window, in seconds since the start of the schedule.
        window_s : float
            Window length in seconds.
        """
        start = t - window_s
        for step in self.steps:
            if step.kind != "class":
                continue
            if start >= step.record_start_s - _EPS and t <= step.end_s + _EPS:
                return step.label
        return None

    def expected_windows(self, window_s: float, step_s: float) -> int:
        """Windows one class yields per repetition (0 if the window is longer than the burst).

        Parameters
        ----------
        window_s, step_s : float
            Window length and hop in seconds.
        """
        if window_s > self.seconds_per_class + _EPS:
            return 0
        return int(math.floor((self.seconds_per_class - window_s) / step_s + _EPS)) + 1

    def __repr__(self) -> str:
        return (f"PromptSchedule({self.classes!r}, seconds_per_class={self.seconds_per_class}, "
                f"repetitions={self.repetitions}, lead_in_s={self.lead_in_s}, "
                f"rest_s={self.rest_s}; {len(self.steps)} steps, {self.duration_s:.3g} s)")


class BurstCollector:
    """Accumulates labelled windows of one calibration burst.

    Parameters
    ----------
    schedule : PromptSchedule, optional
        With a schedule (and ``t0``, the LSL time the schedule started), windows added
        without a label get it from the schedule; windows in a lead-in, a rest or
        outside the schedule are discarded.
    t0 : float, optional
        Schedule start on the windows' clock.
    window_s : float
        Window length, for the "entirely inside" rule of the schedule.
    max_windows : int
        Refuse to grow beyond this (a forgotten manual ``label`` must not eat memory).
    """

    def __init__(self, schedule: PromptSchedule | None = None, t0: float | None = None,
                 window_s: float = 0.0, max_windows: int = 100_000):
        if schedule is not None and t0 is None:
            raise ValueError("t0 (schedule start time) is required with a schedule.")
        self.schedule = schedule
        self.t0 = t0
        self.window_s = float(window_s)
        self.max_windows = int(max_windows)
        self._x: list[np.ndarray] = []
        self._labels: list[str] = []
        self._t: list[float] = []
        self._raw: list[np.ndarray] = []
        self.n_discarded = 0

    @property
    def n_windows(self) -> int:
        """Accepted windows so far."""
        return len(self._x)

    def add(self, x, label: str | None = None, t: float | None = None, raw=None) -> bool:
        """Offer one window; returns True if it was kept.

        Parameters
        ----------
        x : array-like of shape (n_features,)
        label : str, optional
            Class of the window; ``None`` lets the schedule decide (or discards it).
        t : float, optional
            Timestamp of the window's last sample (required with a schedule).
        raw : array-like of shape (n_samples, n_channels), optional
            The raw window, kept for the burst file when given for every window.
        """
        if label is None and self.schedule is not None:
            if t is None:
                raise ValueError("t is required to label windows from the schedule.")
            label = self.schedule.label_for_window(float(t) - self.t0, self.window_s)
        if label is None:
            self.n_discarded += 1
            return False
        x = np.array(x, dtype=np.float64).ravel()
        if self._x and x.shape != self._x[0].shape:
            raise ValueError(f"window has {x.size} features, earlier windows have "
                             f"{self._x[0].size}.")
        if len(self._x) >= self.max_windows:
            raise CalibrationError(f"burst reached max_windows={self.max_windows}; fit or cancel "
                                   "the calibration (was a manual label left on?).")
        if raw is not None:
            if len(self._raw) != len(self._x):
                raise ValueError("give raw for every window or for none.")
            self._raw.append(np.array(raw, dtype=np.float64))
        elif self._raw:
            raise ValueError("give raw for every window or for none.")
        self._x.append(x)
        self._labels.append(str(label))
        self._t.append(float("nan") if t is None else float(t))
        return True

    def counts(self) -> dict[str, int]:
        """Count the accepted windows per class, in first-seen order."""
        out: dict[str, int] = {}
        for lab in self._labels:
            out[lab] = out.get(lab, 0) + 1
        return out

    def arrays(self) -> tuple[np.ndarray, list[str], np.ndarray]:
        """``(X, labels, timestamps)``: X of shape (n_windows, n_features) (0 x 0 if empty)."""
        X = np.vstack(self._x) if self._x else np.zeros((0, 0))
        return X, list(self._labels), np.asarray(self._t, dtype=np.float64)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for :meth:`~emtl_stream.io.store.StateStore.save_burst`."""
        X, labels, t = self.arrays()
        out = {"X": X, "labels": np.asarray(labels, dtype=str), "timestamps": t}
        if self._raw:
            out["raw"] = np.stack(self._raw)
        return out


def check_burst(X, labels: Sequence[str], classes: Iterable[str] | None = None,
                min_windows_per_class: int = 2, *, require_all: bool = False,
                max_constant_fraction: float = 0.5) -> dict:
    """Accept or reject a calibration burst before fitting.

    Parameters
    ----------
    X : array-like of shape (n_windows, n_features)
    labels : sequence of str of shape (n_windows,)
    classes : iterable of str, optional
        Known classes: a label outside them is an error. ``None``: any label.
    min_windows_per_class : int
        Every class present (with ``require_all``: every class in ``classes``) needs
        at least this many windows.
    require_all : bool
        Every class in ``classes`` must be present (source-model training); otherwise a
        subset is fine (recalibration may prompt only some classes).
    max_constant_fraction : float
        More constant features than this fraction means dead or disconnected
        electrodes rather than a quiet gesture.

    Returns
    -------
    dict
        ``n_windows``, ``counts`` (per class), ``rank`` (numerical rank of the centred
        burst), ``constant_features`` (indices).

    Raises
    ------
    BurstTooShort
        No windows, or a class with fewer than ``min_windows_per_class`` (named with
        the counts).
    DegenerateBurst
        NaN/inf values, (mostly) constant features, or classes with identical features.
    CalibrationError
        Labels outside ``classes`` or shapes that do not match.
    """
    X = np.asarray(X, dtype=np.float64)
    labels = [str(lab) for lab in labels]
    if X.ndim != 2:
        raise CalibrationError(f"burst features must be 2-D (n_windows, n_features), got shape "
                               f"{X.shape}.")
    if len(labels) != X.shape[0]:
        raise CalibrationError(f"burst has {X.shape[0]} windows but {len(labels)} labels.")
    known = None if classes is None else [str(c) for c in classes]
    counts: dict[str, int] = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    shown = ", ".join(f"{c}={n}" for c, n in counts.items()) or "none"
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise BurstTooShort("the calibration burst has no labelled windows; was the stream "
                            "connected and were the prompts followed?")
    if known is not None:
        unknown = [c for c in counts if c not in known]
        if unknown:
            raise CalibrationError(f"burst labels {unknown} are not classes of the model "
                                   f"({known}).")
    needed = list(known) if (require_all and known is not None) else list(counts)
    for c in needed:
        n = counts.get(c, 0)
        if n < min_windows_per_class:
            raise BurstTooShort(
                f"class {c!r} has {n} window(s) in the burst, needs at least "
                f"{min_windows_per_class} (counts: {shown}); record longer "
                "(seconds_per_class) or lower [calibration] min_windows_per_class.")
    finite = np.isfinite(X).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise DegenerateBurst(f"{bad.size} of {X.shape[0]} burst windows contain NaN or inf "
                              f"(first: window {int(bad[0])}); check the amplifier and record "
                              "again.")
    spread = X.max(axis=0) - X.min(axis=0)
    scale = np.maximum(np.abs(X).max(axis=0), 1.0)
    constant = np.flatnonzero(spread <= 1e-12 * scale)
    if constant.size == X.shape[1]:
        raise DegenerateBurst(f"every feature is constant over the {X.shape[0]} burst windows; "
                              "is the stream delivering real EMG?")
    if constant.size > max_constant_fraction * X.shape[1]:
        raise DegenerateBurst(
            f"{constant.size} of {X.shape[1]} features are constant over the burst (indices "
            f"{constant[:10].tolist()}{'...' if constant.size > 10 else ''}); dead or "
            "disconnected electrodes?")
    centred = X - X.mean(axis=0)
    sv = np.linalg.svd(centred, compute_uv=False)
    tol = sv.max() * max(X.shape) * np.finfo(np.float64).eps if sv.size else 0.0
    rank = int((sv > tol).sum())
    if len(counts) >= 2:
        lab_arr = np.asarray(labels)
        means = np.vstack([X[lab_arr == c].mean(axis=0) for c in counts])
        between = np.abs(means - means.mean(axis=0)).max()
        if between <= 1e-12 * max(1.0, float(np.abs(X).max())):
            raise DegenerateBurst(f"all classes of the burst ({shown}) have identical features; "
                                  "were the prompts followed?")
    return {"n_windows": int(X.shape[0]), "counts": counts, "rank": rank,
            "constant_features": constant.tolist()}
