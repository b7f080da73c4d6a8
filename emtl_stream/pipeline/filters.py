"""Streaming IIR band-pass and notch filters whose state is carried across chunks.

Filtering a stream chunk by chunk with :class:`StreamingFilter` gives the same
numbers as ``scipy.signal.sosfilt(sos, whole_signal, axis=0)`` (zero initial state).
"""

from __future__ import annotations

import numpy as np
from scipy import signal

from .._checks import ensure_float, ensure_int
from ..logs import logger

#: Upper band edge is clipped to this fraction of Nyquist (a Butterworth edge at
#: Nyquist itself is undefined; 0.9 keeps the transition band inside the spectrum).
MAX_EDGE_OF_NYQUIST = 0.9

#: Quality factor of the notch (-3 dB width = notch / Q, about 1.7 Hz at 50 Hz).
NOTCH_Q = 30.0


class StreamingFilter:
    """Butterworth band-pass and/or IIR notch applied chunk by chunk to every channel.

    Parameters
    ----------
    fs : float
        Sampling rate (Hz).
    n_channels : int
    bandpass : (float, float) or None
        Pass band (Hz). An upper edge at or above ``0.9 * fs / 2`` is clipped to
        ``0.9 * fs / 2`` (logged at INFO); if the band is then empty (the lower edge is
        not below the clipped upper edge) the band-pass is skipped (logged at WARNING).
        At the Myo's 200 Hz the default (20, 450) becomes (20, 90).
    notch : float or None
        Centre of a notch (Hz, e.g. 50 or 60), quality factor :data:`NOTCH_Q`;
        skipped with a WARNING when at or above Nyquist.
    order : int
        Butterworth order of the band-pass (the band-pass has ``order`` sections).

    Attributes
    ----------
    sos : ndarray of shape (n_sections, 6) or None
        The cascade actually applied (None when nothing is left to do).
    band : (float, float) or None
        The band actually used after clipping.
    notch : float or None
        The notch actually used.
    """

    def __init__(self, fs: float, n_channels: int, bandpass=(20.0, 450.0), notch=50.0,
                 order: int = 4):
        self.fs = ensure_float(fs, "fs", minimum=0.0, strict_min=True)
        self.n_channels = ensure_int(n_channels, "n_channels", minimum=1)
        self.order = ensure_int(order, "order", minimum=1, maximum=16)
        nyq = self.fs / 2.0
        sections = []
        self.band = None
        if bandpass is not None:
            if len(bandpass) != 2:
                raise ValueError(f"bandpass must be (low_hz, high_hz) or None, got {bandpass!r}.")
            lo = ensure_float(bandpass[0], "bandpass[0]", minimum=0.0, strict_min=True)
            hi = ensure_float(bandpass[1], "bandpass[1]", minimum=0.0, strict_min=True)
            if lo >= hi:
                raise ValueError(f"bandpass low edge {lo} Hz must be below the high edge {hi} Hz.")
            top = MAX_EDGE_OF_NYQUIST * nyq
            if hi > top:
                logger.info("band-pass upper edge %s Hz clipped to %s Hz (0.9 x Nyquist at "
                            "fs=%s Hz)", hi, top, self.fs)
                hi = top
            if lo >= hi:
                logger.warning("band-pass (%s, %s) Hz skipped: at fs=%s Hz the upper edge is "
                               "clipped to %s Hz, below the lower edge", bandpass[0],
                               bandpass[1], self.fs, top)
            else:
                self.band = (lo, hi)
                sections.append(signal.butter(self.order, [lo, hi], btype="bandpass",
                                              fs=self.fs, output="sos"))
        self.notch = None
        if notch is not None:
            f0 = ensure_float(notch, "notch", minimum=0.0, strict_min=True)
            if f0 >= nyq:
                logger.warning("notch at %s Hz skipped: not below Nyquist (%s Hz)", f0, nyq)
            else:
                self.notch = f0
                b, a = signal.iirnotch(f0, NOTCH_Q, fs=self.fs)
                sections.append(signal.tf2sos(b, a))
        self.sos = np.ascontiguousarray(np.vstack(sections)) if sections else None
        self._zi = None
        self.reset()

    @property
    def active(self) -> bool:
        """True when at least one filter stage is applied."""
        return self.sos is not None

    def reset(self) -> None:
        """Forget the filter state (zero initial conditions), e.g. after a gap."""
        if self.sos is not None:
            self._zi = np.zeros((self.sos.shape[0], 2, self.n_channels))

    def process(self, chunk) -> np.ndarray:
        """Filter the next ``chunk`` of the stream.

        Parameters
        ----------
        chunk : array-like of shape (n_samples, n_channels)

        Returns
        -------
        ndarray of shape (n_samples, n_channels) float64
            Filtered samples. Rows holding NaN/inf come out all NaN; the filter sees
            zeros in their place so its state stays finite and later samples recover.
        """
        x = np.asarray(chunk, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_channels:
            raise ValueError(f"chunk must have shape (n, {self.n_channels}), got {x.shape}.")
        if self.sos is None or x.shape[0] == 0:
            return x.copy()
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            x = x.copy()
            x[bad] = 0.0
        y, self._zi = signal.sosfilt(self.sos, x, axis=0, zi=self._zi)
        if bad.any():
            y[bad] = np.nan
        return y
