"""Per-window EMG features and the streaming feature pipeline.

:class:`FeatureExtractor` validates and wraps the numba kernels of
:mod:`emtl_stream.kernels.features` (definitions of every feature are in that
module's docstring). :class:`FeaturePipeline` chains filter -> ring buffer ->
windower -> extractor and is driven by explicit :meth:`FeaturePipeline.push` calls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .._checks import check_type, ensure_float, ensure_int
from ..errors import ChannelMismatch
from ..kernels.feature_codes import FEATURE_CODES
from ..logs import logger
from .ringbuffer import RingBuffer
from .windowing import Windower, ms_to_samples

#: Supported feature names; ``ar`` contributes ``ar_order`` values per channel. The same
#: tuple as :data:`emtl_stream.kernels.feature_codes.FEATURE_CODES` (kept under this name
#: for callers of the pipeline), so a name's position is its kernel code.
FEATURE_NAMES = FEATURE_CODES

#: eps of ``log_mav``, ``log_wl`` and ``logvar`` (log(v + eps)), in the raw units of
#: the signal (squared units for ``logvar``). Small against any real EMG amplitude
#: (a Myo count is 1, a µV-scale signal in volts ~1e-6) but keeps a flat or
#: disconnected channel finite: log(1e-8) = -18.4 instead of -inf.
LOG_EPS = 1e-8

#: Default Willison-amplitude threshold, in raw units: 10 Myo counts (the Myo's
#: 8-bit range is -128..127; rest noise is a few counts).
WAMP_THRESHOLD = 10.0


class BadWindow(ValueError):
    """A window holds NaN or inf samples; its features are not computed."""


class FeatureExtractor:
    """Channel-major EMG feature vectors from windows of samples.

    Parameters
    ----------
    names : sequence of str
        Features per channel, in output order; each one of :data:`FEATURE_NAMES`.
    n_channels : int
    fs : float
        Sampling rate (Hz), used by ``mnf``/``mdf``.
    zc_threshold, ssc_threshold, wamp_threshold : float
        Amplitude thresholds in raw signal units (see :mod:`emtl_stream.kernels.features`).
    ar_order : int
        Order of the ``ar`` feature (Yule-Walker).
    log_eps : float
        eps of the log features (:data:`LOG_EPS`).

    Attributes
    ----------
    features_per_channel : int
    n_features : int
        ``n_channels * features_per_channel``.
    feature_names : list of str
        ``"ch0_mav"``, ``"ch0_wl"``, ..., ``"ch0_ar1"``..``"ch0_ar4"``, then channel 1.
    """

    def __init__(self, names=("mav", "wl", "zc", "ssc"), n_channels: int = 8, fs: float = 200.0,
                 *, zc_threshold: float = 0.0, ssc_threshold: float = 0.0,
                 wamp_threshold: float = WAMP_THRESHOLD, ar_order: int = 4,
                 log_eps: float = LOG_EPS):
        if isinstance(names, str):
            names = (names,)
        names = tuple(names)
        if not names:
            raise ValueError("names must list at least one feature, got an empty sequence.")
        for name in names:
            check_type(name, str, "feature name")
            if name not in FEATURE_NAMES:
                raise ValueError(f"unknown feature {name!r}; choose from {list(FEATURE_NAMES)}.")
        if len(set(names)) != len(names):
            raise ValueError(f"names lists a feature twice: {list(names)}.")
        self.names = names
        self.n_channels = ensure_int(n_channels, "n_channels", minimum=1)
        self.fs = ensure_float(fs, "fs", minimum=0.0, strict_min=True)
        self.zc_threshold = ensure_float(zc_threshold, "zc_threshold", minimum=0.0)
        self.ssc_threshold = ensure_float(ssc_threshold, "ssc_threshold", minimum=0.0)
        self.wamp_threshold = ensure_float(wamp_threshold, "wamp_threshold", minimum=0.0)
        self.ar_order = ensure_int(ar_order, "ar_order", minimum=1, maximum=64)
        self.log_eps = ensure_float(log_eps, "log_eps", minimum=0.0, strict_min=True)
        self._codes = np.array([FEATURE_CODES.index(n) for n in names], dtype=np.int64)
        self._params = np.array([self.zc_threshold, self.ssc_threshold, self.wamp_threshold,
                                 self.fs, self.log_eps, float(self.ar_order)], dtype=np.float64)
        self.features_per_channel = sum(self.ar_order if n == "ar" else 1 for n in names)
        self.n_features = self.n_channels * self.features_per_channel
        per_channel = []
        for n in names:
            per_channel += ([f"ar{k + 1}" for k in range(self.ar_order)] if n == "ar" else [n])
        self.feature_names = [f"ch{c}_{f}" for c in range(self.n_channels) for f in per_channel]
        # The kernels need a couple of samples beyond the AR order (2nd differences).
        self.min_samples = max(3, self.ar_order + 1) if "ar" in names else 3

    def __repr__(self) -> str:
        """Show the feature names, channel count and rate."""
        return (f"FeatureExtractor(names={self.names}, n_channels={self.n_channels}, "
                f"fs={self.fs})")

    def check_samples(self, n: int) -> None:
        """Raise if windows of ``n`` samples are too short for the configured features.

        Parameters
        ----------
        n : int
            Samples per window.

        Raises
        ------
        ValueError
            If ``n < min_samples``.
        """
        if n < self.min_samples:
            raise ValueError(f"windows need at least {self.min_samples} samples for features "
                             f"{list(self.names)}, got {n}; use a longer window.")

    def transform(self, window) -> np.ndarray:
        """Feature vector of one window.

        Parameters
        ----------
        window : array-like of shape (n_samples, n_channels)

        Returns
        -------
        x : ndarray of shape (n_features,) float64

        Raises
        ------
        BadWindow
            If the window holds NaN or inf (a ``ValueError``).
        ChannelMismatch
            If the window's channel count differs from ``n_channels``.
        """
        w = np.ascontiguousarray(window, dtype=np.float64)
        if w.ndim != 2:
            raise ValueError(f"window must be 2-D (n_samples, n_channels), got shape {w.shape}.")
        if w.shape[1] != self.n_channels:
            raise ChannelMismatch(f"window has {w.shape[1]} channels, the extractor expects "
                                  f"{self.n_channels}.")
        self.check_samples(w.shape[0])
        out = np.empty(self.n_features, dtype=np.float64)
        if not self.transform_into(w, out):
            raise BadWindow(f"window of {w.shape[0]} samples holds NaN or inf in "
                            f"{int((~np.isfinite(w).all(axis=1)).sum())} sample(s); skip it.")
        return out

    def transform_into(self, window: np.ndarray, out: np.ndarray) -> bool:
        """Features of one trusted window written into ``out``; the allocation-free hot path.

        Unlike :meth:`transform` nothing is checked or copied: the caller guarantees
        the layout (the streaming pipeline reads windows of a length it checked once
        with :meth:`check_samples` out of its own float64 ring buffer).

        Parameters
        ----------
        window : ndarray of shape (n_samples, n_channels), C-contiguous float64
            ``n_samples >= min_samples``, ``n_channels == self.n_channels``.
        out : ndarray of shape (n_features,), C-contiguous float64
            Written in place (all NaN for a non-finite window).

        Returns
        -------
        finite : bool
            False when the window holds NaN or inf (its features are not computed).
        """
        from ..kernels.features import window_features

        return window_features(window, self._codes, self._params, out)

    def transform_batch(self, windows):
        """Feature vectors of a stack of windows.

        Parameters
        ----------
        windows : array-like of shape (n_windows, n_samples, n_channels)

        Returns
        -------
        X : ndarray of shape (n_windows, n_features) float64
            Rows of non-finite windows are NaN.
        finite_mask : ndarray of shape (n_windows,) bool
            False for windows holding NaN or inf.
        """
        from ..kernels.features import batch_features

        W = np.ascontiguousarray(windows, dtype=np.float64)
        if W.ndim != 3:
            raise ValueError(f"windows must be 3-D (n_windows, n_samples, n_channels), "
                             f"got shape {W.shape}.")
        if W.shape[2] != self.n_channels:
            raise ChannelMismatch(f"windows have {W.shape[2]} channels, the extractor expects "
                                  f"{self.n_channels}.")
        X = np.empty((W.shape[0], self.n_features), dtype=np.float64)
        mask = np.ones(W.shape[0], dtype=bool)
        if W.shape[0]:
            self.check_samples(W.shape[1])
            batch_features(W, self._codes, self._params, X, mask)
        return X, mask

    def to_dict(self) -> dict:
        """Plain JSON-able configuration; :meth:`from_dict` rebuilds an equal extractor."""
        return {"names": list(self.names), "n_channels": self.n_channels, "fs": self.fs,
                "zc_threshold": self.zc_threshold, "ssc_threshold": self.ssc_threshold,
                "wamp_threshold": self.wamp_threshold, "ar_order": self.ar_order,
                "log_eps": self.log_eps}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureExtractor":
        """Inverse of :meth:`to_dict`.

        Parameters
        ----------
        d : dict
            Keys as written by :meth:`to_dict`; missing ones take the defaults,
            unknown ones are a ``ValueError`` naming them.

        Returns
        -------
        FeatureExtractor
        """
        d = dict(d)
        allowed = {"names", "n_channels", "fs", "zc_threshold", "ssc_threshold",
                   "wamp_threshold", "ar_order", "log_eps"}
        extra = set(d) - allowed
        if extra:
            raise ValueError(f"unknown feature-extractor keys {sorted(extra)}; "
                             f"allowed: {sorted(allowed)}.")
        names = d.pop("names", ("mav", "wl", "zc", "ssc"))
        n_channels = d.pop("n_channels", 8)
        fs = d.pop("fs", 200.0)
        return cls(tuple(names), n_channels, fs, **d)

    def __eq__(self, other) -> bool:
        """Equal when :meth:`to_dict` is (same features, thresholds and rate)."""
        return isinstance(other, FeatureExtractor) and self.to_dict() == other.to_dict()

    __hash__ = None


@dataclass(frozen=True)
class Window:
    """One featurised window of the live stream.

    Attributes
    ----------
    x : ndarray of shape (n_features,)
    t_last : float
        Timestamp (LSL clock) of the window's last sample.
    start, stop : int
        Absolute sample counters ``[start, stop)`` of the window.
    """

    x: np.ndarray
    t_last: float
    start: int
    stop: int


class FeaturePipeline:
    """Filter -> ring buffer -> windows -> features, driven by :meth:`push` (no threads).

    Parameters
    ----------
    extractor : FeatureExtractor
        Gives the channel count and sampling rate.
    window_ms, step_ms : float
        Window length and hop; converted with
        :func:`~emtl_stream.pipeline.windowing.ms_to_samples` (same as offline).
    filter : StreamingFilter, optional
        Applied to each pushed chunk before buffering; reset at :meth:`mark_gap`.
    capacity_s : float
        Ring-buffer length in seconds (at least two windows are always kept).
    max_abs_sample : float
        Physical bound of a sample (stream units): a sample beyond ``±max_abs_sample``
        is not EMG but a broken amplifier or driver, and is treated like NaN (its
        windows are skipped and counted). 0 turns the check off.

    Attributes
    ----------
    window, step : int
        Samples per window and per hop.
    n_samples : int
        Samples pushed so far.
    n_windows : int
        Windows emitted so far (finite ones).
    n_skipped_nonfinite : int
        Windows dropped because they held NaN/inf samples or samples beyond
        ``max_abs_sample``.
    n_out_of_range : int
        Samples beyond ``max_abs_sample`` seen so far.
    n_gaps : int
        Calls to :meth:`mark_gap`.
    """

    #: Minimum seconds between two "skipped non-finite window" warnings.
    WARN_INTERVAL_S = 5.0

    def __init__(self, extractor: FeatureExtractor, window_ms: float = 200.0,
                 step_ms: float = 50.0, *, filter=None, capacity_s: float = 10.0,
                 max_abs_sample: float = 0.0):
        check_type(extractor, FeatureExtractor, "extractor")
        self.extractor = extractor
        self.fs = extractor.fs
        self.n_channels = extractor.n_channels
        self.window_ms = ensure_float(window_ms, "window_ms", minimum=0.0, strict_min=True)
        self.step_ms = ensure_float(step_ms, "step_ms", minimum=0.0, strict_min=True)
        self.window = ms_to_samples(self.window_ms, self.fs, "window_ms")
        self.step = ms_to_samples(self.step_ms, self.fs, "step_ms")
        extractor.check_samples(self.window)
        if filter is not None:
            if filter.n_channels != self.n_channels or filter.fs != self.fs:
                raise ValueError(f"filter is for {filter.n_channels} channels at {filter.fs} Hz, "
                                 f"the extractor for {self.n_channels} at {self.fs} Hz.")
        self.filter = filter
        capacity_s = ensure_float(capacity_s, "capacity_s", minimum=0.0, strict_min=True)
        capacity = max(int(round(capacity_s * self.fs)), 2 * (self.window + self.step))
        self.ring = RingBuffer(capacity, self.n_channels)
        self.windower = Windower(self.window, self.step)
        # A push is written in pieces no longer than this, so no window is ever
        # overwritten before it is featurised, whatever the chunk size.
        self._max_piece = capacity - self.window
        self.n_samples = 0
        self.n_windows = 0
        self.n_skipped_nonfinite = 0
        self.max_abs_sample = ensure_float(max_abs_sample, "max_abs_sample", minimum=0.0)
        self.n_out_of_range = 0
        self.n_gaps = 0
        self._last_warn = -np.inf
        self._unwarned = 0

    @property
    def window_s(self) -> float:
        """Window length in seconds (``window / fs``)."""
        return self.window / self.fs

    def push(self, samples, timestamps) -> list[Window]:
        """Add a chunk of samples; return the windows it completes.

        Parameters
        ----------
        samples : array-like of shape (n, n_channels)
        timestamps : array-like of shape (n,)
            LSL timestamps of the samples.

        Returns
        -------
        list of Window
            In stream order. Windows holding NaN/inf are skipped and counted in
            ``n_skipped_nonfinite`` (WARNING, at most every ``WARN_INTERVAL_S``).

        Raises
        ------
        ChannelMismatch
            If ``samples`` has the wrong number of channels.
        """
        x = np.asarray(samples)
        if x.ndim != 2:
            raise ValueError(f"samples must be 2-D (n, n_channels), got shape {x.shape}.")
        if x.shape[1] != self.n_channels:
            raise ChannelMismatch(f"chunk has {x.shape[1]} channels, the feature pipeline "
                                  f"expects {self.n_channels}; check the stream or the model.")
        ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
        if ts.shape[0] != x.shape[0]:
            raise ValueError(f"timestamps has {ts.shape[0]} entries for {x.shape[0]} samples.")
        if x.shape[0] == 0:
            return []
        if self.max_abs_sample > 0:
            absurd = np.abs(x) > self.max_abs_sample  # NaN compares False: stays NaN
            if absurd.any():  # beyond the physical bound: bad input, exactly like NaN
                x = np.array(x, dtype=np.float64)
                x[absurd] = np.nan
                self.n_out_of_range += int(absurd.sum())
        x = self.filter.process(x) if self.filter is not None else x
        out = []
        ext = self.extractor
        skipped = 0
        for a in range(0, x.shape[0], self._max_piece):
            b = min(a + self._max_piece, x.shape[0])
            self.ring.write(x[a:b], ts[a:b])
            for start, stop in self.windower.ready(self.ring.n_written):
                data, stamps = self.ring.read(start, stop)
                feat = np.empty(ext.n_features, dtype=np.float64)
                if ext.transform_into(data, feat):
                    out.append(Window(feat, float(stamps[-1]), start, stop))
                else:
                    skipped += 1
        self.n_samples += x.shape[0]
        self.n_windows += len(out)
        if skipped:
            self._warn_skipped(skipped)
        return out

    def _warn_skipped(self, n: int) -> None:
        self.n_skipped_nonfinite += n
        self._unwarned += n
        now = time.monotonic()
        if now - self._last_warn >= self.WARN_INTERVAL_S:
            logger.warning("skipped %d window(s) with NaN/inf or out-of-range samples (%d in "
                           "total so far)",
                           self._unwarned, self.n_skipped_nonfinite)
            self._last_warn = now
            self._unwarned = 0

    def mark_gap(self) -> None:
        """Declare a discontinuity: the next window starts at the next pushed sample.

        Also resets the filter state, which described the signal before the gap.
        """
        self.windower.restart(self.ring.n_written)
        if self.filter is not None:
            self.filter.reset()
        self.n_gaps += 1
