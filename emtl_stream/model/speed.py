"""Proportional speed: how hard the user contracts, per class, from the mapped features.

A class label says *which* movement; :class:`SpeedCalibration` says *how strongly*.
For every window the daemon already has the mapped feature vector ``z = H x + b``
that the classifier reads, and the predicted class ``k``. The speed is

    a(z)     = amplitude measure of z (default: summed MAV over the channels),
    speed(z) = clip((a(z) - lo[k]) / (hi[k] - lo[k]), 0, 1),      speed = 0 for rest,

with ``lo[k]`` and ``hi[k]`` the ``low_percentile`` and ``high_percentile`` (default
10 % and 70 %, as LibEMG's ``add_velocity``) of ``a`` over class ``k``'s training
windows in the source space. Because ``a`` is read from ``z``, an electrode shift that
the transfer map undoes leaves the speed unchanged exactly as it leaves the class
decision unchanged.

Measures (``measure``), over the per-channel features of ``z`` named by the
:class:`~emtl_stream.pipeline.features.FeatureExtractor` (``"ch3_mav"``, ...):

* ``"mav"``: sum over channels of the ``mav`` feature;
* ``"rms"``: sum over channels of the ``rms`` feature;
* ``"log_mav"``: ``log(max(sum MAV, eps))``, a log-compressed summed MAV (more
  resolution at weak contractions).

A window whose ``z`` holds NaN/inf, whose predicted class is ``-1`` (non-finite
input), or with a silent channel (amplitude feature below ``silent_fraction`` of that
channel's median training amplitude) gets speed 0 and a reason string
(:data:`BAD_NONFINITE`, :data:`BAD_SILENT`) the daemon turns into a ``bad_input``
event; a speed is never NaN.

:class:`SpeedSmoother` smooths the speed stream with at most one window of delay and
applies a deadband. Everything here is plain numpy, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._checks import check_type, ensure_float

#: Amplitude measures and the per-channel feature each one reads.
MEASURES = {"mav": "mav", "rms": "rms", "log_mav": "mav"}

#: Class names taken as the resting class when ``rest_class`` is not given (lower case).
REST_NAMES = ("rest", "no_motion", "no motion", "nomotion", "none")

#: Reason strings of a window whose speed could not be computed.
BAD_NONFINITE = "nonfinite"
BAD_SILENT = "silent_channel"

#: Floor of ``log_mav`` and of a degenerate calibration span, in feature units.
EPS = 1e-12

SPEED_FORMAT = "emtl_stream.speed/1"


def _measure_columns(feature_names, n_channels: int, measure: str) -> np.ndarray:
    """Column of the measure's per-channel feature for each channel, shape (n_channels,)."""
    if measure not in MEASURES:
        raise ValueError(f"speed measure must be one of {sorted(MEASURES)}, got {measure!r}.")
    feat = MEASURES[measure]
    names = [str(n) for n in feature_names]
    cols = []
    for c in range(int(n_channels)):
        key = f"ch{c}_{feat}"
        if key not in names:
            raise ValueError(f"speed measure {measure!r} needs the per-channel feature "
                             f"{feat!r}, but the model's features have no {key!r}; add "
                             f"{feat!r} to [features] names or choose another measure.")
        cols.append(names.index(key))
    return np.asarray(cols, dtype=np.int64)


def _amplitude(Z: np.ndarray, cols: np.ndarray, measure: str) -> np.ndarray:
    """Amplitude measure of each row of ``Z`` (n, n_features) -> (n,)."""
    a = Z[:, cols].sum(axis=1)
    if measure == "log_mav":
        a = np.log(np.maximum(a, EPS))
    return a


def _is_rest(name: str) -> bool:
    return name.strip().lower() in REST_NAMES


@dataclass(frozen=True)
class SpeedCalibration:
    """Per-class speed scaling fitted on the source model's training windows.

    Build with :meth:`fit` (or :meth:`from_dict`); the attributes are plain tuples, so
    a calibration is an immutable value that converts to JSON without loss.

    Attributes
    ----------
    classes : tuple of str
        Class names in the model's prediction order (the ``index`` of :meth:`speed`).
    measure : str
        One of :data:`MEASURES`.
    columns : tuple of int
        Column in ``z`` of the measure's feature of each channel.
    low, high : tuple of float
        Per-class amplitude mapped to speed 0 and 1 (``low < high``; NaN-free).
    rest : tuple of bool
        Classes whose speed is always 0.
    channel_floor : tuple of float
        Per-channel amplitude below which a channel counts as silent.
    low_percentile, high_percentile : float
        The percentiles ``low`` and ``high`` were taken at (provenance).
    """

    classes: tuple
    measure: str
    columns: tuple
    low: tuple
    high: tuple
    rest: tuple
    channel_floor: tuple
    low_percentile: float = 10.0
    high_percentile: float = 70.0

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, Z, y, classes, *, feature_names, n_channels: int, measure: str = "mav",
            low_percentile: float = 10.0, high_percentile: float = 70.0, rest_class=None,
            silent_fraction: float = 1e-3) -> "SpeedCalibration":
        """Fit the per-class percentiles of the amplitude measure.

        Parameters
        ----------
        Z : array-like of shape (n_windows, n_features)
            Training windows in the source feature space (``z`` with ``H = I``).
        y : array-like of shape (n_windows,)
            Class of each window, values of ``classes``.
        classes : sequence
            Class labels in prediction order (names or indices; stored as ``str``).
        feature_names : sequence of str
            ``FeatureExtractor.feature_names`` (``"ch0_mav"``, ...), length n_features.
        n_channels : int
        measure : {"mav", "rms", "log_mav"}
        low_percentile, high_percentile : float
            ``0 <= low < high <= 100``.
        rest_class : label or None
            The resting class (speed always 0). ``None``: a class named like rest
            (:data:`REST_NAMES`, case-insensitive), if any.
        silent_fraction : float
            A channel whose amplitude feature is below this fraction of its median
            training amplitude is silent (disconnected electrode).

        Returns
        -------
        SpeedCalibration

        Raises
        ------
        ValueError
            Missing feature for the measure, bad percentiles, shape mismatch, a
            non-rest class without training windows, or non-finite training features.
        """
        Z = np.asarray(Z, dtype=np.float64)
        names = list(feature_names)
        if Z.ndim != 2 or Z.shape[1] != len(names):
            raise ValueError(f"Z must have shape (n_windows, {len(names)}) to match "
                             f"feature_names, got {Z.shape}.")
        if not np.isfinite(Z).all():
            raise ValueError("Z holds NaN or inf; drop non-finite training windows first.")
        y = np.asarray(y)
        if y.shape != (Z.shape[0],):
            raise ValueError(f"y must have shape ({Z.shape[0]},), got {y.shape}.")
        lo_p = ensure_float(low_percentile, "low_percentile", minimum=0.0, maximum=100.0)
        hi_p = ensure_float(high_percentile, "high_percentile", minimum=0.0, maximum=100.0)
        if not lo_p < hi_p:
            raise ValueError(f"low_percentile ({lo_p}) must be below high_percentile ({hi_p}).")
        frac = ensure_float(silent_fraction, "silent_fraction", minimum=0.0, maximum=1.0)
        cols = _measure_columns(names, n_channels, measure)
        labels = list(classes)
        cls_names = tuple(str(c) for c in labels)
        if rest_class is None:
            rest = tuple(_is_rest(c) for c in cls_names)
        else:
            if str(rest_class) not in cls_names:
                raise ValueError(f"rest_class {rest_class!r} is not one of {list(cls_names)}.")
            rest = tuple(c == str(rest_class) for c in cls_names)
        a = _amplitude(Z, cols, measure)
        low, high = [], []
        for k, lab in enumerate(labels):
            sel = y == lab
            if rest[k]:
                low.append(0.0)
                high.append(1.0)
                continue
            if not sel.any():
                raise ValueError(f"class {cls_names[k]!r} has no training windows; speed "
                                 "cannot be calibrated for it.")
            lo, hi = np.percentile(a[sel], [lo_p, hi_p])
            # A class held at one perfectly constant level has no range: any window
            # above its level is full speed rather than a division by zero.
            span_floor = max(abs(lo) * 1e-9, EPS)
            low.append(float(lo))
            high.append(float(max(hi, lo + span_floor)))
        amp = Z[:, cols]
        floor = frac * np.median(amp, axis=0)
        return cls(classes=cls_names, measure=measure, columns=tuple(int(c) for c in cols),
                   low=tuple(low), high=tuple(high), rest=rest,
                   channel_floor=tuple(float(f) for f in floor),
                   low_percentile=lo_p, high_percentile=hi_p)

    # ------------------------------------------------------------------ use
    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def compute(self, z, index: int, x=None) -> tuple[float, str | None]:
        """Speed of one window and why it is 0 when the input is bad.

        Parameters
        ----------
        z : array-like of shape (n_features,)
            The mapped feature vector the classifier read.
        index : int
            Predicted class index (``-1``: the classifier saw a non-finite row).
        x : array-like of shape (n_features,), optional
            The raw (unmapped) features, for the silent-channel check on the real
            electrodes; without it the check reads ``z``.

        Returns
        -------
        speed : float
            In [0, 1]; 0 for rest and for bad input.
        bad : str or None
            :data:`BAD_NONFINITE`, :data:`BAD_SILENT` or ``None``.
        """
        z = np.asarray(z, dtype=np.float64).reshape(-1)
        index = int(index)
        if index < 0 or not np.isfinite(z).all():
            return 0.0, BAD_NONFINITE
        if index >= self.n_classes:
            raise ValueError(f"class index {index} is out of range 0..{self.n_classes - 1}.")
        cols = np.asarray(self.columns)
        probe = z if x is None else np.asarray(x, dtype=np.float64).reshape(-1)
        if x is not None and not np.isfinite(probe).all():
            return 0.0, BAD_NONFINITE
        if (probe[cols] <= np.asarray(self.channel_floor)).any():
            return 0.0, BAD_SILENT
        if self.rest[index]:
            return 0.0, None
        a = float(_amplitude(z[None, :], cols, self.measure)[0])
        s = (a - self.low[index]) / (self.high[index] - self.low[index])
        if not math.isfinite(s):  # pragma: no cover - guarded by the checks above
            return 0.0, BAD_NONFINITE
        return float(min(max(s, 0.0), 1.0)), None

    def speed(self, z, index: int) -> float:
        """Speed in [0, 1] of one mapped window (0 for rest and for bad input).

        Parameters
        ----------
        z : array-like of shape (n_features,)
        index : int
            Predicted class index.
        """
        return self.compute(z, index)[0]

    def speed_batch(self, Z, index) -> np.ndarray:
        """Speeds of many windows, shape (n,); bad rows give 0 (as :meth:`speed`).

        Parameters
        ----------
        Z : array-like of shape (n, n_features)
        index : array-like of shape (n,) int
        """
        Z = np.asarray(Z, dtype=np.float64)
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        out = np.zeros(Z.shape[0])
        cols = np.asarray(self.columns)
        ok = (idx >= 0) & np.isfinite(Z).all(axis=1)
        ok &= ~(Z[:, cols] <= np.asarray(self.channel_floor)[None, :]).any(axis=1)
        if not ok.any():
            return out
        k = idx[ok]
        if k.max() >= self.n_classes:
            raise ValueError(f"class index {int(k.max())} is out of range "
                             f"0..{self.n_classes - 1}.")
        a = _amplitude(Z[ok], cols, self.measure)
        lo, hi = np.asarray(self.low)[k], np.asarray(self.high)[k]
        s = np.clip((a - lo) / (hi - lo), 0.0, 1.0)
        s[np.asarray(self.rest)[k]] = 0.0
        out[ok] = s
        return out

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        """Plain JSON-able dict (lists, floats, str); :meth:`from_dict` inverts it."""
        return {"format": SPEED_FORMAT, "classes": list(self.classes), "measure": self.measure,
                "columns": list(self.columns), "low": list(self.low), "high": list(self.high),
                "rest": list(self.rest), "channel_floor": list(self.channel_floor),
                "low_percentile": self.low_percentile, "high_percentile": self.high_percentile}

    @classmethod
    def from_dict(cls, d) -> "SpeedCalibration":
        """Rebuild from :meth:`to_dict` output (e.g. a bundle's ``meta["speed"]``).

        Parameters
        ----------
        d : dict
            The output of :meth:`to_dict`.

        Raises
        ------
        ValueError
            Wrong format tag, missing or unknown keys, inconsistent lengths,
            non-finite numbers or ``low >= high`` for a class.
        """
        check_type(d, dict, "speed calibration")
        if d.get("format") != SPEED_FORMAT:
            raise ValueError(f"speed calibration has format {d.get('format')!r}, expected "
                             f"{SPEED_FORMAT!r}.")
        keys = {"format", "classes", "measure", "columns", "low", "high", "rest",
                "channel_floor", "low_percentile", "high_percentile"}
        if set(d) != keys:
            raise ValueError(f"speed calibration keys differ: missing {sorted(keys - set(d))}, "
                             f"unknown {sorted(set(d) - keys)}.")
        if d["measure"] not in MEASURES:
            raise ValueError(f"speed measure must be one of {sorted(MEASURES)}, "
                             f"got {d['measure']!r}.")
        k = len(d["classes"])
        for name in ("low", "high", "rest"):
            if len(d[name]) != k:
                raise ValueError(f"speed calibration {name!r} has {len(d[name])} entries for "
                                 f"{k} classes.")
        if len(d["channel_floor"]) != len(d["columns"]):
            raise ValueError("speed calibration channel_floor and columns differ in length.")
        low = tuple(float(v) for v in d["low"])
        high = tuple(float(v) for v in d["high"])
        floor = tuple(float(v) for v in d["channel_floor"])
        if not all(math.isfinite(v) for v in low + high + floor):
            raise ValueError("speed calibration holds a non-finite number.")
        if any(h <= lo for lo, h in zip(low, high)):
            raise ValueError("speed calibration needs low < high for every class.")
        return cls(classes=tuple(str(c) for c in d["classes"]), measure=str(d["measure"]),
                   columns=tuple(int(c) for c in d["columns"]), low=low, high=high,
                   rest=tuple(bool(r) for r in d["rest"]), channel_floor=floor,
                   low_percentile=float(d["low_percentile"]),
                   high_percentile=float(d["high_percentile"]))


SMOOTHING = ("mean2", "none")


class SpeedSmoother:
    """Streaming smoothing and deadband of the speed, at most one window of delay.

    ``smoothing="mean2"`` publishes the mean of the current and the previous
    window's speed: a 2-tap moving average, group delay exactly half a step, and a
    step in the input reaches its final value at the next window (one window of
    delay at most). ``"none"`` passes the speed through. The average restarts when
    the predicted class changes or after a bad window, so speed never leaks from one
    movement into another.

    The deadband then maps ``s < deadband`` to 0 (the device holds still at the
    noise floor of a weak contraction) and rescales the rest linearly,
    ``(s - deadband) / (1 - deadband)``, so the output is continuous and still
    reaches 1.

    Parameters
    ----------
    deadband : float
        In [0, 1).
    smoothing : {"mean2", "none"}
    """

    def __init__(self, deadband: float = 0.05, smoothing: str = "mean2"):
        self.deadband = ensure_float(deadband, "deadband", minimum=0.0, maximum=1.0)
        if not self.deadband < 1.0:
            raise ValueError(f"deadband must be below 1, got {self.deadband}.")
        if smoothing not in SMOOTHING:
            raise ValueError(f"smoothing must be one of {list(SMOOTHING)}, got {smoothing!r}.")
        self.smoothing = smoothing
        self.reset()

    def reset(self) -> None:
        """Forget the previous window (after a gap or a model swap)."""
        self._prev: float | None = None
        self._prev_index = -1

    def update(self, speed: float, index: int, bad: bool = False) -> float:
        """Smoothed, deadbanded speed of the next window.

        Parameters
        ----------
        speed : float
            Raw speed in [0, 1] from :meth:`SpeedCalibration.compute`.
        index : int
            Predicted class index of this window.
        bad : bool
            The window's input was bad: output 0 and restart the average.

        Returns
        -------
        float in [0, 1]
        """
        s = float(speed)
        if bad or not math.isfinite(s):
            self.reset()
            return 0.0
        s = min(max(s, 0.0), 1.0)
        index = int(index)
        if self.smoothing == "mean2" and self._prev is not None and index == self._prev_index:
            out = 0.5 * (s + self._prev)
        else:
            out = s
        self._prev, self._prev_index = s, index
        if out < self.deadband:
            return 0.0
        return (out - self.deadband) / (1.0 - self.deadband)


def speed_kwargs(config) -> dict:
    """:meth:`SpeedCalibration.fit` keyword arguments from a config's ``[speed]`` section.

    Parameters
    ----------
    config : Config
        The daemon configuration.

    Returns
    -------
    dict
    """
    s = config.speed
    return dict(measure=s.measure, low_percentile=float(s.low_percentile),
                high_percentile=float(s.high_percentile))


def calibrate_bundle_speed(bundle, X, y, **kwargs) -> dict:
    """Speed calibration of an existing source bundle from its training recording.

    Parameters
    ----------
    bundle : SourceBundle
        Gives the feature layout (``features``, ``n_channels``) and the classes.
    X : array-like of shape (n_windows, n_features)
        Training windows featurised with the bundle's extractor (source space).
    y : array-like of shape (n_windows,)
        Class of each window, values of ``bundle.classes`` (names).
    **kwargs
        Passed to :meth:`SpeedCalibration.fit` (``measure``, percentiles,
        ``rest_class``; see :func:`speed_kwargs`).

    Returns
    -------
    dict
        :meth:`SpeedCalibration.to_dict`, to store in ``bundle.meta["speed"]``.
    """
    extractor = bundle.make_extractor()
    y = np.asarray([str(v) for v in np.asarray(y).reshape(-1)])
    X = np.asarray(X, dtype=np.float64)
    finite = np.isfinite(X).all(axis=1) if X.ndim == 2 else None
    if finite is not None and not finite.all():
        X, y = X[finite], y[finite]
    cal = SpeedCalibration.fit(X, y, bundle.classes, feature_names=extractor.feature_names,
                               n_channels=extractor.n_channels, **kwargs)
    return cal.to_dict()


class LiveSpeed:
    """Calibration + smoother for the live loop: one call per classified window.

    Parameters
    ----------
    calibration : SpeedCalibration or dict
        A calibration or its :meth:`SpeedCalibration.to_dict` (``bundle.meta["speed"]``).
    config : SpeedConfig, optional
        ``[speed]`` settings: ``deadband``, ``smoothing`` and ``amplitude``
        (``"mapped"``: amplitude from ``z``; ``"raw"``: from ``x``). Default: the
        ``[speed]`` defaults.
    """

    def __init__(self, calibration, config=None):
        from ..config import SpeedConfig

        if isinstance(calibration, dict):
            calibration = SpeedCalibration.from_dict(calibration)
        check_type(calibration, SpeedCalibration, "calibration")
        self.calibration = calibration
        self.config = config if config is not None else SpeedConfig()
        self.smoother = SpeedSmoother(self.config.deadband, self.config.smoothing)

    def reset(self) -> None:
        """Forget the smoothing state (after a gap or a swap of the map)."""
        self.smoother.reset()

    def update(self, z, x, index: int, rejected: bool = False) -> tuple[float, str | None]:
        """Return the published speed of one window.

        Parameters
        ----------
        z : array-like of shape (n_features,)
            Mapped features ``H x + b`` the classifier read.
        x : array-like of shape (n_features,)
            Raw features of the window (silent-channel check, ``amplitude="raw"``).
        index : int
            Published class index (after voting).
        rejected : bool
            The prediction was rejected: speed 0 (the device holds still).

        Returns
        -------
        speed : float
            In [0, 1], never NaN.
        bad : str or None
            Why the input was bad (:data:`BAD_NONFINITE`, :data:`BAD_SILENT`), for a
            ``bad_input`` event; ``None`` otherwise.
        """
        amp = z if self.config.amplitude == "mapped" else x
        s, bad = self.calibration.compute(amp, index, x=x)
        if bad is not None:
            return self.smoother.update(0.0, index, bad=True), bad
        if rejected:
            self.smoother.reset()
            return 0.0, None
        return self.smoother.update(s, index), None
